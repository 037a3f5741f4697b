"""The stream consumer's own metrics, beside the scoring core's (``app.scoring.metrics``: readings scored, anomalies,
batch size, inference latency, drift, hot swap, shadow), which a consumer exports too.

Conventions as everywhere: base units, ``_total`` counters, bounded labels (``reason`` is one of
``app.stream.messages.Refusal``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from app.scoring.metrics import LATENCY_BUCKETS
from app.stream.messages import Refusal

END_TO_END_BUCKETS = (*LATENCY_BUCKETS, 30.0, 60.0, 300.0)
"""Up to five minutes: a backlog after an outage drains with latencies far beyond a request's."""

MESSAGES_CONSUMED = Counter("stream_messages_consumed", "Messages fetched from the readings stream (each delivery).")
READINGS_CONSUMED = Counter("stream_readings_consumed", "Valid readings taken from fetched messages.")
REDELIVERIES = Counter(
    "stream_redeliveries", "Messages delivered again: not acknowledged in time, or handed back after a failure."
)
DEAD_LETTERS = Counter(
    "stream_dead_letters",
    "Messages or readings refused and published to grid.deadletter.<tokens>, by reason.",
    ["reason"],
)
for _reason in Refusal:
    DEAD_LETTERS.labels(_reason.value)  # exported at 0 from the start: the first dead letter is an increase
RESULTS_PUBLISHED = Counter(
    "stream_results_published", "Results the results stream accepted (duplicates of a redelivered reading excluded)."
)
RESULTS_DUPLICATE = Counter(
    "stream_results_duplicate",
    "Results the results stream recognised as already stored (a redelivered or re-sent reading): not stored again.",
)
FAILED_BATCHES = Counter(
    "stream_failed_batches", "Batches whose scoring or publishing failed; their messages are delivered again later."
)
END_TO_END = Histogram(
    "stream_end_to_end_latency_seconds",
    "From a reading's timestamp (or its arrival in the stream, without one) to its result's acknowledgement.",
    buckets=END_TO_END_BUCKETS,
)
PENDING = Gauge(
    "stream_consumer_pending",
    "Messages of the readings stream not yet delivered to the durable consumer (num_pending), as last seen.",
)
ACK_PENDING = Gauge(
    "stream_consumer_ack_pending", "Messages delivered but not yet acknowledged (num_ack_pending), as last seen."
)
RECONNECTS = Counter("stream_reconnects", "Reconnections to the NATS server after losing it.")
CONNECTED = Gauge("stream_connected", "1 while the consumer is connected to NATS and bound to its durable consumer.")
