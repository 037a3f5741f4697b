"""A challenger in the shadow: a second model version scores the batches the active one answered, afterwards.

The answer is computed and sent by the active version alone; the request only hands the scored array to a queue
and goes on. One thread of the worker scores what the queue holds, so the shadow can neither change an answer nor
fail or delay one, and its cost is bounded: one CPU-bound thread, at most ``SHADOW_QUEUE`` batches waiting (a
batch arriving when the queue is full is skipped and counted in ``shadow_skipped_total``, so a saturated worker
sheds shadow work first). Whatever happens in the shadow is caught, logged and counted (``shadow_errors_total``).
One thread rather than the request thread pool: with a thread per batch in flight, each thread's malloc arena took
a worker from 88 to 216 MB under load in the benchmark. What operators compare:
``shadow_agreements_total`` (readings the shadow flagged exactly as the active version did) over
``shadow_readings_scored_total``, and the shadow's own ``shadow_anomalies_total``, all labelled by the shadow's
version; the Detector dashboard plots them and ``GridWatchShadowDisagrees`` fires when they part far more than two
models of one feeder should.

The shadow is named by ``SHADOW_MODEL_VERSION``, or else by ``gridwatch models shadow VERSION`` (kept in
``active.json``, followed by every worker like the active version).
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from app.detector.model import Detector
from app.serving.metrics import SHADOW_AGREEMENTS, SHADOW_ANOMALIES, SHADOW_ERRORS, SHADOW_READINGS, SHADOW_SKIPPED

logger = logging.getLogger(__name__)


SHADOW_QUEUE = 64
"""Batches waiting for the shadow at most; past it, batches are skipped (counted) rather than queued."""


class ShadowScorer:
    """Holds the challenger (or none) and scores submitted batches with it on one thread, never raising."""

    def __init__(self, *, queue_size: int = SHADOW_QUEUE) -> None:
        self._detector: Detector | None = None
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue(maxsize=queue_size)
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
            for counter in (SHADOW_READINGS, SHADOW_AGREEMENTS, SHADOW_ANOMALIES):
                counter.labels(detector.version)  # exported at 0 as soon as the shadow is there
            self._start()
        logger.info("shadow model: %s", detector.version if detector is not None else "none")

    def submit(self, X: np.ndarray, active_flags: np.ndarray) -> None:
        """Hand a scored batch to the shadow; returns at once (called on the request's path)."""
        if self._detector is None:
            return
        try:
            self._queue.put_nowait((X, active_flags))
        except queue.Full:
            SHADOW_SKIPPED.inc()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch is scored (for tests); True if it happened in time."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            X, active_flags = self._queue.get()
            try:
                self.score(X, active_flags)
            finally:
                self._queue.task_done()

    def score(self, X: np.ndarray, active_flags: np.ndarray) -> None:
        """Score ``X`` with the shadow and count how it agrees with ``active_flags``; never raises."""
        detector = self._detector
        if detector is None:
            return
        try:
            flags, _ = detector.predict_batch(X)
            version = detector.version
            SHADOW_READINGS.labels(version).inc(X.shape[0])
            SHADOW_AGREEMENTS.labels(version).inc(int(np.count_nonzero(flags == active_flags)))
            SHADOW_ANOMALIES.labels(version).inc(int(np.count_nonzero(flags)))
        except Exception:  # the answer is long gone: nothing here may surface as a failed request
            SHADOW_ERRORS.inc()
            logger.exception("shadow scoring failed")
