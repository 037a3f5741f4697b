"""Input drift and data quality: statistics of the recent readings compared with the training data.

The monitor keeps the last ``window`` readings (``DRIFT_WINDOW``, default 1,000) and their flags in a ring buffer
and computes, per feature, the window mean and a drift score, plus the rolling anomaly ratio. Statistics only:
``app.scoring.metrics.DriftGauges`` publishes them.

**The drift score** is the standardised mean shift ``|mean(window) - mean(training)| / std(training)``: how many
training standard deviations the recent average has moved, chosen over the standard-error z-score and PSI because
the window covers minutes of a daily cycle that the training set covers whole. It stays below
``NORMAL_MAX_SCORE`` on normal simulated traffic at every hour of the day, hence ``DRIFT_THRESHOLD = 3``, which
the alert rules use. What it catches and what it cannot see, with the measurements, is in docs/monitoring.md
("Drift score"); ``tests/detector/test_drift.py`` holds those figures.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DRIFT_THRESHOLD = 3.0
"""Drift score above which the input is considered drifted (used by the alert rule ``GridWatchInputDrift``)."""
NORMAL_MAX_SCORE = 2.2
"""Highest drift score measured on normal simulated readings over a whole day (1,000-reading windows)."""


@dataclass(frozen=True)
class DriftSnapshot:
    readings: int
    means: dict[str, float]
    scores: dict[str, float]
    anomaly_ratio: float


INCREMENTAL_LIMIT = 1e9
"""Largest magnitude summed incrementally. No grid sensor reads a billion volts, amperes or hertz; beyond this a
running sum could round the ordinary readings away and a later subtraction would leave garbage (catastrophic
cancellation), so windows holding such a value are summed exactly instead."""


class DriftMonitor:
    """A ring buffer of the last ``window`` readings and flags; thread-safe (large batches score in a thread pool).

    The window's sums are kept up to date incrementally (add the new rows, subtract the ones they overwrite), so
    an update costs O(batch) rather than O(window); they are recomputed exactly each time the buffer wraps, so
    floating-point error cannot accumulate over a long run.

    Readings beyond ``INCREMENTAL_LIMIT`` (1e308 is a finite JSON number) switch the monitor to exact sums, O(window)
    per update, until the window holds none of them again. Such a window's mean may overflow: it is reported as
    inf, truthfully beyond range, and is right again as soon as those readings have left the window.

    Where the statistics are only read now and then (a scrape every 15 s, not a batch every 0.3 ms), ``add`` only
    writes the batch into the ring and ``snapshot`` sums the window exactly when it is read
    (``app.scoring.metrics.DriftGauges``).
    """

    def __init__(
        self, features: Sequence[str], feature_stats: Mapping[str, Mapping[str, Any]], window: int = 1000
    ) -> None:
        self.features = tuple(features)
        self.window = window
        self._train_mean = np.array([feature_stats[name]["mean"] for name in self.features], dtype=np.float64)
        self._train_std = np.array([feature_stats[name]["std"] for name in self.features], dtype=np.float64)
        self._values = np.zeros((window, len(self.features)), dtype=np.float64)
        self._flags = np.zeros(window, dtype=bool)
        self._sums = np.zeros(len(self.features), dtype=np.float64)
        self._flagged = 0
        self._next = 0
        self._count = 0
        self._exact = False
        self._stale = False
        """The sums are not kept up to date (``add``): ``update`` and ``snapshot`` re-sum the window first."""
        self._lock = threading.Lock()

    def _resum(self) -> None:
        self._sums = self._values[: self._count].sum(axis=0)
        self._flagged = int(np.count_nonzero(self._flags[: self._count]))

    def _store(self, X: np.ndarray, flags: np.ndarray, *, incremental: bool) -> bool:
        """Write the batch into the ring; returns whether the buffer wrapped. Updates the sums if ``incremental``."""
        n = X.shape[0]
        if n >= self.window:  # the batch alone fills the window: keep its newest rows
            self._values[:] = X[-self.window :]
            self._flags[:] = flags[-self.window :]
            self._next, self._count = 0, self.window
            return True
        # At most two contiguous runs of the ring (to its end, then from its start): slices, views without copies,
        # where an index array would gather and scatter row by row.
        first = min(n, self.window - self._next)
        runs = [(slice(self._next, self._next + first), slice(0, first))]
        if first < n:
            runs.append((slice(0, n - first), slice(first, n)))
        if incremental and self._count == self.window:  # full: the new rows overwrite the oldest
            for ring, _ in runs:
                self._sums -= self._values[ring].sum(axis=0)
                self._flagged -= int(np.count_nonzero(self._flags[ring]))
        for ring, batch in runs:
            self._values[ring] = X[batch]
            self._flags[ring] = flags[batch]
        if incremental:
            self._sums += X.sum(axis=0)
            self._flagged += int(np.count_nonzero(flags))
        # A batch that runs past the end of a never-full buffer overwrites its oldest rows without subtracting
        # them above; the exact re-sum on wrapping corrects that in the same update.
        wrapped = self._next + n >= self.window
        self._next = (self._next + n) % self.window
        self._count = min(self.window, self._count + n)
        return wrapped

    def add(self, X: np.ndarray, flags: np.ndarray) -> None:
        """Add a scored batch (rows in ``features`` order) without computing the window's statistics: a copy into
        the ring, for a caller that reads them with ``snapshot`` only when asked."""
        with self._lock:
            self._store(X, flags, incremental=False)
            self._stale = True

    def snapshot(self) -> DriftSnapshot | None:
        """The statistics of the window, summed exactly now; None while it is empty."""
        with self._lock, np.errstate(over="ignore", invalid="ignore"):
            if not self._count:
                return None
            self._resum()
            self._stale = False
            return self._statistics()

    def update(self, X: np.ndarray, flags: np.ndarray) -> DriftSnapshot:
        """Add a scored batch (rows in ``features`` order) and return the statistics of the new window."""
        with self._lock, np.errstate(over="ignore", invalid="ignore"):
            if self._stale:  # batches were added without their sums (or checks): re-sum, and check what they hold
                self._resum()
                self._exact = not (np.abs(self._values[: self._count]) < INCREMENTAL_LIMIT).all()
                self._stale = False
            if not (X.min() > -INCREMENTAL_LIMIT and X.max() < INCREMENTAL_LIMIT):  # two reductions, no temporaries
                self._exact = True
            wrapped = self._store(X, flags, incremental=not self._exact)
            if self._exact or wrapped:
                self._resum()
            if self._exact:  # leave exact mode once the window holds no huge reading any more
                self._exact = not (np.abs(self._values[: self._count]) < INCREMENTAL_LIMIT).all()
            return self._statistics()

    def _statistics(self) -> DriftSnapshot:
        """Of the window as summed (lock held, over/invalid ignored)."""
        count = self._count
        means = self._sums / count
        ratio = self._flagged / count
        scores = np.abs(means - self._train_mean) / self._train_std
        return DriftSnapshot(
            readings=count,
            means=dict(zip(self.features, means.tolist(), strict=True)),
            scores=dict(zip(self.features, scores.tolist(), strict=True)),
            anomaly_ratio=ratio,
        )
