"""Fetch, score, publish, acknowledge: the consumer's loop, and the promise it keeps.

**At least once, made effectively once.** A batch of messages is fetched from the durable pull consumer; its valid
readings are scored in one call of the scoring core (``BatchScorer.score``, as ``/predict`` scores); every result is
published to the results stream with a ``Nats-Msg-Id`` that names the reading, and every refused message or reading
to the dead-letter stream; only when the server has acknowledged all of them (``PubAck``) are the input messages
acknowledged. A consumer that dies anywhere before that leaves its messages unacknowledged: the server delivers
them again after ``STREAM_ACK_WAIT``, they are scored again, and the results stream drops the second result of each
reading inside its duplicate window (``STREAM_DUPLICATE_WINDOW``). Where the promise ends is in docs/streaming.md.

**Two batches at a time.** Waiting for the server's acknowledgements of one batch's results is a round trip in
which the consumer has nothing to compute; the next batch is fetched, scored and published meanwhile
(``BATCHES_IN_FLIGHT``). Each batch still acknowledges its own inputs only after its own results are stored, so the
promise above holds batch by batch; results are published in the order the batches were fetched.

**Failures.** A batch whose scoring or publishing fails (no model yet, the broker gone mid-batch) is handed back
(``nak`` with a back-off of 1, 2, 4... seconds, at most 30) and delivered again; a message that fails on its
``STREAM_MAX_DELIVER``-th delivery is dead-lettered with the reason ``max_deliveries`` instead. Bad input never
waits for that: it is dead-lettered at once (``app.stream.messages``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from app.detector.errors import GridWatchError
from app.detector.model import Detector
from app.scoring.batch import BatchScorer, ScoredBatch
from app.scoring.explaining import BatchExplainer, explanation_dicts
from app.scoring.holder import ModelHolder
from app.scoring.shadow import ShadowScorer
from app.stream import metrics
from app.stream.messages import Reading, Refusal, Rejected, decode
from app.stream.publisher import AckedPublisher, Batch
from app.stream.settings import StreamExplain, StreamSettings
from app.stream.topology import READINGS_PREFIX

logger = logging.getLogger(__name__)

NAK_LONGEST_S = 30.0
PUBLISH_ACK_TIMEOUT_S = 5.0
"""The longest a batch waits for the server to acknowledge its results: a server that died mid-batch never will,
and the batch is then handed back rather than waited for forever."""
BATCHES_IN_FLIGHT = 2
"""Batches published but not yet acknowledged at once: the next one is scored while the server stores the last."""
PENDING_REFRESH_S = 2.0
"""How often the consumer's backlog (num_pending, num_ack_pending) is read for its gauges."""


@dataclass(frozen=True)
class Delivery:
    """One fetched message: where it came from, how often it was delivered, and what it holds."""

    msg: Msg
    tokens: str
    """The subject after ``grid.readings.``: ``<feeder>.<sensor>`` for a device publishing to MQTT topic
    ``grid/readings/<feeder>/<sensor>``."""
    sequence: int
    delivered: int
    arrived: float
    """When the stream stored it, epoch seconds."""
    readings: list[Reading]
    rejected: list[Rejected]

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        meta = msg.metadata
        subject = msg.subject
        tokens = subject[len(READINGS_PREFIX) :] if subject.startswith(READINGS_PREFIX) else subject
        decoded = decode(msg.data)
        arrived = meta.timestamp.timestamp() if meta.timestamp else time.time()
        return cls(msg, tokens, meta.sequence.stream, meta.num_delivered, arrived, decoded.readings, decoded.rejected)

    def result_id(self, reading: Reading) -> str:
        """The reading's identity in the results stream: its sensor and timestamp when it has them (a re-sent
        reading is then recognised too), else its place in the readings stream."""
        if reading.timestamp_text is not None:
            return f"{self.tokens}|{reading.sensor_id or ''}|{reading.timestamp_text}"
        return f"seq|{self.sequence}|{reading.index}"


@dataclass(frozen=True)
class Published:
    """A batch whose results and dead letters are sent and not yet known to be stored."""

    deliveries: list[Delivery]
    batch: Batch
    items: list[tuple[Delivery, Reading]]
    rejected: list[Rejected]

    def record(self) -> None:
        """Count what the server stored: results (duplicates apart), dead letters, end-to-end latencies."""
        metrics.RESULTS_DUPLICATE.inc(self.batch.duplicates)
        metrics.RESULTS_PUBLISHED.inc(self.batch.acknowledged - self.batch.duplicates)
        now = time.time()
        for delivery, reading in self.items:
            started = reading.timestamp if reading.timestamp is not None else delivery.arrived
            metrics.END_TO_END.observe(max(now - started, 0.0))
        for bad in self.rejected:
            metrics.DEAD_LETTERS.labels(bad.reason.value).inc()


