"""How good is the detector? Precision, recall, F1 and ROC-AUC on labelled simulated readings, per kind too.

The simulator knows the ground truth of every reading, so the detector can be scored on streams it never saw
(a different seed, start and sampling interval than training). The figures are stored in the model metadata at
training time and printed by ``gridwatch evaluate``.

Per-kind figures are recall only: a false positive has no kind, so per-kind precision is not defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from app.detector.dataset import RecordedReadings
from app.detector.explain import Explainer, SupplyStandard
from app.detector.model import FEATURES, Detector, training_data
from app.sim import DEFAULT_ANOMALY_KINDS, FAULTY_FEATURE, AnomalyKind, GridSimulator, ReadingBatch

EVALUATION_START = datetime(2026, 6, 1, tzinfo=UTC)
EVALUATION_INTERVAL_S = 37.0
"""Not a divisor of a day, so the evaluation stream samples every minute of the load curve over time."""
DEFAULT_EVALUATION_SEED = 2026
DEFAULT_EVALUATION_RATE = 0.02
DEFAULT_EVALUATION_SIZE = 20_000


@dataclass(frozen=True)
class KindReport:
    kind: str
    count: int
    detected: int
    recall: float
    mean_score: float


@dataclass(frozen=True)
class EvaluationReport:
    readings: int
    anomalies: int
    anomaly_rate: float
    seed: int
    precision: float
    recall: float
    f1: float
    roc_auc: float
    false_positive_rate: float
    flagged: int
    per_kind: tuple[KindReport, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_kind"] = {report.kind: asdict(report) for report in self.per_kind}
        for report in data["per_kind"].values():
            del report["kind"]
        return data


def labelled_stream(
    *,
    n: int = DEFAULT_EVALUATION_SIZE,
    anomaly_rate: float = DEFAULT_EVALUATION_RATE,
    seed: int = DEFAULT_EVALUATION_SEED,
    kinds: Sequence[AnomalyKind | str] = DEFAULT_ANOMALY_KINDS,
) -> ReadingBatch:
    """Readings with ground truth, from a part of simulated time the training set never covered."""
    simulator = GridSimulator(
        anomaly_rate=anomaly_rate,
        anomaly_kinds=kinds,
        interval_s=EVALUATION_INTERVAL_S,
        start=EVALUATION_START,
        seed=seed,
    )
    return simulator.batch(n)


def report_from_scores(
    batch: ReadingBatch, flags: np.ndarray, scores: np.ndarray, *, anomaly_rate: float, seed: int
) -> EvaluationReport:
    truth = batch.is_anomaly
    kinds = np.array(batch.anomaly_kind, dtype=object)
    per_kind = []
    for kind in sorted({k for k in batch.anomaly_kind if k is not None}):
        mask = kinds == kind
        per_kind.append(
            KindReport(
                kind=kind,
                count=int(mask.sum()),
                detected=int(flags[mask].sum()),
                recall=round(float(flags[mask].mean()), 4),
                mean_score=round(float(scores[mask].mean()), 4),
            )
        )
    both_classes = 0 < truth.sum() < truth.size
    return EvaluationReport(
        readings=int(truth.size),
        anomalies=int(truth.sum()),
        anomaly_rate=anomaly_rate,
        seed=seed,
        precision=round(float(precision_score(truth, flags, zero_division=0.0)), 4),
        recall=round(float(recall_score(truth, flags, zero_division=0.0)), 4),
        f1=round(float(f1_score(truth, flags, zero_division=0.0)), 4),
        roc_auc=round(float(roc_auc_score(truth, scores)), 4) if both_classes else float("nan"),
        false_positive_rate=round(float(flags[~truth].mean()), 5) if (~truth).any() else 0.0,
        flagged=int(flags.sum()),
        per_kind=tuple(per_kind),
    )


def evaluate_detector(
    detector: Detector,
    *,
    n: int = DEFAULT_EVALUATION_SIZE,
    anomaly_rate: float = DEFAULT_EVALUATION_RATE,
    seed: int = DEFAULT_EVALUATION_SEED,
    kinds: Sequence[AnomalyKind | str] = DEFAULT_ANOMALY_KINDS,
) -> EvaluationReport:
    """Score a labelled stream with the detector as it serves (same threshold) and compare with the truth."""
    batch = labelled_stream(n=n, anomaly_rate=anomaly_rate, seed=seed, kinds=kinds)
    flags, scores = detector.predict_batch(batch.features())
    return report_from_scores(batch, flags, scores, anomaly_rate=anomaly_rate, seed=seed)


RECORDED_SEED = -1
"""The ``seed`` of a report on recorded readings, which no simulator seed drew."""


def recorded_batch(readings: RecordedReadings) -> tuple[ReadingBatch, float]:
    """Labelled recorded readings in the simulator's batch form, so every report works on both, and their
    anomaly rate."""
    if readings.is_anomaly is None:
        raise ValueError("evaluating needs labelled readings: an is_anomaly column")
    kinds = readings.anomaly_kind
    if kinds is None:  # no kind column: every labelled anomaly is of one unnamed kind
        kinds = tuple("labelled" if flag else None for flag in readings.is_anomaly)
    columns = dict(zip(FEATURES, readings.X.T, strict=True))
    batch = ReadingBatch(
        timestamp=np.zeros(len(readings)), is_anomaly=readings.is_anomaly, anomaly_kind=kinds, **columns
    )
    return batch, round(float(readings.is_anomaly.mean()), 4)


def evaluate_recorded(detector: Detector, readings: RecordedReadings) -> EvaluationReport:
    """Score labelled recorded readings with the detector as it serves and compare with their labels."""
    batch, rate = recorded_batch(readings)
    flags, scores = detector.predict_batch(readings.X)
    return report_from_scores(batch, flags, scores, anomaly_rate=rate, seed=RECORDED_SEED)


def evaluation_for_metadata(detector: Detector) -> dict[str, Any]:
    """The default evaluation, as stored in the model metadata when a model is trained."""
    return evaluate_detector(detector).to_dict()


def sweep_contamination(
    detector: Detector,
    contaminations: Sequence[float],
    *,
    n: int = DEFAULT_EVALUATION_SIZE,
    anomaly_rate: float = DEFAULT_EVALUATION_RATE,
    seed: int = DEFAULT_EVALUATION_SEED,
    readings: RecordedReadings | None = None,
) -> list[tuple[float, EvaluationReport]]:
    """What each contamination would give, without retraining, on the simulated stream or on ``readings``.

    For a given ``random_state`` the trees do not depend on contamination: it only sets the threshold at that
    quantile of the training scores. A model stores those quantiles (``threshold.contamination_offsets``, written
    at training), so one forest and a threshold per candidate reproduce what retraining with each value would flag,
    whatever it was trained on. Older models without the table are swept from their simulated training set.
    """
    if readings is None:
        batch = labelled_stream(n=n, anomaly_rate=anomaly_rate, seed=seed)
    else:
        batch, anomaly_rate = recorded_batch(readings)
        seed = RECORDED_SEED
    _, scores = detector.predict_batch(batch.features())
    thresholds = _thresholds(detector, contaminations)
    return [
        (contamination, report_from_scores(batch, scores > t, scores - t, anomaly_rate=anomaly_rate, seed=seed))
        for contamination, t in zip(contaminations, thresholds, strict=True)
    ]


def _thresholds(detector: Detector, contaminations: Sequence[float]) -> np.ndarray:
    """The score above which each contamination flags, relative to the model's own threshold (0)."""
    table = detector.metadata.get("threshold", {}).get("contamination_offsets")
    if table:
        return np.interp(contaminations, table["contamination"], table["score"])
    _, training_scores = detector.predict_batch(training_data(detector.config))
    return np.percentile(training_scores, 100.0 * (1.0 - np.asarray(contaminations)))


