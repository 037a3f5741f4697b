"""The Stream view's feed: the results the stream consumers publish, as they arrive over NATS.

``gridwatch stream`` publishes one result per reading to ``grid.scored.<feeder>.<sensor>`` and each flagged one also
to ``grid.anomalies.<feeder>.<sensor>`` (docs/streaming.md). A ``StreamFeed`` subscribes to both with plain NATS
subscriptions (live results only, nothing replayed, nothing acknowledged: the UI only watches) from a thread of its
own with its own event loop, because Streamlit reruns the page script from the top and a subscription must outlive
those runs. It keeps a bounded window of results per feeder and the latest anomalies, so its memory is fixed however
long it runs; a message it cannot read is counted and skipped. The page reads a consistent ``snapshot()``.

nats-py is the only dependency beyond the standard library (the UI image has no scikit-learn and needs none here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

SCORED = "grid.scored.>"
ANOMALIES = "grid.anomalies.>"
PER_FEEDER = 600
"""Results kept per feeder: about a minute of ten sensors at one reading a second each."""
MAX_FEEDERS = 50
"""Feeders kept: results of further feeders are counted but not kept (the chart would be unreadable anyway)."""
RECENT_ANOMALIES = 100
CONNECT_TIMEOUT_S = 2.0
CANCEL_AGAIN_S = 0.1
"""How long a cancelled connection attempt is given to end before it is cancelled again (see ``_abandon``)."""


@dataclass(frozen=True)
class StreamResult:
    """One scored reading as the consumer published it, and when this UI received it."""

    feeder: str
    sensor: str
    received: float
    """Epoch seconds."""
    anomaly: bool
    score: float
    model_version: str
    timestamp: str | None
    sequence: int | None


def parse_result(subject: str, data: bytes, received: float) -> StreamResult:
    """A result message of ``grid.scored.*`` or ``grid.anomalies.*``; ``ValueError`` for anything else."""
    tokens = subject.split(".", 2)
    if len(tokens) != 3 or not tokens[2]:
        raise ValueError(f"not a result subject: {subject}")
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("a result is a JSON object")
    location = tokens[2]
    feeder, _, sensor = location.partition(".")
    anomaly, score = document.get("anomaly"), document.get("score")
    if not isinstance(anomaly, bool) or isinstance(score, bool) or not isinstance(score, int | float):
        raise ValueError("a result has a boolean anomaly and a numeric score")
    timestamp, sequence = document.get("timestamp"), document.get("sequence")
    return StreamResult(
        feeder=feeder,
        sensor=sensor or str(document.get("sensor_id") or ""),
        received=received,
        anomaly=anomaly,
        score=float(score),
        model_version=str(document.get("model_version") or ""),
        timestamp=None if timestamp is None else str(timestamp),
        sequence=sequence if isinstance(sequence, int) else None,
    )


@dataclass(frozen=True)
class FeedSnapshot:
    """What the feed holds at one moment: a copy, safe to read while the feed goes on."""

    url: str
    connected: bool
    error: str | None
    received: int
    malformed: int
    feeders: dict[str, list[StreamResult]]
    anomalies: list[StreamResult]
    """Latest first."""


@dataclass
class _State:
    connected: bool = False
    error: str | None = None
    received: int = 0
    malformed: int = 0
    feeders: dict[str, deque[StreamResult]] = field(default_factory=dict)
    anomalies: deque[StreamResult] = field(default_factory=lambda: deque(maxlen=RECENT_ANOMALIES))


class StreamFeed:
    """Subscribes to the results subjects of one NATS server until ``stop``; reconnects by itself."""

    def __init__(self, url: str, *, per_feeder: int = PER_FEEDER, max_feeders: int = MAX_FEEDERS) -> None:
        self.url = url
        self.per_feeder = per_feeder
        self.max_feeders = max_feeders
        self._state = _State()
        self._lock = threading.Lock()
        # Made here, not in the feed's thread: a stop requested before that thread runs its loop is queued on the
        # loop and seen first, instead of finding no loop yet and being lost (leaving a subscription nobody ends).
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-feed {url}", daemon=True)

    def start(self) -> StreamFeed:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread, waiting for that at most ``timeout`` seconds (0: ask and
        return, for callers that must not block, such as Streamlit releasing a session's resources)."""
        if self._thread.ident is None:  # never started: nothing runs, only the loop to free
            self._loop.close()
            return
        with contextlib.suppress(RuntimeError):  # the loop ended on its own meanwhile
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self) -> FeedSnapshot:
        with self._lock:
            state = self._state
            return FeedSnapshot(
                url=self.url,
                connected=state.connected,
                error=state.error,
                received=state.received,
                malformed=state.malformed,
                feeders={name: list(window) for name, window in state.feeders.items()},
                anomalies=list(reversed(state.anomalies)),
            )

    # --- the feed's own thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=lambda: self._loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._set(error=f"connecting to NATS at {self.url}")
        # With reconnection on, nats-py tries until it reaches the server, the first time too (each failed attempt
        # reported through error_cb), so the connection attempt races the stop request.
        connecting = asyncio.ensure_future(
            nats.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1.0,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        )
        stopping = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if self._stopped.is_set():
            await _abandon(connecting)
            return
        try:
            client = connecting.result()
        except Exception as error:  # not a NATS URL at all
            self._set(connected=False, error=f"cannot use NATS at {self.url}: {error or type(error).__name__}")
            return
        try:
            await client.subscribe(SCORED, cb=self._on_scored)
            await client.subscribe(ANOMALIES, cb=self._on_anomaly)
            await client.flush()
            self._set(connected=True, error=None)
            await self._stopped.wait()
        finally:
            self._set(connected=False)
            with contextlib.suppress(Exception):
                await client.close()

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._state, name, value)

    async def _on_error(self, error: Exception) -> None:
        self._set(error=f"NATS: {error or type(error).__name__}")

    async def _on_disconnected(self) -> None:
        self._set(connected=False, error=f"disconnected from NATS at {self.url}; reconnecting")

    async def _on_reconnected(self) -> None:
        self._set(connected=True, error=None)

    def _parse(self, msg: Msg) -> StreamResult | None:
        try:
            return parse_result(msg.subject, msg.data, time.time())
        except ValueError:  # json.JSONDecodeError is one too
            with self._lock:
                self._state.malformed += 1
            return None

    async def _on_scored(self, msg: Msg) -> None:
        result = self._parse(msg)
        if result is None:
            return
        with self._lock:
            state = self._state
            state.received += 1
            window = state.feeders.get(result.feeder)
            if window is None:
                if len(state.feeders) >= self.max_feeders:
                    return
                window = state.feeders[result.feeder] = deque(maxlen=self.per_feeder)
            window.append(result)

    async def _on_anomaly(self, msg: Msg) -> None:
        result = self._parse(msg)
        if result is not None and result.anomaly:
            with self._lock:
                self._state.anomalies.append(result)


async def _abandon(connecting: asyncio.Future[Client]) -> None:
    """End a connection attempt that a stop overtook, closing the client should it have got through meanwhile.

    One ``cancel()`` is not always enough: Python 3.11's ``asyncio.wait_for`` turns a cancellation that meets an
    already failed connection attempt into that attempt's ``OSError``, which nats-py's connect loop catches and
    retries on, so the cancellation is lost and the attempt goes on for ever (3.12's ``wait_for`` keeps it). So
    cancel until the attempt has ended.
    """
    while not connecting.done():
        connecting.cancel()
        await asyncio.wait({connecting}, timeout=CANCEL_AGAIN_S)
    if not connecting.cancelled() and connecting.exception() is None:
        with contextlib.suppress(Exception):
            await connecting.result().close()
