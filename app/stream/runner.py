"""``gridwatch stream``: the consumer process, put together from the scoring core, the broker and the probes.

Start-up mirrors ``gridwatch serve``: the probes answer at once (``/livez`` 200, ``/health`` 503 with the reason),
the model is loaded on a thread of its own (``ModelHolder`` with the same loader and retries), the hot-swap watcher
and the shadow run as in a server. The NATS client reconnects by itself, forever, with a growing wait; while it is
away ``/health`` says so and fetching waits. SIGTERM (or Ctrl-C) stops fetching, lets the batch in hand be scored,
published and acknowledged within ``GRACEFUL_TIMEOUT``, flushes the acknowledgements and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import nats
from nats.aio.client import Client
from opentelemetry import trace

from app.scoring.batch import BatchScorer
from app.scoring.holder import ModelHolder, ModelState
from app.scoring.served import ServedModel
from app.scoring.shadow import ShadowScorer
from app.stream import metrics
from app.stream.consumer import StreamConsumer
from app.stream.probes import Health, ProbeServer
from app.stream.publisher import AckedPublisher
from app.stream.settings import StreamSettings
from app.stream.topology import ensure_topology

logger = logging.getLogger(__name__)

RECONNECT_WAIT_S = 1.0


class Connection:
    """Whether the consumer is connected and bound, for ``/health`` and the ``stream_connected`` gauge."""

    def __init__(self) -> None:
        self.bound = False
        self.reason = "connecting to NATS"

    def up(self) -> None:
        self.bound, self.reason = True, "ready"
        metrics.CONNECTED.set(1)

    def down(self, reason: str) -> None:
        self.bound, self.reason = False, reason
        metrics.CONNECTED.set(0)


def run_stream(settings: StreamSettings) -> None:
    """Run the consumer until SIGTERM or SIGINT."""
    asyncio.run(_run(settings))


async def _run(settings: StreamSettings) -> None:
    served = ServedModel.of(settings)
    connection = Connection()
    probes = ProbeServer(settings.host, settings.port, _health(served.holder, connection, settings))
    probes.start()
    served.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("stream consumer probes on %s:%d, consuming from %s", settings.host, probes.port, settings.nats_url)
    try:
        client = await _connect(settings, connection, stop)
        if client is not None:
            await _consume(client, settings, connection, stop, holder=served.holder, shadow=served.shadow)
    finally:
        served.close()
        probes.close()


async def _connect(settings: StreamSettings, connection: Connection, stop: asyncio.Event) -> Client | None:
    """Connect (retrying until ``stop``) with callbacks that keep ``connection`` and the metrics true."""

    async def disconnected() -> None:
        connection.down("disconnected from NATS, reconnecting")

    async def reconnected() -> None:
        metrics.RECONNECTS.inc()
        connection.up()
        logger.info("reconnected to NATS")

    async def error(problem: Exception) -> None:
        logger.warning("NATS: %s", problem)

    while not stop.is_set():
        try:
            return await nats.connect(
                settings.nats_url.split(","),
                name="gridwatch-stream",
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                connect_timeout=2,
            )
        except Exception as problem:
            connection.down(f"cannot reach NATS at {settings.nats_url}: {problem}")
            logger.warning("%s; retrying", connection.reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_WAIT_S)
    return None


async def _consume(
    client: Client,
    settings: StreamSettings,
    connection: Connection,
    stop: asyncio.Event,
    *,
    holder: ModelHolder,
    shadow: ShadowScorer,
) -> None:
    js = client.jetstream()
    try:
        await ensure_topology(js, settings)
        subscription = await js.pull_subscribe_bind(settings.stream_consumer, settings.stream_readings)
        publisher = AckedPublisher(client)
        await publisher.start()
        connection.up()
        consumer = StreamConsumer(
            subscription,
            settings,
            holder=holder,
            scorer=BatchScorer(trace.NoOpTracer(), exemplars=False),
            shadow=shadow,
            publisher=publisher,
        )
        work = asyncio.create_task(consumer.run(stop))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():  # it ended by itself: only an error ends it before ``stop``
            stopping.cancel()
            work.result()
            return
        logger.info("stopping: finishing the batch in hand (at most %.0fs)", settings.graceful_timeout)
        try:
            await asyncio.wait_for(work, settings.graceful_timeout)
        except TimeoutError:
            logger.warning("the batch in hand was not done within GRACEFUL_TIMEOUT; its messages are delivered again")
    finally:
        connection.down("stopping")
        with contextlib.suppress(Exception):
            await client.flush(timeout=2)
        await client.close()


def _health(holder: ModelHolder, connection: Connection, settings: StreamSettings) -> Health:
    def health() -> tuple[bool, dict[str, object]]:
        if holder.state is not ModelState.ready:
            return False, {"status": holder.state.value, "reason": holder.reason}
        if not connection.bound:
            return False, {"status": "unbound", "reason": connection.reason}
        return True, {
            "status": "ok",
            "model_version": holder.version(),
            "stream": settings.stream_readings,
            "consumer": settings.stream_consumer,
        }

    return health
