"""The JetStream objects the consumer works with, created when missing and left alone when present.

* the readings stream (``STREAM_READINGS``, subjects ``grid.readings.>``: what feeders publish, over MQTT or NATS);
* the results stream (``STREAM_RESULTS``, subjects ``grid.scored.>`` and ``grid.anomalies.>``), whose duplicate
  window (``STREAM_DUPLICATE_WINDOW``) drops a second result for the same reading;
* the dead-letter stream (``STREAM_DEADLETTERS``, ``grid.deadletter.>``);
* the durable pull consumer (``STREAM_CONSUMER``) every replica binds to, with explicit acknowledgements, an ack
  wait (``STREAM_ACK_WAIT``) and a delivery limit (``STREAM_MAX_DELIVER``).

All three streams keep messages on file for ``STREAM_MAX_AGE``, limits-based retention. An operator who created
them beforehand (other limits, replicas in a cluster) keeps them: only what is missing is created.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from app.stream.settings import StreamSettings

READINGS_SUBJECTS = ("grid.readings.>",)
RESULTS_SUBJECTS = ("grid.scored.>", "grid.anomalies.>")
DEADLETTER_SUBJECTS = ("grid.deadletter.>",)
READINGS_PREFIX = "grid.readings."


async def ensure_topology(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the three streams and the durable consumer where they do not exist yet."""
    streams = (
        (settings.stream_readings, READINGS_SUBJECTS, None),
        (settings.stream_results, RESULTS_SUBJECTS, settings.stream_duplicate_window),
        (settings.stream_deadletters, DEADLETTER_SUBJECTS, None),
    )
    for name, subjects, duplicate_window in streams:
        try:
            await js.stream_info(name)
        except NotFoundError:
            config = StreamConfig(
                name=name,
                subjects=list(subjects),
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=settings.stream_max_age,
                duplicate_window=duplicate_window or 120.0,
            )
            await js.add_stream(config)
    try:
        await js.consumer_info(settings.stream_readings, settings.stream_consumer)
    except NotFoundError:
        await js.add_consumer(
            settings.stream_readings,
            ConsumerConfig(
                durable_name=settings.stream_consumer,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=settings.stream_ack_wait,
                max_deliver=settings.stream_max_deliver,
                max_ack_pending=max(20_000, settings.stream_batch * 4),
            ),
        )
