"""Hot swap: a running worker follows ``MODEL_DIR``'s active version without a restart or a failed request.

Every ``MODEL_POLL_INTERVAL`` seconds (and at once on ``POST /model/reload``) the worker reads ``active.json``. When
it names another version, that version is loaded beside the serving one, exactly as start-up loads a model
(``app.detector.loading.load_for_serving``: verified against its folder, on this server's scorer, kernels warmed
up), then the holder's reference is replaced in one assignment: a request takes the model once when it starts, so
it is scored entirely by one version, and no request waits for a load.

A version that fails to load is refused: the old one keeps serving, the log says why once,
``model_swaps_total{result="failed"}`` counts it, and ``model_refusing_active`` is 1 while it lasts (a restarted
pod would fail to start on it, so pods may differ: the metric makes that skew visible). A refused version is read
again only when its files change (size, modification time or inode of any of them): a repaired version is picked
up at the next poll, by every worker, and a damaged one costs three ``stat`` calls per poll, however often
``/model/reload`` is called. The challenger (``models shadow``) is followed the same way, and stops scoring as
soon as it is gone or damaged. Each worker of a pod follows the pointer on its own, within one interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.detector.errors import GridWatchError
from app.detector.loading import load_for_serving
from app.detector.model import Detector
from app.detector.registry import Fingerprint, ModelStore
from app.detector.scorer import Scorer
from app.scoring import metrics
from app.scoring.holder import ModelHolder
from app.scoring.metrics import MODEL_REFUSING_ACTIVE, MODEL_SWAPS
from app.scoring.shadow import ShadowScorer

logger = logging.getLogger(__name__)

POINTER_FILE = "active.json"
STORE_USAGE_INTERVAL_S = 30.0
"""How often the model store's size and the room left for it are measured for their gauges."""


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


@dataclass(frozen=True)
class Refusal:
    """A version that did not load, as its files were then: it is not read again until they change."""

    version: str
    fingerprint: Fingerprint
    reason: str


