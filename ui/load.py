"""The load actions that make autoscaling visible: a burst back to back, a concurrent burst, and sustained
concurrent load for a number of seconds.

Each is bounded by ``ui.config`` (requests, threads, seconds), so the page can never start an endless or
unbounded load, and each returns a ``LoadReport`` (successes, errors, latency percentiles, throughput, which
instances answered). Every request is also written to the ``TrafficLog``, which is how the load-spread chart sees
requests move to new pods while the HPA scales out.

Payloads are simulated once before the load starts and reused in turn, so the UI's CPU goes into sending, not
into simulating, and the backend gets realistic readings.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.common.latency import latency_summary
from app.sim import AnomalyKind, GridSimulator
from ui.client import BackendClient
from ui.config import BATCH_SIZE, LOAD_REQUESTS, LOAD_SECONDS, LOAD_THREADS, Range
from ui.traffic import RequestRecord, TrafficLog, timed_predict

Sender = Callable[[], RequestRecord]
"""Sends one request and returns what happened; never raises for a backend problem."""

PAYLOAD_VARIANTS = 16
ERROR_BACKOFF_S = 0.25
"""Pause of a sustained sender after a failed request."""


def load_payloads(
    batch_size: int,
    *,
    anomaly_rate: float,
    anomaly_kinds: Sequence[AnomalyKind | str],
    variants: int = PAYLOAD_VARIANTS,
    seed: int | None = None,
) -> list[list[dict[str, object]]]:
    """``variants`` simulated batches of ``batch_size`` readings, without ground truth (smaller bodies)."""
    _check("batch size", batch_size, BATCH_SIZE)
    rate = anomaly_rate if anomaly_kinds else 0.0
    simulator = GridSimulator(anomaly_rate=rate, anomaly_kinds=anomaly_kinds, seed=seed)
    return [simulator.batch(batch_size).to_records(ground_truth=False) for _ in range(variants)]


def make_sender(
    client: BackendClient, payloads: Sequence[list[dict[str, object]]], log: TrafficLog, *, source: str
) -> Sender:
    """A ``Sender`` posting the payloads in turn to ``/predict`` and recording every request in ``log``."""
    if not payloads:
        raise ValueError("at least one payload is needed")
    turn = itertools.count()  # next() on a count is atomic under the GIL, so threads share it safely

    def send() -> RequestRecord:
        record, _ = timed_predict(client, payloads[next(turn) % len(payloads)], source=source)
        log.add(record)
        return record

    return send


@dataclass(frozen=True)
class LoadReport:
    """What one load action did, as the UI measured it."""

    action: str
    requests: int
    ok: int
    errors: int
    duration_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    """p50/p90/p99/max of successful requests, in milliseconds (empty if none succeeded)."""
    instances: dict[str, int] = field(default_factory=dict)
    """Successful answers per backend instance (``served_by``), most first."""
    error_messages: dict[str, int] = field(default_factory=dict)
    """Distinct error messages with their counts, most frequent first (at most five)."""
    running: bool = False
    stopped_early: bool = False

    @property
    def throughput(self) -> float:
        """Requests per second over the action's duration."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


