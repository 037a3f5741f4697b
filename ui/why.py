"""Why a reading was flagged, as the UI shows it: the backend's explanations read leniently, the columns the charts'
tooltips carry, and the last flagged readings behind the why-panel.

The backend explains a reading on ``POST /predict?explain=true`` (docs/api.md): per feature its ``contribution``
(the forest's credit share; the three sum to 1, or are all 0 with no ``top_feature`` when no tree isolated the
reading early), its ``value``, the training ``median``, ``spread`` (robust standard deviation) and ``band`` (1st to
99th percentile), the robust ``z``, and EN 50160's ``limits`` with ``outside_limits`` (null for current). The UI
asks only for the readings the model flagged (``ui.live``), and keeps working when a backend sends none: an older
backend ignores the parameter, and an explanation it cannot read is one it does not have (``None``), never a failed
batch. Plain Python and pandas: the UI image has neither scikit-learn nor numba, so nothing here imports the
backend's ``app.detector.explain``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

FEATURES = ("voltage", "current", "frequency")
"""The features the charts draw, in their order (an explanation names its own, in the model's order)."""
UNITS = {"voltage": "V", "current": "A", "frequency": "Hz"}

NO_TOP = "none (no tree isolated it early)"
"""The top feature shown when the backend credits no feature (all contributions 0)."""
UNAVAILABLE = "unavailable"
"""The top feature shown for a flagged reading that came without an explanation."""
NOT_FLAGGED = "not flagged"
"""The top feature shown for a reading the model did not flag (a missed anomaly): only flagged ones are explained."""


@dataclass(frozen=True)
class FeatureWhy:
    """One feature of one reading's explanation."""

    name: str
    contribution: float
    """Share of the forest's credit, 0 to 1."""
    value: float
    median: float
    spread: float
    band: tuple[float, float]
    """The training's 1st to 99th percentile."""
    z: float
    """(value - median) / spread."""
    limits: tuple[float, float] | None
    """EN 50160's allowed range, None where no physical limit applies (current)."""
    outside_limits: bool | None

    @property
    def in_band(self) -> bool:
        return self.band[0] <= self.value <= self.band[1]


@dataclass(frozen=True)
class Explanation:
    """Why the model scored one reading as it did."""

    top_feature: str | None
    features: tuple[FeatureWhy, ...]

    def feature(self, name: str) -> FeatureWhy | None:
        return next((f for f in self.features if f.name == name), None)


def parse_explanation(data: Any) -> Explanation | None:
    """The explanation of one prediction, or None when it has none or one the UI cannot read (another backend's,
    a truncated one): the reading is then shown as unexplained, and its score still counts."""
    if not isinstance(data, Mapping):
        return None
    try:
        features = tuple(_feature(f) for f in data["features"])
        top = data.get("top_feature")
    except (KeyError, TypeError, ValueError):
        return None
    names = {f.name for f in features}
    if not features or len(names) != len(features) or (top is not None and top not in names):
        return None
    return Explanation(top_feature=top, features=features)


def _feature(data: Mapping[str, Any]) -> FeatureWhy:
    low, high = (float(v) for v in data["band"])
    limits = data.get("limits")
    outside = data.get("outside_limits")
    return FeatureWhy(
        name=str(data["name"]),
        contribution=float(data["contribution"]),
        value=float(data["value"]),
        median=float(data["median"]),
        spread=float(data["spread"]),
        band=(low, high),
        z=float(data["z"]),
        limits=None if limits is None else _pair(limits),
        outside_limits=None if outside is None else bool(outside),
    )


def _pair(values: Iterable[Any]) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    return low, high


# --- what the charts' tooltips carry ------------------------------------------------------------------------------


def share_column(feature: str) -> str:
    return f"share_{feature}"


def band_column(feature: str) -> str:
    return f"band_{feature}"


def z_column(feature: str) -> str:
    return f"z_{feature}"


def limits_column(feature: str) -> str:
    return f"limits_{feature}"


WHY_COLUMNS = ["top_feature"] + [
    column(feature) for feature in FEATURES for column in (share_column, band_column, z_column, limits_column)
]
"""The columns ``why_frame`` adds to the live view's rows, in order."""


def why_frame(flags: Sequence[bool], explanations: Mapping[int, Explanation] | None) -> pd.DataFrame:
    """The tooltip columns of one scored batch, one row per reading, as text ready to show.

    ``explanations`` maps a reading's position in the batch to its explanation (the flagged ones the backend
    explained). Only flagged readings are explained: the others say ``not flagged``, and a flagged reading without
    an explanation says ``unavailable``. Text, not numbers, so an empty cell shows as nothing rather than a 0 %.
    """
    explained = explanations or {}
    rows = []
    for index, flagged in enumerate(flags):
        explanation = explained.get(index)
        if not flagged:
            rows.append(_empty_row(NOT_FLAGGED))
        elif explanation is None:
            rows.append(_empty_row(UNAVAILABLE))
        else:
            rows.append(_row(explanation))
    return pd.DataFrame(rows, columns=WHY_COLUMNS)


def _empty_row(top: str) -> dict[str, str]:
    return dict.fromkeys(WHY_COLUMNS, "") | {"top_feature": top}


def _row(explanation: Explanation) -> dict[str, str]:
    row = _empty_row(explanation.top_feature or NO_TOP)
    for feature in FEATURES:
        why = explanation.feature(feature)
        if why is None:
            continue
        row[share_column(feature)] = f"{100 * why.contribution:.0f} %"
        row[band_column(feature)] = band_text(why)
        row[z_column(feature)] = f"{why.z:+.1f}"
        row[limits_column(feature)] = limits_text(why)
    return row


def band_text(why: FeatureWhy) -> str:
    """Where the value sits against its training band, e.g. ``above 227.45 to 232.94 V``."""
    unit = UNITS.get(why.name, "")
    low, high = why.band
    place = "inside" if why.in_band else ("below" if why.value < low else "above")
    return f"{place} {low:g} to {high:g} {unit}".rstrip()


def limits_text(why: FeatureWhy) -> str:
    """The EN 50160 verdict, e.g. ``OUTSIDE 207 to 253 V``, or ``none`` where no physical limit applies."""
    if why.limits is None:
        return "none"
    unit = UNITS.get(why.name, "")
    verdict = "OUTSIDE" if why.outside_limits else "inside"
    return f"{verdict} {why.limits[0]:g} to {why.limits[1]:g} {unit}".rstrip()


# --- the last flagged readings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlaggedReading:
    """One flagged reading as the why-panel shows it: identified by its simulated time, as the charts do."""

    time: pd.Timestamp
    score: float
    outcome: str
    kind: str
    explanation: Explanation

    @property
    def label(self) -> str:
        """How the panel names it: the reading's time (UTC), the only identity a simulated reading has."""
        return self.time.strftime("%H:%M:%S")


class FlaggedLog:
    """The last ``capacity`` flagged readings that came with an explanation, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._readings: deque[FlaggedReading] = deque(maxlen=capacity)

    def extend(self, readings: Iterable[FlaggedReading]) -> None:
        self._readings.extend(readings)

    def clear(self) -> None:
        self._readings.clear()

    def __len__(self) -> int:
        return len(self._readings)

    @property
    def readings(self) -> list[FlaggedReading]:
        return list(self._readings)

    def contributions_frame(self) -> pd.DataFrame:
        """One row per reading and feature, for the stacked bar chart: ``reading`` (its label), ``time``,
        ``feature``, ``contribution`` (0 to 1), ``value``, ``z`` and ``top_feature``."""
        rows = [
            {
                "reading": reading.label,
                "time": reading.time,
                "feature": why.name,
                "contribution": why.contribution,
                "value": why.value,
                "z": why.z,
                "top_feature": reading.explanation.top_feature or NO_TOP,
            }
            for reading in self._readings
            for why in reading.explanation.features
        ]
        return pd.DataFrame(rows, columns=["reading", "time", "feature", "contribution", "value", "z", "top_feature"])


def details_frame(explanation: Explanation) -> pd.DataFrame:
    """One reading's explanation as the panel's table: per feature, share, value, z, the training band, the
    physical limits, and the training median last (a narrow panel cuts the last columns first)."""
    return pd.DataFrame(
        [
            {
                "feature": why.name,
                "contribution": why.contribution,
                "value": why.value,
                "z": why.z,
                "training band (1st-99th)": f"{why.band[0]:g} to {why.band[1]:g}",
                "EN 50160": limits_text(why),
                "median": why.median,
            }
            for why in explanation.features
        ]
    )


def headline(reading: FlaggedReading) -> str:
    """One sentence for the selected reading, e.g. ``voltage: 72 % of the credit, 280 V, z +42.2 (above its band),
    outside EN 50160``."""
    explanation = reading.explanation
    top = explanation.feature(explanation.top_feature) if explanation.top_feature else None
    if top is None:
        return "No tree isolated this reading early: no feature gets credit. The values against their bands say more."
    unit = UNITS.get(top.name, "")
    text = (
        f"**{top.name}** has {100 * top.contribution:.0f} % of the credit: {top.value:g} {unit}, "
        f"z {top.z:+.1f}, {band_text(top).split(' ', 1)[0]} its training band"
    )
    if top.outside_limits:
        text += ", outside the EN 50160 limits"
    return text + "."
