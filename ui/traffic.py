"""A record of the requests the UI sent: when, who answered, how long it took. Feeds the load-spread chart and
the latency the UI reports.

Both the page (streaming, one request per tick) and the load actions (many threads) write here, so it is
thread-safe, and it is bounded: only the newest ``capacity`` requests are kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ui.client import BackendClient, BackendError, PredictResult

FAILED = "(failed)"
"""The ``served_by`` of a request nobody answered, in frames and charts."""


@dataclass(frozen=True)
class RequestRecord:
    """One request to ``/predict`` as the UI saw it."""

    at: float
    """Wall-clock time (epoch seconds) the answer arrived."""
    source: str
    """What sent it: ``stream`` (the live view) or the load action's name."""
    ok: bool
    latency_s: float
    served_by: str | None
    """The backend instance that answered (``served_by``), None when the request failed."""
    error: str | None = None


class TrafficLog:
    """The newest ``capacity`` requests, safe to append from many threads."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def snapshot(self, since: float | None = None) -> list[RequestRecord]:
        """A copy of the records, optionally only those at or after ``since`` (epoch seconds)."""
        with self._lock:
            records = list(self._records)
        return records if since is None else [r for r in records if r.at >= since]

    def frame(self, since: float | None = None) -> pd.DataFrame:
        """The records as a DataFrame with a UTC ``time`` column, for charts."""
        rows = self.snapshot(since)
        return pd.DataFrame(
            [
                {
                    "time": pd.Timestamp(r.at, unit="s", tz="UTC"),
                    "source": r.source,
                    "ok": r.ok,
                    "latency_ms": r.latency_s * 1000.0,
                    "served_by": r.served_by or FAILED,
                }
                for r in rows
            ],
            columns=["time", "source", "ok", "latency_ms", "served_by"],
        )

    def instances(self, since: float | None = None) -> dict[str, int]:
        """Answers per backend instance, most first."""
        counts: dict[str, int] = {}
        for record in self.snapshot(since):
            if record.served_by:
                counts[record.served_by] = counts.get(record.served_by, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def latency_ms(self, *, source: str | None = None, last: int = 200) -> np.ndarray:
        """Latencies in milliseconds of the last ``last`` successful requests (of one source, if given)."""
        records = [r for r in self.snapshot() if r.ok and (source is None or r.source == source)]
        return np.array([r.latency_s * 1000.0 for r in records[-last:]], dtype=np.float64)


def now() -> float:
    """Wall-clock time for records; one function so the log and its readers agree on the clock."""
    return time.time()


def timed_predict(
    client: BackendClient, readings: Sequence[Mapping[str, object]], *, source: str, explain: bool = False
) -> tuple[RequestRecord, PredictResult | BackendError]:
    """Send one ``/predict`` and describe it as a ``RequestRecord``, with the answer or the error it ended in.

    The stream and the load actions both record their requests this way, so the spread and latency charts count
    them alike: an answer carries the client's latency and who served it; a failure has no ``served_by`` and
    the time the UI waited for nothing. The error is returned, not raised, because a load sender must not stop
    on it and the live session keeps it to show. ``explain`` asks for the readings' explanations too.
    """
    started = time.perf_counter()
    try:
        result = client.predict(readings, explain=explain)
    except BackendError as error:
        failed = RequestRecord(
            at=now(),
            source=source,
            ok=False,
            latency_s=time.perf_counter() - started,
            served_by=None,
            error=error.message,
        )
        return failed, error
    answered = RequestRecord(at=now(), source=source, ok=True, latency_s=result.latency_s, served_by=result.served_by)
    return answered, result