class ModelWatcher:
    """Keeps ``holder`` on the active version of ``store``, and ``shadow`` on its challenger."""

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
        self._store = store
        self._interval = interval
        self._scorer = scorer
        self._closed = threading.Event()
        self._checking = threading.Lock()
        self._refused: Refusal | None = None  # the active version (or pointer) that failed to load
        self._shadow_refused: Refusal | None = None
        self._shadow_files: Fingerprint | None = None  # the loaded challenger's files when it was loaded
        self._usage_at = float("-inf")

    def run(self) -> None:
        """Check once the first model is there, then every interval until ``close``; meant for a daemon thread.
        With polling off (interval 0) the store's usage is still measured, every STORE_USAGE_INTERVAL_S."""
        self._holder.wait()
        self._guarded_check()
        interval = self._interval if self._interval > 0 else STORE_USAGE_INTERVAL_S
        while not self._closed.wait(interval):
            if self._interval > 0:
                self._guarded_check()
            else:
                self._record_usage()

    def _guarded_check(self) -> None:
        if not self._closed.is_set():
            try:
                self.check()
            except Exception:  # never let the watcher die: the next interval tries again
                logger.exception("checking the active model version failed")
            self._record_usage()
            if self._shadow is not None and self._shadow.guard is not None:
                self._shadow.guard.expire()

    def _record_usage(self) -> None:
        """The store's versions, bytes and room, at most every STORE_USAGE_INTERVAL_S (a few ``stat`` calls)."""
        now = time.monotonic()
        if now - self._usage_at < STORE_USAGE_INTERVAL_S:
            return
        self._usage_at = now
        try:
            usage = self._store.usage()
        except OSError as error:  # gauges only: the next interval tries again
            logger.warning("could not measure the model store (%s)", error)
            return
        metrics.MODEL_STORE_VERSIONS.set(usage.versions)
        metrics.MODEL_STORE_BYTES.set(usage.bytes)
        metrics.MODEL_STORE_NEWEST_VERSION_BYTES.set(usage.newest_bytes)
        metrics.MODEL_STORE_FILESYSTEM_SIZE_BYTES.set(usage.filesystem_size_bytes)
        metrics.MODEL_STORE_FILESYSTEM_AVAIL_BYTES.set(usage.filesystem_avail_bytes)

    def close(self) -> None:
        self._closed.set()

    def check(self) -> SwapOutcome:
        """Swap to the active version if it is another one, and follow the challenger; blocking (it may load).

        One check at a time per worker: the poll and reload requests never load the same version twice."""
        with self._checking:
            serving = self._holder.version()
            if serving is None:  # still loading at start: the start-up load reads the pointer itself
                return SwapOutcome(serving=None)
            try:
                active, shadow = self._store.active_and_shadow()
            except GridWatchError as error:
                if self._shadow is not None and self._shadow_override:  # a pinned challenger needs no pointer
                    self._follow_shadow(self._shadow, self._shadow_override)
                refusal = Refusal(POINTER_FILE, self._store.pointer_fingerprint(), str(error))
                return self._refuse(serving, refusal)
            outcome = self._follow_active(serving, active)
            if self._shadow is not None:
                self._follow_shadow(self._shadow, self._shadow_override or shadow)
            return outcome

    def _follow_active(self, serving: str, active: str | None) -> SwapOutcome:
        if active is None or active == serving:
            self._accept()
            return SwapOutcome(serving=serving)
        files = self._store.fingerprint(active)
        known = self._refused
        if known is not None and (known.version, known.fingerprint) == (active, files):
            return SwapOutcome(serving=serving, refused=active, reason=known.reason)
        try:
            detector = load_for_serving(self._store, active, self._scorer)
        except GridWatchError as error:
            return self._refuse(serving, Refusal(active, files, str(error)))
        replaced = self._holder.get().detector
        self._holder.swap(detector)
        self._accept()
        MODEL_SWAPS.labels("swapped").inc()
        logger.info("swapped model %s for %s, the active version of MODEL_DIR", serving, active)
        self._guard_promotion(active, replaced)
        return SwapOutcome(serving=active, previous=serving)

    def _guard_promotion(self, active: str, replaced: Detector) -> None:
        """Have the guard (MODEL_AUTO_ROLLBACK) judge this swap if it is a promotion over what this worker served:
        the pointer's previous version is the replaced one. A rollback's swap is never judged."""
        guard = self._shadow.guard if self._shadow is not None else None
        if guard is None:
            return
        try:
            pointer = self._store.pointer() or {}
        except GridWatchError:
            return
        if pointer.get("version") == active and list(pointer.get("previous", []))[:1] == [replaced.version]:
            guard.watch(active, replaced)

    def _accept(self) -> None:
        if self._refused is not None:
            logger.info("serving MODEL_DIR's active version again")
        self._refused = None
        MODEL_REFUSING_ACTIVE.set(0)

    def _refuse(self, serving: str, refusal: Refusal) -> SwapOutcome:
        if self._refused != refusal:  # counted and logged once per version and state of its files
            self._refused = refusal
            MODEL_SWAPS.labels("failed").inc()
            logger.error("not swapping to model %s, keeping %s: %s", refusal.version, serving, refusal.reason)
        MODEL_REFUSING_ACTIVE.set(1)
        return SwapOutcome(serving=serving, refused=refusal.version, reason=refusal.reason)

    def _follow_shadow(self, shadow: ShadowScorer, wanted: str | None) -> None:
        if wanted is None:
            if shadow.version is not None:
                shadow.use(None)
            self._shadow_files = self._shadow_refused = None
            return
        files = self._store.fingerprint(wanted)
        if wanted == shadow.version and files == self._shadow_files:
            return  # the challenger scoring is the one wanted, its files untouched
        known = self._shadow_refused
        if known is not None and (known.version, known.fingerprint) == (wanted, files):
            return
        try:
            detector = load_for_serving(self._store, wanted, self._scorer)
        except GridWatchError as error:
            self._shadow_refused = Refusal(wanted, files, str(error))
            self._shadow_files = None
            if shadow.version is not None:
                shadow.use(None)  # a challenger that is gone or damaged no longer scores, nor does the one before it
            logger.error("not scoring in the shadow with model %s: %s", wanted, error)
            return
        self._shadow_refused = None
        self._shadow_files = files
        shadow.use(detector)


class SharedCheck:
    """``ModelWatcher.check`` for many concurrent callers on one event loop: one check in flight, and every caller
    arriving meanwhile gets its outcome (``POST /model/reload``).

    Without it, 64 clients calling reload held 64 threads of the request pool waiting on the watcher's lock (the
    pool parses big bodies too) and each re-ran the check once it got the lock.
    """

    def __init__(self, check: Callable[[], SwapOutcome]) -> None:
        self._check = check
        self._running: asyncio.Future[SwapOutcome] | None = None

    async def __call__(self) -> SwapOutcome:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._check))
        return await asyncio.shield(self._running)  # a caller that leaves does not cancel the others' check
