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
from app.detector.model import Detector
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer
from app.serving.inference import ModelHolder
from app.serving.metrics import MODEL_SWAPS
from app.serving.shadow import ShadowScorer

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

    def __init__(
        self,
        holder: ModelHolder,
        store: ModelStore,
        *,
        interval: float,
        scorer: Scorer,
        shadow: ShadowScorer | None = None,
        shadow_version: str = "",
    ) -> None:
        self._holder = holder
        self._shadow = shadow
        self._shadow_override = shadow_version  # SHADOW_MODEL_VERSION: wins over the pointer's challenger
        self._shadow_refused: str | None = None
        self._store = store
        self._interval = interval
        self._scorer = scorer
        self._closed = threading.Event()
        self._checking = threading.Lock()
        self._refused: tuple[str, str] | None = None  # (version, reason) of the last version that failed to load

    def run(self) -> None:
        """Check once the first model is there, then every interval until ``close``; meant for a daemon thread."""
        self._holder.wait()
        self._guarded_check()
        if self._interval <= 0:
            return
        while not self._closed.wait(self._interval):
            self._guarded_check()

    def _guarded_check(self) -> None:
        if not self._closed.is_set():
            try:
                self.check()
            except Exception:  # never let the watcher die: the next interval tries again
                logger.exception("checking the active model version failed")

    def close(self) -> None:
        self._closed.set()

    def check(self, *, retry_refused: bool = False) -> SwapOutcome:
        """Swap to the active version if it is another one, and follow the challenger; blocking (it may load).

        A version that failed to load is not tried again at every poll, only once the pointer names another one, or
        on ``retry_refused`` (``POST /model/reload``: an operator who repaired the files asks again)."""
        with self._checking:  # the poll and a reload request never load the same version twice
            if retry_refused:
                self._refused = self._shadow_refused = None
            serving = self._holder.version()
            if serving is None:  # still loading at start: the start-up load reads the pointer itself
                return SwapOutcome(serving=None)
            try:
                active, shadow = self._store.active_and_shadow()
            except GridWatchError as error:
                if self._shadow is not None and self._shadow_override:  # a pinned challenger needs no pointer
                    self._follow_shadow(self._shadow, self._shadow_override)
                return self._refuse(serving, "active.json", str(error))
            outcome = self._follow_active(serving, active)
            if self._shadow is not None:
                self._follow_shadow(self._shadow, self._shadow_override or shadow)
            return outcome

    def _load(self, version: str) -> Detector:
        """A version as serving scores with it: verified, on this server's scorer, its kernels warmed up."""
        detector = load_forest(self._store.artifact_of(version))
        detector.use(self._scorer)
        detector.warm_up()
        return detector

    def _follow_shadow(self, shadow: ShadowScorer, wanted: str | None) -> None:
        if wanted == shadow.version or (wanted is not None and wanted == self._shadow_refused):
            return
        if wanted is None:
            shadow.use(None)
            return
        try:
            detector = self._load(wanted)
        except GridWatchError as error:
            self._shadow_refused = wanted
            logger.error("not scoring in the shadow with model %s: %s", wanted, error)
            return
        self._shadow_refused = None
        shadow.use(detector)

    def _follow_active(self, serving: str, active: str | None) -> SwapOutcome:
        if active is None or active == serving:
            self._refused = None
            return SwapOutcome(serving=serving)
        if self._refused is not None and self._refused[0] == active:
            return SwapOutcome(serving=serving, refused=active, reason=self._refused[1])
        try:
            detector = self._load(active)
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