class StreamConsumer:
    """Scores what the durable consumer delivers, one batch at a time, until told to stop."""

    def __init__(
        self,
        subscription: JetStreamContext.PullSubscription,
        settings: StreamSettings,
        *,
        holder: ModelHolder,
        scorer: BatchScorer,
        shadow: ShadowScorer,
        publisher: AckedPublisher,
    ) -> None:
        self.publisher = publisher
        self.subscription = subscription
        self.settings = settings
        self.holder = holder
        self.scorer = scorer
        self.shadow = shadow
        self.explainer = BatchExplainer(settings.supply_standard())
        self._pending_read_at = 0.0
        self._pending_task: asyncio.Future[None] | None = None
        self._in_flight: list[asyncio.Task[None]] = []
        """Batches waiting for their acknowledgements, oldest first."""

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle batches until ``stop`` is set; the batches in hand are always finished."""
        try:
            while not stop.is_set():
                try:
                    messages = await self.subscription.fetch(
                        batch=self.settings.stream_batch, timeout=self.settings.stream_max_wait
                    )
                except (NatsTimeoutError, TimeoutError):  # nothing arrived within STREAM_MAX_WAIT
                    messages = []
                except Exception as error:  # the broker is away: the client reconnects, this loop waits for it
                    logger.warning("fetch failed (%s); retrying", error)
                    await asyncio.sleep(0.5)
                    continue
                if messages:
                    await self.handle(messages)
                await self._refresh_pending()
            await self._drain()
        finally:
            await self._settle_all()

    async def _drain(self) -> None:
        """Handle what was delivered but not yet fetched: a fetch that gave up at STREAM_MAX_WAIT may leave its pull
        request alive on the server for as long again, and what it brings waits in the client's queue. Without this,
        a stopping consumer would leave those messages unacknowledged until the server's ack wait ran out."""
        await asyncio.sleep(self.settings.stream_max_wait)  # the longest such a pull request lives
        while self.subscription.pending_msgs > 0:
            try:
                messages = await self.subscription.fetch(
                    batch=self.settings.stream_batch, timeout=self.settings.stream_max_wait
                )
            except (NatsTimeoutError, TimeoutError):
                return
            if not messages:
                return
            await self.handle(messages)

    async def handle(self, messages: Sequence[Msg]) -> None:
        """Score and publish one fetched batch, then let it wait for its acknowledgements (and acknowledge its
        inputs) while the next one is handled; on failure hand it back for a later delivery."""
        deliveries = [Delivery.of(msg) for msg in messages]
        metrics.MESSAGES_CONSUMED.inc(len(deliveries))
        metrics.REDELIVERIES.inc(sum(1 for delivery in deliveries if delivery.delivered > 1))
        while len(self._in_flight) >= BATCHES_IN_FLIGHT:
            await self._in_flight.pop(0)
        try:
            published = await self._score_and_publish(deliveries)
        except Exception as error:
            await self._failed(deliveries, error)
            return
        self._in_flight.append(asyncio.ensure_future(self._settle(published)))

    async def _settle_all(self) -> None:
        """Every batch in flight finished: its inputs acknowledged, or handed back."""
        while self._in_flight:
            await self._in_flight.pop(0)

    async def _failed(self, deliveries: list[Delivery], error: Exception) -> None:
        metrics.FAILED_BATCHES.inc()
        reason = str(error) if isinstance(error, GridWatchError) else repr(error)
        logger.warning("batch of %d messages not done (%s): delivered again later", len(deliveries), reason)
        await self._hand_back(deliveries, reason)

    async def _settle(self, published: Published) -> None:
        """Wait until the server stored every result of the batch, then acknowledge its inputs."""
        deliveries = published.deliveries
        try:
            await self.publisher.wait(published.batch, PUBLISH_ACK_TIMEOUT_S)
        except Exception as error:
            await self._failed(deliveries, error)
            return
        published.record()
        for delivery in deliveries:
            try:
                if delivery.readings:
                    await delivery.msg.ack()
                else:  # nothing in it to score: all of it went to the dead letters
                    await delivery.msg.term()
            except Exception as error:  # the connection closed under it: redelivered, and its results deduplicated
                logger.warning("could not acknowledge message %d (%s)", delivery.sequence, error)

    async def _score_and_publish(self, deliveries: list[Delivery]) -> Published:
        batch = self.publisher.batch()
        rejected = [(delivery, bad) for delivery in deliveries for bad in delivery.rejected]
        for delivery, bad in rejected:
            await self._dead_letter(
                batch, delivery, bad.reason, detail=bad.detail, payload=bad.payload, index=bad.index
            )
        items = [(delivery, reading) for delivery in deliveries for reading in delivery.readings]
        if items:
            model = self.holder.get()  # ModelNotReadyError: handed back, scored once the model is there
            X = np.array([reading.values for _, reading in items], dtype=np.float64)
            explain = self.settings.stream_explain
            scored = self.scorer.score(model, X, credits=explain is not StreamExplain.none)
            version = model.detector.version
            self.shadow.submit(X, scored.flags, version)
            metrics.READINGS_CONSUMED.inc(len(items))
            explanations = self._explanations(model.detector, X, scored, explain)
            for (delivery, reading), flag, score, explanation in zip(
                items, scored.flags.tolist(), scored.scores.tolist(), explanations, strict=True
            ):
                await self._publish_result(
                    batch, delivery, reading, anomaly=flag, score=score, version=version, explanation=explanation
                )
        return Published(deliveries, batch, items, [bad for _, bad in rejected])

    def _explanations(
        self, detector: Detector, X: np.ndarray, scored: ScoredBatch, explain: StreamExplain
    ) -> list[dict[str, Any] | None]:
        """Per reading, its explanation when STREAM_EXPLAIN asks for it, else None."""
        if scored.credits is None:
            return [None] * X.shape[0]
        chosen = scored.flags if explain is StreamExplain.anomalies else np.ones(X.shape[0], dtype=bool)
        rows = np.flatnonzero(chosen)
        found: list[dict[str, Any] | None] = [None] * X.shape[0]
        if rows.size:
            dicts = explanation_dicts(self.explainer.explain(detector, X[rows], scored.credits[rows]))
            for row, explanation in zip(rows.tolist(), dicts, strict=True):
                found[row] = explanation
        return found

    async def _publish_result(
        self,
        batch: Batch,
        delivery: Delivery,
        reading: Reading,
        *,
        anomaly: bool,
        score: float,
        version: str,
        explanation: dict[str, Any] | None = None,
    ) -> None:
        result: dict[str, Any] = {
            "sensor": delivery.tokens,
            "sensor_id": reading.sensor_id,
            "sequence": delivery.sequence,
            "index": reading.index,
            "timestamp": reading.timestamp_text,
            "anomaly": anomaly,
            "score": score,
            "model_version": version,
        }
        if explanation is not None:
            result["explanation"] = explanation
        payload = orjson.dumps(result)
        reading_id = delivery.result_id(reading)
        await self.publisher.publish(batch, f"grid.scored.{delivery.tokens}", payload, {"Nats-Msg-Id": reading_id})
        if anomaly:
            await self.publisher.publish(
                batch, f"grid.anomalies.{delivery.tokens}", payload, {"Nats-Msg-Id": f"anomaly|{reading_id}"}
            )

    async def _dead_letter(
        self, batch: Batch, delivery: Delivery, reason: Refusal, *, detail: str, payload: bytes, index: int | None
    ) -> None:
        headers = {
            "Nats-Msg-Id": f"deadletter|{delivery.sequence}|{'' if index is None else index}",
            "Gridwatch-Reason": reason.value,
            "Gridwatch-Detail": detail[:500].replace("\r", " ").replace("\n", " "),
            "Gridwatch-Subject": delivery.msg.subject,
            "Gridwatch-Sequence": str(delivery.sequence),
        }
        await self.publisher.publish(batch, f"grid.deadletter.{delivery.tokens}", payload, headers)

    async def _hand_back(self, deliveries: list[Delivery], reason: str) -> None:
        """``nak`` each message with a growing delay, or dead-letter it when this was its last delivery."""
        for delivery in deliveries:
            try:
                if delivery.delivered >= self.settings.stream_max_deliver:
                    batch = self.publisher.batch()
                    await self._dead_letter(
                        batch, delivery, Refusal.max_deliveries, detail=reason, payload=delivery.msg.data, index=None
                    )
                    await self.publisher.wait(batch, PUBLISH_ACK_TIMEOUT_S)
                    metrics.DEAD_LETTERS.labels(Refusal.max_deliveries.value).inc()
                    await delivery.msg.term()
                else:
                    delay = min(2.0 ** (delivery.delivered - 1), NAK_LONGEST_S)
                    await delivery.msg.nak(delay=delay)
            except Exception as error:  # the broker is away: it redelivers after the ack wait anyway
                logger.warning("could not hand message %d back (%s)", delivery.sequence, error)

    async def _refresh_pending(self) -> None:
        """Start reading the backlog for the gauges, at most every PENDING_REFRESH_S, beside the loop: a request to
        the server that the next fetch must not wait for."""
        now = time.monotonic()
        if now - self._pending_read_at < PENDING_REFRESH_S or (self._pending_task and not self._pending_task.done()):
            return
        self._pending_read_at = now
        self._pending_task = asyncio.ensure_future(self._read_pending())

    async def _read_pending(self) -> None:
        try:
            info = await self.subscription.consumer_info()
        except Exception:  # a metric only: never let it stop the loop
            return
        metrics.PENDING.set(info.num_pending or 0)
        metrics.ACK_PENDING.set(info.num_ack_pending or 0)
