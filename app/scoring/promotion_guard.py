"""Automatic rollback of a promotion that flags far more (or far less) than the version it replaced (opt-in:
``MODEL_AUTO_ROLLBACK``).

A promotion reaches every replica within ``MODEL_POLL_INTERVAL``; a version that flags what its predecessor passed
then pages the whole grid's operators at once. When a worker swaps to a newly promoted version, it keeps the version
it replaced for a while and scores the same batches with it, on the shadow's thread after the answers are sent
(never in an answer's way, within ``SHADOW_MAX_SHARE``). Once ``MODEL_ROLLBACK_READINGS`` readings have been scored by
both, it compares the two anomaly rates on those identical readings: a grid in real trouble raises both alike, so
only the model's own change can leave the band. The promoted version is rolled back when it flags more than
``MODEL_ROLLBACK_RATIO`` times the replaced one's rate (and over ``MIN_ROLLBACK_RATE``), or less than that rate
divided by the ratio when the replaced one flagged at least ``MIN_REFERENCE_FLAGS`` readings (a version gone
blind).

Safe by construction, the reasons it may be offered at all:
- it only judges a promotion (the pointer's previous version is the one this worker served), never the swap a
  rollback makes, so it cannot undo its own undoing;
- the rollback is conditional (``ModelStore.rollback_promotion``): under the store's lock, only if the promoted
  version is still active and the one it compared with is still the one before. Every replica judges on its own
  traffic; the first to decide rolls back, the others find the pointer moved and do nothing, and nobody ever goes
  further back than the version it compared with;
- a watch that does not reach its readings within ``WATCH_MAX_S`` lets go (counted as undecided) and frees the second
  model's memory; one watch at a time per worker, a later promotion replacing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.detector.model import Detector
from app.scoring.metrics import PROMOTION_CHECKS

logger = logging.getLogger(__name__)

MIN_ROLLBACK_RATE = 0.01
"""A promoted version is never rolled back for flagging under 1 % of readings (GridWatchAnomalyRateJumpAfterPromotion
uses the same floor): five times the designed 0.2 % is still a working detector."""
MIN_REFERENCE_FLAGS = 50
"""The replaced version's flags below which "the promoted one flags too few" is not judged: with fewer, a third of
them is within chance."""
WATCH_MAX_S = 3600.0
"""How long a watch waits for its readings before it lets go, undecided."""


@dataclass
class _Watch:
    promoted: str
    replaced: Detector
    started: float
    readings: int = 0
    promoted_flags: int = 0
    replaced_flags: int = 0


@dataclass(frozen=True)
class Verdict:
    """What one watch concluded, for the log and the tests."""

    promoted: str
    replaced: str
    readings: int
    promoted_rate: float
    replaced_rate: float
    outcome: str


class PromotionGuard:
    """Judges each promotion this worker swaps to against the version it replaced, on the same readings."""

    def __init__(
        self,
        *,
        readings: int,
        ratio: float,
        rollback: Callable[[str, str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if readings < 1 or ratio <= 1.0:
            raise ValueError(f"a guard needs readings >= 1 and a ratio > 1, got {readings} and {ratio}")
        self._needed = readings
        self._ratio = ratio
        self._rollback = rollback
        self._clock = clock
        self._watch: _Watch | None = None
        self._lock = threading.Lock()
        self.verdicts: list[Verdict] = []

    @property
    def watching(self) -> str | None:
        """The promoted version being judged, if any."""
        watch = self._watch
        return None if watch is None else watch.promoted

    def watch(self, promoted: str, replaced: Detector) -> None:
        """Judge ``promoted`` against ``replaced`` (the detector it took over from) from the next batch on."""
        with self._lock:
            self._watch = _Watch(promoted, replaced, self._clock())
        logger.info(
            "judging the promotion of model %s against %s on the next %d readings",
            promoted,
            replaced.version,
            self._needed,
        )

    def observe(self, X: np.ndarray, flags: np.ndarray, version: str | None) -> None:
        """Score ``X`` with the replaced version beside the ``flags`` the serving ``version`` gave; decide once
        enough readings are in. On the shadow's thread, never on a request's."""
        watch = self._watch
        if watch is None or self.expire():
            return
        if version != watch.promoted:
            return  # scored by the version before the swap (queued meanwhile), or after another one
        replaced_flags, _ = watch.replaced.predict_batch(X)
        watch.readings += X.shape[0]
        watch.promoted_flags += int(np.count_nonzero(flags))
        watch.replaced_flags += int(np.count_nonzero(replaced_flags))
        if watch.readings < self._needed:
            return
        promoted_rate = watch.promoted_flags / watch.readings
        replaced_rate = watch.replaced_flags / watch.readings
        too_many = promoted_rate > max(self._ratio * replaced_rate, MIN_ROLLBACK_RATE)
        too_few = watch.replaced_flags >= MIN_REFERENCE_FLAGS and promoted_rate < replaced_rate / self._ratio
        if not (too_many or too_few):
            self._conclude(watch, "held")
        elif self._rollback(watch.promoted, watch.replaced.version):
            self._conclude(watch, "rolled_back")
        else:
            self._conclude(watch, "superseded")

    def expire(self) -> bool:
        """Let go of a watch older than WATCH_MAX_S (undecided); True if it did. The model watcher calls it at
        each poll, so a promotion followed by no traffic does not keep the second model in memory."""
        watch = self._watch
        if watch is None or self._clock() - watch.started <= WATCH_MAX_S:
            return False
        self._conclude(watch, "undecided")
        return True

    def _conclude(self, watch: _Watch, outcome: str) -> None:
        with self._lock:
            if self._watch is not watch:  # a later promotion replaced this watch meanwhile
                return
            self._watch = None  # frees the replaced version's memory
        readings = max(watch.readings, 1)
        verdict = Verdict(
            watch.promoted,
            watch.replaced.version,
            watch.readings,
            watch.promoted_flags / readings,
            watch.replaced_flags / readings,
            outcome,
        )
        self.verdicts.append(verdict)
        PROMOTION_CHECKS.labels(outcome).inc()
        log = logger.warning if outcome in {"rolled_back", "superseded"} else logger.info
        log(
            "promotion of model %s %s: it flagged %.2f%% of %d readings, %s flagged %.2f%% of the same readings "
            "(band: x%.1f)",
            verdict.promoted,
            {
                "held": "holds",
                "rolled_back": "rolled back",
                "superseded": "out of band, but the pointer moved on",
                "undecided": "not judged: too few readings within the hour",
            }[outcome],
            100 * verdict.promoted_rate,
            verdict.readings,
            verdict.replaced,
            100 * verdict.replaced_rate,
            self._ratio,
        )
