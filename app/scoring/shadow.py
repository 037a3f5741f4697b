"""A challenger in the shadow: a second model version scores the batches the active one answered, afterwards.

The answer is computed and sent by the active version alone; the request only hands the scored array to a queue
and goes on. One thread of the worker scores what the queue holds, so the shadow can neither change an answer nor
fail or delay one, and its cost is bounded: one CPU-bound thread, at most ``SHADOW_QUEUE`` batches waiting (a
batch arriving when the queue is full is skipped and counted in ``shadow_skipped_total``, so a saturated worker
sheds shadow work first), and at most ``SHADOW_MAX_SHARE`` of the wall-clock time spent scoring (``ShareBudget``:
past it, batches are skipped and counted the same way, so a slow challenger cannot take the requests' CPU).
Whatever happens in the shadow is caught, logged and counted (``shadow_errors_total``).
One thread rather than the request thread pool: with a thread per batch in flight, each thread's malloc arena took
a worker from 88 to 216 MB under load in the benchmark. What operators compare:
``shadow_agreements_total`` (readings the shadow flagged exactly as the active version did) over
``shadow_readings_scored_total``, and the shadow's own ``shadow_anomalies_total``, all labelled by the shadow's
version; the Detector dashboard plots them and ``GridWatchShadowDisagrees`` fires when they part far more than two
models of one feeder should.

The shadow is named by ``SHADOW_MODEL_VERSION``, or else by ``gridwatch models shadow VERSION`` (kept in
``active.json``, followed by every worker like the active version). The same thread, queue and share also score the
batches a ``PromotionGuard`` compares after a promotion (``MODEL_AUTO_ROLLBACK``), challenger or not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from app.detector.model import Detector
from app.scoring.metrics import (
    SHADOW_AGREEMENTS,
    SHADOW_ANOMALIES,
    SHADOW_BATCHES,
    SHADOW_ERRORS,
    SHADOW_READINGS,
    SHADOW_SCORING_SECONDS,
    SHADOW_SKIPPED,
)
from app.scoring.promotion_guard import PromotionGuard

logger = logging.getLogger(__name__)


SHADOW_QUEUE = 64
"""Batches waiting for the shadow at most; past it, batches are skipped (counted) rather than queued."""
BUDGET_BURST_S = 0.5
"""CPU seconds the shadow may spend at once after an idle spell, on top of its share."""


class ShareBudget:
    """At most ``share`` of the wall-clock time for the shadow's scoring: a token bucket of CPU seconds.

    Credit accrues at ``share`` seconds per second, up to ``burst``; a batch is scored only while the credit is
    positive, and its CPU time is charged after. A queue alone does not bound the shadow: a challenger ten times
    slower than the active model kept up with its queue (nothing skipped) while it took the worker's CPU and GIL from
    the requests, cutting capacity from 1,694 to 220 answers/s. With the budget, such a challenger scores a sample
    of the batches, and the rest are skipped and counted.
    """

    def __init__(self, share: float, *, burst: float = BUDGET_BURST_S, clock: Callable[[], float] = time.monotonic):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a share is within (0, 1], got {share}")
        self.share = share
        self._burst = burst
        self._clock = clock
        self._credit = burst
        self._last = clock()

    def allow(self) -> bool:
        """Whether the next batch may be scored now."""
        now = self._clock()
        self._credit = min(self._burst, self._credit + (now - self._last) * self.share)
        self._last = now
        return self._credit > 0.0

    def charge(self, seconds: float) -> None:
        self._credit -= seconds


class ShadowScorer:
    """Holds the challenger (or none) and scores submitted batches with it on one thread, never raising."""

    def __init__(
        self, *, queue_size: int = SHADOW_QUEUE, max_share: float = 1.0, guard: PromotionGuard | None = None
    ) -> None:
        self._budget = ShareBudget(max_share)
        self._detector: Detector | None = None
        self.guard = guard
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray, str | None]] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        detector = self._detector
        return None if detector is None else detector.version

    def use(self, detector: Detector | None) -> None:
        """Score with ``detector`` from the next batch on (None: stop shadow scoring)."""
        self._detector = detector
        if detector is not None:
            for counter in (
                SHADOW_READINGS,
                SHADOW_AGREEMENTS,
                SHADOW_ANOMALIES,
                SHADOW_SCORING_SECONDS,
                SHADOW_BATCHES,
            ):
                counter.labels(detector.version)  # exported at 0 as soon as the shadow is there
            self._start()
        logger.info("shadow model: %s", detector.version if detector is not None else "none")

    def submit(self, X: np.ndarray, active_flags: np.ndarray, version: str | None = None) -> None:
        """Hand a batch the active ``version`` scored to the shadow; returns at once (on the request's path)."""
        if self._detector is None and (self.guard is None or self.guard.watching is None):
            return
        if self._thread is None:
            self._start()  # the guard's first batch, with no challenger ever named
        try:
            self._queue.put_nowait((X, active_flags, version))
        except queue.Full:
            self._skipped()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch is scored (for tests); True if it happened in time."""
        done = threading.Event()

        def join_then_signal() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=join_then_signal, daemon=True).start()
        return done.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            X, active_flags, version = self._queue.get()
            try:
                if self._budget.allow():
                    started = time.thread_time()
                    self.score(X, active_flags)
                    self._observe(X, active_flags, version)
                    self._budget.charge(time.thread_time() - started)
                else:
                    self._skipped()  # over SHADOW_MAX_SHARE: shed, like a batch finding the queue full
            finally:
                self._queue.task_done()

    def _skipped(self) -> None:
        if self._detector is not None:  # a batch only the guard wanted is not the challenger's loss
            SHADOW_SKIPPED.inc()

    def _observe(self, X: np.ndarray, active_flags: np.ndarray, version: str | None) -> None:
        if self.guard is None:
            return
        try:
            self.guard.observe(X, active_flags, version)
        except Exception:  # like the shadow: nothing here may reach a request, nor stop this thread
            SHADOW_ERRORS.inc()
            logger.exception("judging a promotion failed")

    def score(self, X: np.ndarray, active_flags: np.ndarray) -> None:
        """Score ``X`` with the shadow and count how it agrees with ``active_flags``; never raises."""
        detector = self._detector
        if detector is None:
            return
        try:
            started = time.thread_time()
            flags, _ = detector.predict_batch(X)
            version = detector.version
            SHADOW_SCORING_SECONDS.labels(version).inc(time.thread_time() - started)
            SHADOW_READINGS.labels(version).inc(X.shape[0])
            SHADOW_BATCHES.labels(version).inc()
            SHADOW_AGREEMENTS.labels(version).inc(int(np.count_nonzero(flags == active_flags)))
            SHADOW_ANOMALIES.labels(version).inc(int(np.count_nonzero(flags)))
        except Exception:  # the answer is long gone: nothing here may surface as a failed request
            SHADOW_ERRORS.inc()
            logger.exception("shadow scoring failed")