class LoadTally:
    """Running totals of a load action; thread-safe and bounded in memory however long the load runs.

    Counts are exact; latency percentiles are over the newest ``latency_samples`` successful requests.
    """

    def __init__(self, latency_samples: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._latencies_ms: deque[float] = deque(maxlen=latency_samples)
        self._instances: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests += 1
            if record.ok:
                self._latencies_ms.append(record.latency_s * 1000.0)
                if record.served_by:
                    self._instances[record.served_by] += 1
            else:
                self._errors[record.error or "unknown error"] += 1

    def report(
        self, action: str, duration_s: float, *, running: bool = False, stopped_early: bool = False
    ) -> LoadReport:
        with self._lock:
            requests = self._requests
            latencies = list(self._latencies_ms)
            instances = dict(sorted(self._instances.items(), key=lambda item: (-item[1], item[0])))
            errors = sum(self._errors.values())
            messages = dict(self._errors.most_common(5))
        return LoadReport(
            action=action,
            requests=requests,
            ok=requests - errors,
            errors=errors,
            duration_s=duration_s,
            latency_ms=latency_summary(latencies, quantiles=(50, 90, 99)),
            instances=instances,
            error_messages=messages,
            running=running,
            stopped_early=stopped_early,
        )


def burst(send: Sender, requests: int) -> LoadReport:
    """``requests`` requests back to back from the calling thread: one connection's worth of load."""
    _check("requests", requests, LOAD_REQUESTS)
    tally = LoadTally()
    started = time.perf_counter()
    for _ in range(requests):
        tally.add(send())
    return tally.report("Burst Load", time.perf_counter() - started)


def concurrent_burst(send: Sender, requests: int, threads: int) -> LoadReport:
    """``requests`` requests from a pool of ``threads`` senders, as fast as the backend answers."""
    _check("requests", requests, LOAD_REQUESTS)
    _check("threads", threads, LOAD_THREADS)
    tally = LoadTally()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gridwatch-burst") as pool:
        for record in pool.map(lambda _: send(), range(requests)):
            tally.add(record)
    return tally.report("Concurrent Burst", time.perf_counter() - started)


class SustainedLoad:
    """``threads`` senders sending back to back for ``seconds``, in the background, stoppable at any time.

    It runs on its own threads so the page stays responsive (and shows the load spreading while it runs); it ends
    by itself when the time is up, and ``stop()`` ends it early. A request in flight when it ends is finished,
    bounded by the client's timeouts.
    """

    ACTION = "Sustained Concurrent Bursts"

    def __init__(self, send: Sender, *, threads: int, seconds: float) -> None:
        _check("threads", threads, LOAD_THREADS)
        _check("seconds", seconds, LOAD_SECONDS)
        self.threads = threads
        self.seconds = float(seconds)
        self._send = send
        self._tally = LoadTally()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._started: float | None = None
        self._finished: float | None = None
        self._runner: threading.Thread | None = None

    def start(self) -> SustainedLoad:
        if self._runner is not None:
            raise RuntimeError("a SustainedLoad runs once; create another one")
        self._started = time.perf_counter()
        self._runner = threading.Thread(target=self._run, name="gridwatch-sustained", daemon=True)
        self._runner.start()
        return self

    def stop(self) -> None:
        """Ask the senders to stop after their current request (no effect once the load has ended)."""
        if self.running:
            self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the load has ended; True if it did within ``timeout``."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._done.is_set()

    @property
    def elapsed_s(self) -> float:
        if self._started is None:
            return 0.0
        return (self._finished or time.perf_counter()) - self._started

    def report(self) -> LoadReport:
        """The report so far (``running`` is True until the load has ended)."""
        return self._tally.report(self.ACTION, self.elapsed_s, running=self.running, stopped_early=self._stop.is_set())

    def _run(self) -> None:
        assert self._started is not None
        deadline = self._started + self.seconds
        # Daemon threads, not an executor: an executor's threads are joined at interpreter exit, which would keep
        # a stopping Streamlit server alive until the load's time is up.
        senders = [
            threading.Thread(target=self._sender_loop, args=(deadline,), name=f"gridwatch-sustained-{i}", daemon=True)
            for i in range(self.threads)
        ]
        try:
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
        finally:
            self._finished = time.perf_counter()
            self._done.set()

    def _sender_loop(self, deadline: float) -> None:
        while not self._stop.is_set() and time.perf_counter() < deadline:
            record = self._send()
            self._tally.add(record)
            if not record.ok:
                # A refused connection fails in microseconds: back off instead of spinning on a dead backend.
                self._stop.wait(ERROR_BACKOFF_S)


def _check(name: str, value: float, bounds: Range) -> None:
    if not bounds.low <= value <= bounds.high:
        raise ValueError(f"{name} must be within [{bounds.low:g}, {bounds.high:g}], got {value}")
