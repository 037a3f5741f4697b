"""Hot swap: a running worker follows ``MODEL_DIR``'s active version without a restart or a failed request.

Every ``MODEL_POLL_INTERVAL`` seconds (and at once on ``POST /model/reload``) the worker reads ``active.json``. When
it names another version, that version is loaded beside the serving one (verified like any model, kernels warmed
up), then the holder's reference is replaced in one assignment: a request takes the model once when it starts, so
it is scored entirely by one version, and no request waits for a load. A version that fails to load is refused:
the old one keeps serving, the log says why, ``model_swaps_total{result="failed"}`` counts it, and it is not tried
again until the pointer changes. Each worker of a pod follows the pointer on its own, within one interval.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from app.detector.artifact import load_forest
from app.detector.errors import GridWatchError
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer
from app.serving.inference import ModelHolder
from app.serving.metrics import MODEL_SWAPS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapOutcome:
    """What one check found: the version serving after it, the one before, and why a new one was refused."""

    serving: str | None
    previous: str | None = None
    refused: str | None = None
    reason: str | None = None

    @property
    def swapped(self) -> bool:
        return self.previous is not None and self.previous != self.serving


class ModelWatcher:
    """Keeps ``holder`` on the active version of ``store``."""

    def __init__(self, holder: ModelHolder, store: ModelStore, *, interval: float, scorer: Scorer) -> None:
        self._holder = holder
        self._store = store
        self._interval = interval
        self._scorer = scorer
        self._closed = threading.Event()
        self._checking = threading.Lock()
        self._refused: tuple[str, str] | None = None  # (version, reason) of the last version that failed to load

    def run(self) -> None:
        """Check every interval until ``close``; meant for a daemon thread. Does nothing with an interval of 0."""
        if self._interval <= 0:
            return
        while not self._closed.wait(self._interval):
            try:
                self.check()
            except Exception:  # never let the watcher die: the next interval tries again
                logger.exception("checking the active model version failed")

    def close(self) -> None:
        self._closed.set()

    def check(self) -> SwapOutcome:
        """Swap to the active version if it is another one; blocking (it may load a model)."""
        with self._checking:  # the poll and a reload request never load the same version twice
            serving = self._holder.version()
            if serving is None:  # still loading at start: the start-up load reads the pointer itself
                return SwapOutcome(serving=None)
            try:
                active = self._store.active_version()
            except GridWatchError as error:
                return self._refuse(serving, "active.json", str(error))
            if active is None or active == serving:
                self._refused = None
                return SwapOutcome(serving=serving)
            if self._refused is not None and self._refused[0] == active:
                return SwapOutcome(serving=serving, refused=active, reason=self._refused[1])
            try:
                detector = load_forest(self._store.artifact_of(active))
                detector.use(self._scorer)
                detector.warm_up()
            except GridWatchError as error:
                return self._refuse(serving, active, str(error))
            self._holder.swap(detector)
            self._refused = None
            MODEL_SWAPS.labels("swapped").inc()
            logger.info("swapped model %s for %s, the active version of MODEL_DIR", serving, active)
            return SwapOutcome(serving=active, previous=serving)

    def _refuse(self, serving: str, version: str, reason: str) -> SwapOutcome:
        if self._refused != (version, reason):  # counted and logged once, not at every interval
            self._refused = (version, reason)
            MODEL_SWAPS.labels("failed").inc()
            logger.error("not swapping to model %s, keeping %s: %s", version, serving, reason)
        return SwapOutcome(serving=serving, refused=version, reason=reason)
