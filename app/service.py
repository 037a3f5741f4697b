"""The serving side of the model: loading it off the event loop, and scoring a batch with its metrics.

Readiness means "the model is loaded": until then ``ModelHolder.get`` raises ``ModelNotReadyError`` (503 with a
reason) while the process is alive and answers ``/livez``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from app.errors import GridWatchError, ModelNotReadyError
from app.metrics import ANOMALIES, INFERENCE_LATENCY
from app.model import Detector

logger = logging.getLogger(__name__)


class ModelState(StrEnum):
    loading = "loading"
    ready = "ready"
    failed = "failed"


class ModelHolder:
    """Holds the detector once ``load`` has produced it; thread-safe, loaded exactly once."""

    def __init__(self, loader: Callable[[], Detector], detector: Detector | None = None) -> None:
        self._loader = loader
        self._detector = detector
        self._error: str | None = None
        self._done = threading.Event()
        if detector is not None:
            self._done.set()

    @property
    def state(self) -> ModelState:
        if self._detector is not None:
            return ModelState.ready
        return ModelState.failed if self._error is not None else ModelState.loading

    @property
    def reason(self) -> str:
        """Why the model is not ready, for the 503 answers and the logs."""
        if self._error is not None:
            return f"model failed to load: {self._error}"
        return "model is loading" if self._detector is None else "ready"

    def load(self) -> None:
        """Run the loader (load or train); blocking, meant for a worker thread. Failures are kept, not raised.

        A failure leaves the process alive but unready: ``/health`` answers 503 with the reason and the log holds
        it, which is what an operator looks at when a pod never becomes ready.
        """
        if self._done.is_set():
            return
        try:
            self._detector = self._loader()
            logger.info("model %s ready", self._detector.version)
        except GridWatchError as error:
            self._error = str(error)
            logger.error("model unavailable: %s", error)
        except Exception as error:
            self._error = repr(error)
            logger.exception("model loading crashed")
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (ready or failed); True if it finished in time."""
        return self._done.wait(timeout)

    def get(self) -> Detector:
        if self._detector is None:
            raise ModelNotReadyError(self.reason)
        return self._detector


@dataclass(frozen=True)
class ScoredBatch:
    flags: np.ndarray
    scores: np.ndarray

    @property
    def anomalies(self) -> int:
        return int(np.count_nonzero(self.flags))


def score_batch(detector: Detector, X: np.ndarray) -> ScoredBatch:
    """Score ``X`` and record the inference metrics (latency, flagged readings)."""
    started = time.perf_counter()
    flags, scores = detector.predict_batch(X)
    INFERENCE_LATENCY.observe(time.perf_counter() - started)
    batch = ScoredBatch(flags, scores)
    ANOMALIES.inc(batch.anomalies)
    return batch
