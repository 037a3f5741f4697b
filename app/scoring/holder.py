"""The model a worker serves: loaded off the caller's thread, retried until it loads, swapped in one assignment.

Any front door (the HTTP service, a broker consumer) holds one ``ModelHolder``. Readiness means "the model is
loaded": until then ``ModelHolder.get`` raises ``ModelNotReadyError`` (an HTTP front door answers 503 with the
reason) while the process is alive.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from app.detector import forest_jit
from app.detector.drift import DriftMonitor
from app.detector.errors import GridWatchError, ModelUnavailableError
from app.detector.loading import load_detector
from app.detector.model import Detector
from app.detector.registry import ModelStore, VersionRefusedError
from app.detector.scorer import Scorer
from app.scoring.metrics import MODEL_INFO, MODEL_LOAD_DURATION, MODEL_TRAINED_TIMESTAMP, DriftGauges

logger = logging.getLogger(__name__)


class ModelNotReadyError(GridWatchError):
    """The worker is up but its model is still loading (or failed to load and is retried); retry later."""


RETRY_FIRST_S = 1.0
RETRY_LONGEST_S = 60.0
"""A failed model load is tried again after 1, 2, 4... seconds, then every minute."""


class ModelState(StrEnum):
    loading = "loading"
    ready = "ready"
    failed = "failed"


INLINE_BUDGET_STEPS = 250_000
"""Batches needing fewer node steps than this (about 0.5 ms with the compiled forest) are scored on the event loop.

Handing a batch to a worker thread and back costs more than scoring a small batch: for 64 readings it made a request
3 to 4 times slower. A large batch goes to the thread pool, so it never holds up /health or other requests."""


@dataclass(frozen=True)
class LoadedModel:
    """What serving needs once the model is there: the detector and the drift window fed by its traffic."""

    detector: Detector
    drift: DriftMonitor
    gauges: DriftGauges

    def scores_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` is cheap enough to score without leaving the event loop."""
        if self.detector.scorer is Scorer.sklearn:  # ~10 ms whatever the size: always off the loop
            return False
        forest = self.detector.forest
        return rows * forest.n_trees * forest.max_depth <= INLINE_BUDGET_STEPS


def _kernel_note(scorer: Scorer) -> str:
    """Which compiled kernels score, and a hint when each start compiles them again."""
    if scorer is not Scorer.numba:
        return ""
    if not forest_jit.CACHED:
        return (
            f" {forest_jit.KIND}, compiled code not cached: set NUMBA_CACHE_DIR to a writable folder or build the "
            "ahead-of-time kernels (python -m app.detector.forest_aot) to skip compiling at each start"
        )
    return f" {forest_jit.KIND}"


