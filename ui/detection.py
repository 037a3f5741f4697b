"""How well the detector does on what was streamed: the simulator knows the truth, the backend gives the verdict.

Every scored reading falls in one cell of the confusion matrix: an injected anomaly that was flagged is
*detected* (true positive), one that was not is *missed* (false negative), a normal reading that was flagged is a
*false alarm* (false positive), and the rest are *normal* (true negative). The counts are cumulative since the
last reset, independent of the charts' window. Precision and recall are None until they are defined (no flag yet,
no anomaly injected yet), so the page shows a dash instead of a misleading 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd


class Outcome(StrEnum):
    """One reading's cell of the confusion matrix, named for what a person sees on the chart."""

    detected = "detected"
    missed = "missed"
    false_alarm = "false alarm"
    normal = "normal"


def outcomes(truth: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """The ``Outcome`` value of every reading, from ground truth and the model's flags."""
    truth = np.asarray(truth, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    if truth.shape != flagged.shape:
        raise ValueError(f"truth and flags differ in shape: {truth.shape} != {flagged.shape}")
    labels = np.full(truth.shape, Outcome.normal.value, dtype=object)
    labels[truth & flagged] = Outcome.detected.value
    labels[truth & ~flagged] = Outcome.missed.value
    labels[~truth & flagged] = Outcome.false_alarm.value
    return labels


@dataclass
class KindCount:
    injected: int = 0
    detected: int = 0


@dataclass
class DetectionStats:
    """Cumulative confusion counts, plus per injected kind how many were detected."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0
    by_kind: dict[str, KindCount] = field(default_factory=dict)

    def update(self, truth: np.ndarray, flagged: np.ndarray, kinds: Sequence[str | None]) -> None:
        """Count one scored batch."""
        truth = np.asarray(truth, dtype=bool)
        flagged = np.asarray(flagged, dtype=bool)
        if not len(truth) == len(flagged) == len(kinds):
            raise ValueError(f"lengths differ: {len(truth)} truths, {len(flagged)} flags, {len(kinds)} kinds")
        self.true_positives += int(np.sum(truth & flagged))
        self.false_positives += int(np.sum(~truth & flagged))
        self.false_negatives += int(np.sum(truth & ~flagged))
        self.true_negatives += int(np.sum(~truth & ~flagged))
        for kind, is_anomaly, is_flagged in zip(kinds, truth.tolist(), flagged.tolist(), strict=True):
            if is_anomaly and kind:
                count = self.by_kind.setdefault(kind, KindCount())
                count.injected += 1
                count.detected += int(is_flagged)

    @property
    def readings(self) -> int:
        return self.true_positives + self.false_positives + self.false_negatives + self.true_negatives

    @property
    def flagged(self) -> int:
        return self.true_positives + self.false_positives

    @property
    def injected(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def flag_rate(self) -> float | None:
        """Share of readings the model flagged (the page's "anomaly rate")."""
        return _ratio(self.flagged, self.readings)

    @property
    def precision(self) -> float | None:
        """Of the flagged readings, the share that were real anomalies."""
        return _ratio(self.true_positives, self.flagged)

    @property
    def recall(self) -> float | None:
        """Of the injected anomalies, the share that were flagged."""
        return _ratio(self.true_positives, self.injected)

    @property
    def f1(self) -> float | None:
        precision, recall = self.precision, self.recall
        if precision is None or recall is None or precision + recall == 0:
            return None
        return 2 * precision * recall / (precision + recall)

    @property
    def false_positive_rate(self) -> float | None:
        return _ratio(self.false_positives, self.false_positives + self.true_negatives)

    def confusion_frame(self) -> pd.DataFrame:
        """The 2x2 matrix as tidy rows ``actual, predicted, count, outcome`` for a heatmap."""
        cells = [
            ("anomaly", "flagged", self.true_positives, Outcome.detected),
            ("anomaly", "not flagged", self.false_negatives, Outcome.missed),
            ("normal", "flagged", self.false_positives, Outcome.false_alarm),
            ("normal", "not flagged", self.true_negatives, Outcome.normal),
        ]
        return pd.DataFrame(
            [
                {"actual": actual, "predicted": predicted, "count": count, "outcome": outcome.value}
                for actual, predicted, count, outcome in cells
            ]
        )

    def kinds_frame(self) -> pd.DataFrame:
        """Per injected kind: injected, detected, recall; sorted by kind name."""
        rows = [
            {
                "kind": kind,
                "injected": count.injected,
                "detected": count.detected,
                "recall": count.detected / count.injected,
            }
            for kind, count in sorted(self.by_kind.items())
        ]
        return pd.DataFrame(rows, columns=["kind", "injected", "detected", "recall"])


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None