@dataclass(frozen=True)
class ExplanationQuality:
    """How often the explanation of a flagged single-feature fault names the faulty feature first."""

    kind: str
    faulty_feature: str
    readings: int
    flagged: int
    ranked_first: float
    """Share of the flagged readings whose top contributing feature is the faulty one."""
    mean_contribution: float
    """Mean contribution of the faulty feature over the flagged readings."""


def explanation_quality(
    detector: Detector, *, n: int = 2_000, seed: int = DEFAULT_EVALUATION_SEED
) -> list[ExplanationQuality]:
    """For each single-feature fault of the simulator, ``n`` readings of it: how often the faulty feature ranks
    first among the flagged ones (docs/model.md, "Why was this reading flagged?")."""
    explainer = Explainer(detector.features, detector.metadata["feature_stats"], SupplyStandard())
    results = []
    for kind, feature in FAULTY_FEATURE.items():
        simulator = GridSimulator(seed=seed, start=EVALUATION_START, interval_s=EVALUATION_INTERVAL_S)
        X = simulator.batch(n, kind=kind).features()
        flags, _ = detector.predict_batch(X)
        explanations = explainer.explain(X[flags], detector.isolation_credits(X[flags]))
        column = detector.features.index(feature)
        flagged = int(flags.sum())
        results.append(
            ExplanationQuality(
                kind=kind.value,
                faulty_feature=feature,
                readings=n,
                flagged=flagged,
                ranked_first=float(np.mean(explanations.top == column)) if flagged else 0.0,
                mean_contribution=float(explanations.contributions[:, column].mean()) if flagged else 0.0,
            )
        )
    return results