class ModelHolder:
    """Holds the model once ``load`` has produced it; thread-safe, loaded exactly once."""

    def __init__(
        self,
        loader: Callable[[], Detector],
        *,
        drift_window: int,
        detector: Detector | None = None,
        on_ready: Callable[[], None] | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self._loader = loader
        self._model_dir = model_dir
        self._drift_window = drift_window
        self._on_ready = on_ready
        self._loaded: LoadedModel | None = None
        self._error: str | None = None
        self._done = threading.Event()
        self._closed = threading.Event()
        if detector is not None:
            self._ready(detector)

    @property
    def state(self) -> ModelState:
        if self._loaded is not None:
            return ModelState.ready
        return ModelState.failed if self._error is not None else ModelState.loading

    @property
    def reason(self) -> str:
        """Why the model is not ready, for the 503 answers and ``/health``, which anyone may call: the model folder
        is named ``$MODEL_DIR`` there, not by its path on the host (the log holds the full message)."""
        if self._loaded is not None:
            return "ready"
        if self._error is not None:
            return f"model failed to load: {self.without_model_dir(self._error)} (trying again)"
        return "model is loading"

    def without_model_dir(self, text: str) -> str:
        if self._model_dir is None:
            return text
        for spelling in sorted({str(self._model_dir.resolve()), str(self._model_dir)}, key=len, reverse=True):
            text = text.replace(spelling, "$MODEL_DIR")
        return text

    def load(self) -> None:
        """Run the loader (load or train) until it succeeds; blocking, meant for a worker thread.

        A failure leaves the process alive but unready: ``/health`` answers 503 with the reason and the log holds
        it, which is what an operator looks at when a pod never becomes ready. The loader is then tried again after
        1, 2, 4... seconds (at most ``RETRY_LONGEST_S``), so a model copied in later, or a folder that became
        writable, is picked up without a restart (liveness cannot tell, so nothing else would restart the pod).
        ``wait`` returns after the first attempt; ``close`` ends the retries.
        """
        if self._done.is_set():
            return
        delay = RETRY_FIRST_S
        while not self._attempt():
            self._done.set()  # the first attempt's outcome is known
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, RETRY_LONGEST_S)

    def close(self) -> None:
        """Stop retrying (the worker is shutting down)."""
        self._closed.set()

    def _attempt(self) -> bool:
        try:
            detector = self._loader()
            # Everything allocated so far (modules, the app, the model) lives as long as the process: freeze it out
            # of the garbage collector's sight, so a full collection during traffic scans only what requests left
            # (it made the 99th percentile latency three times the median at 32 connections).
            gc.collect()
            gc.freeze()
            self._ready(detector)
        except GridWatchError as error:
            self._error = str(error)
            logger.error("model unavailable: %s (trying again)", error)
        except Exception as error:
            self._error = repr(error)
            logger.exception("model loading crashed (trying again)")
        return self._loaded is not None

    def _ready(self, detector: Detector) -> None:
        _export_model_info(detector)
        source = "trained" if detector.trained_now else "loaded"
        MODEL_LOAD_DURATION.labels(source).set(detector.load_seconds)
        self._loaded = self._serving(detector)
        self._done.set()
        if self._on_ready is not None:
            self._on_ready()
        logger.info(
            "model %s ready (%s in %.2fs, scored by %s%s)",
            detector.version,
            source,
            detector.load_seconds,
            detector.scorer.value,
            _kernel_note(detector.scorer),
        )

    def version(self) -> str | None:
        """The version serving now, or None while none is loaded."""
        loaded = self._loaded
        return None if loaded is None else loaded.detector.version

    def swap(self, detector: Detector) -> None:
        """Serve ``detector`` from now on (``app.scoring.hot_swap``): one assignment, so a request that already
        took the old model finishes with it and the next one gets the new one; the drift window starts afresh,
        measured against the new model's training statistics."""
        old = self._loaded
        self._loaded = self._serving(detector)
        _export_model_info(detector)
        if old is not None and old.detector.version != detector.version:
            MODEL_INFO.labels(*_info_labels(old.detector)).set(0)
        logger.info("model %s ready (swapped in, scored by %s)", detector.version, detector.scorer.value)

    def _serving(self, detector: Detector) -> LoadedModel:
        """``detector`` with a fresh drift window, measured against its own training statistics."""
        drift = DriftMonitor(detector.features, detector.metadata["feature_stats"], window=self._drift_window)
        return LoadedModel(detector, drift, DriftGauges(detector.features))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (ready or failed); True if it finished in time."""
        return self._done.wait(timeout)

    def get(self) -> LoadedModel:
        if self._loaded is None:
            raise ModelNotReadyError(self.reason)
        return self._loaded


def _info_labels(detector: Detector) -> tuple[str, str]:
    # The scikit-learn version the model was trained with: serving itself runs without scikit-learn.
    return detector.version, detector.metadata.get("versions", {}).get("sklearn", "unknown")


def _export_model_info(detector: Detector) -> None:
    MODEL_INFO.labels(*_info_labels(detector)).set(1)
    trained_at = detector.metadata.get("trained_at")
    try:
        MODEL_TRAINED_TIMESTAMP.set(datetime.fromisoformat(str(trained_at)).timestamp())
    except ValueError:  # a model saved without the time (none of this project's): its age stays unknown
        logger.warning("model %s records no training time (%r): its age is not exported", detector.version, trained_at)


def model_loader(store: ModelStore, scorer: Scorer, *, train_if_missing: bool) -> Callable[[], Detector]:
    """The loader a ``ModelHolder`` retries until it succeeds, for every front door: load the active version of
    ``store`` (or, with ``TRAIN_IF_MISSING`` and no model at all, train one) through ``load_for_serving``.

    A model that was trained and then refused by its own verification would be trained, byte for byte, again at
    every retry (a training child every few seconds, forever): after one such refusal the retries only load,
    picking up a model an operator provides, and keep answering with the refusal until then."""
    refusal: VersionRefusedError | None = None

    def load() -> Detector:
        nonlocal refusal
        train = train_if_missing and refusal is None
        try:
            return load_detector(store, train_if_missing=train, scorer=scorer, warm_up=True)
        except VersionRefusedError as error:
            refusal = error
            raise
        except ModelUnavailableError:
            if refusal is not None:
                raise refusal from None
            raise

    return load
