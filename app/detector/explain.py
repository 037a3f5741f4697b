"""Why a reading was flagged: per feature, how much it isolated the reading, where its value sits against the
training data, and whether it breaks the supply standard's limits.

The on-call engineer looking at a flagged feeder needs to know which quantity was out of line and how far: a voltage
sag and a frequency excursion call for different people. Each explanation gives, per feature:

* ``contribution``: the forest's own answer. Each tree credits the feature of the split that isolated the reading
  with ``1/h - 1/depth`` (``app.detector.forest_kernels.local_diffi``); the credits, summed over the trees, are
  normalised to sum 1. A reading that no tree isolated before its deepest level has no credit at all: all zeros and
  no top feature.
* ``value``, the training ``median``, a robust ``spread`` ((q90 - q10) / 2.563, the standard deviation for normal
  data, untouched by the faults in the training file) and ``band`` (the training's 1st to 99th percentile), from the
  feature statistics stored with the model; ``z`` = (value - median) / spread.
* ``limits`` and ``outside_limits`` where a physical yardstick applies: EN 50160's supply voltage within +-10 % of
  nominal and frequency within +-1 % of nominal (for 99.5 % of the year on interconnected systems), for a 230 V /
  50 Hz feeder by default (``NOMINAL_VOLTAGE``, ``NOMINAL_FREQUENCY``). Current has none.

This module knows nothing of HTTP: the service turns an ``Explanations`` into JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

VOLTAGE_TOLERANCE = 0.10
"""EN 50160: supply voltage within +-10 % of the nominal voltage."""
FREQUENCY_TOLERANCE = 0.01
"""EN 50160: 50 Hz +-1 % on interconnected systems (for 99.5 % of a year)."""
NORMAL_SPREAD = 2.5631031310892007
"""q90 - q10 of a standard normal distribution: dividing by it makes the spread a standard deviation."""


@dataclass(frozen=True)
class SupplyStandard:
    """The nominal supply the physical limits are taken from."""

    nominal_voltage: float = 230.0
    nominal_frequency: float = 50.0

    def limits(self) -> dict[str, tuple[float, float]]:
        """Per feature with a physical yardstick, the (low, high) values EN 50160 allows."""
        voltage, frequency = self.nominal_voltage, self.nominal_frequency
        return {  # rounded: 230 V * 1.1 is 253.00000000000003 in binary floating point
            "voltage": (round(voltage * (1 - VOLTAGE_TOLERANCE), 9), round(voltage * (1 + VOLTAGE_TOLERANCE), 9)),
            "frequency": (
                round(frequency * (1 - FREQUENCY_TOLERANCE), 9),
                round(frequency * (1 + FREQUENCY_TOLERANCE), 9),
            ),
        }


@dataclass(frozen=True)
class TrainingBand:
    """Where one feature's training values lay: their median, a robust spread and the 1st-99th percentile band."""

    median: float
    spread: float
    low: float
    high: float

    @classmethod
    def of(cls, stats: Mapping[str, Any]) -> TrainingBand:
        """From one feature's stored statistics; models stored without quantiles fall back to mean, standard
        deviation and min-max."""
        quantiles = stats.get("quantiles") or {}
        try:
            q = {float(key): float(value) for key, value in quantiles.items()}
            spread = (q[0.9] - q[0.1]) / NORMAL_SPREAD
            if spread > 0:
                return cls(median=q[0.5], spread=spread, low=q[0.01], high=q[0.99])
        except (KeyError, TypeError, ValueError):
            pass
        return cls(
            median=float(stats["mean"]), spread=float(stats["std"]), low=float(stats["min"]), high=float(stats["max"])
        )


@dataclass(frozen=True)
class Explanations:
    """The explanations of a batch, as arrays (rows in input order, columns in ``features`` order)."""

    features: tuple[str, ...]
    contributions: np.ndarray
    """(n, k), each row summing to 1, or all 0 where no tree isolated the reading."""
    values: np.ndarray
    z: np.ndarray
    outside_limits: np.ndarray
    """(n, k) booleans; meaningful only for the features in ``limits``."""
    top: np.ndarray
    """(n,) index of the top contributing feature, -1 where there is none."""
    bands: tuple[TrainingBand, ...]
    limits: tuple[tuple[float, float] | None, ...]

    def top_feature(self, row: int) -> str | None:
        index = int(self.top[row])
        return self.features[index] if index >= 0 else None


class Explainer:
    """Explains batches for one model's feature statistics and one supply standard; immutable, thread-safe."""

    def __init__(self, features: tuple[str, ...], feature_stats: Mapping[str, Any], standard: SupplyStandard):
        self.features = features
        self.bands = tuple(TrainingBand.of(feature_stats[name]) for name in features)
        physical = standard.limits()
        self.limits = tuple(physical.get(name) for name in features)
        self._median = np.array([band.median for band in self.bands])
        self._spread = np.array([band.spread for band in self.bands])
        self._low = np.array([-np.inf if limit is None else limit[0] for limit in self.limits])
        self._high = np.array([np.inf if limit is None else limit[1] for limit in self.limits])

    def explain(self, X: np.ndarray, credits: np.ndarray) -> Explanations:
        """``X``'s explanations, given the forest's ``credits`` for it (``Detector.isolation_credits``)."""
        shares = contributions(credits)
        return Explanations(
            features=self.features,
            contributions=shares,
            values=X,
            z=(X - self._median) / self._spread,
            outside_limits=(self._low > X) | (self._high < X),
            top=np.where(shares.any(axis=1), np.argmax(credits, axis=1), -1),
            bands=self.bands,
            limits=self.limits,
        )


def contributions(credits: np.ndarray) -> np.ndarray:
    """Each row of the forest's isolation credits normalised to sum 1 (all 0 where no tree isolated the reading)."""
    total = credits.sum(axis=1, keepdims=True)
    return np.divide(credits, total, out=np.zeros_like(credits), where=total > 0)
