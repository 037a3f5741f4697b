"""The promotion policy (train -> gate -> promote, which the training Job runs) and the gate itself.

A new version becomes active only if it does not detect worse than the active one on the same labelled readings
(a held-out part of its training file, or a file given for the purpose). Both versions score the same rows with
their own thresholds, as they would serve. F1 decides, since it weighs the false alarms an operator chases against
the anomalies missed; a tie promotes (not worse). On readings without any labelled anomaly F1 is undefined, so the
false-positive rate decides instead (lower or equal promotes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.detector.artifact import load_forest
from app.detector.dataset import RecordedReadings
from app.detector.errors import ModelArtifactError
from app.detector.evaluate import EvaluationReport, evaluate_recorded, evaluation_for_metadata
from app.detector.model import Detector, ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import recorded_training, train_version


@dataclass(frozen=True)
class GateDecision:
    candidate: str
    active: str | None
    promote: bool
    reason: str
    readings: int
    candidate_report: dict[str, Any] | None = None
    active_report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_gate(store: ModelStore, candidate: str, readings: RecordedReadings) -> GateDecision:
    """Whether ``candidate`` may replace the active version, judged on ``readings`` (labelled)."""
    active_artifact = store.active_artifact()
    if not active_artifact.exists():
        return GateDecision(candidate, None, True, "no active version to compare with", len(readings))
    store.verify(candidate)  # a candidate that does not load is refused before anything is compared
    try:
        active = load_forest(active_artifact, version=store.active_version())
    except ModelArtifactError as error:  # nothing to protect: a working candidate beats a broken active version
        reason = f"the active version does not load ({error.reason})"
        return GateDecision(candidate, store.active_version(), True, reason, len(readings))
    if active.version == candidate:
        return GateDecision(candidate, candidate, True, "already the active version", len(readings))
    new = evaluate_recorded(load_forest(store.artifact_of(candidate), version=candidate), readings)
    old = evaluate_recorded(active, readings)
    promote, reason = _compare(new, old)
    return GateDecision(candidate, active.version, promote, reason, len(readings), _summary(new), _summary(old))


def _compare(new: EvaluationReport, old: EvaluationReport) -> tuple[bool, str]:
    if new.anomalies == 0:
        rates = f"{new.false_positive_rate:.4f} against {old.false_positive_rate:.4f}"
        if new.false_positive_rate <= old.false_positive_rate:
            return True, f"false-positive rate {rates} (no labelled anomaly to compute F1 on)"
        return False, f"false-positive rate {rates} is worse (no labelled anomaly to compute F1 on)"
    if new.f1 >= old.f1:
        return True, f"F1 {new.f1:.3f} against {old.f1:.3f}: not worse"
    return False, f"F1 {new.f1:.3f} against {old.f1:.3f}: worse"


def _summary(report: EvaluationReport) -> dict[str, Any]:
    keys = ("precision", "recall", "f1", "false_positive_rate", "anomalies", "readings")
    return {key: getattr(report, key) for key in keys}


def gate(store: ModelStore, candidate: str, readings: RecordedReadings) -> GateDecision:
    """``promotion_gate``, applied: the candidate becomes the active version when the gate lets it."""
    decision = promotion_gate(store, candidate, readings)
    if decision.promote:
        store.promote(decision.candidate)
    return decision


@dataclass(frozen=True)
class TrainedVersion:
    """A version ``train_and_promote`` trained: the detector, whether it is active now, and the gate's decision."""

    detector: Detector
    active: bool
    decision: GateDecision | None = None


def train_and_promote(
    store: ModelStore,
    config: ModelConfig,
    *,
    readings: RecordedReadings | None = None,
    holdout: float = 0.2,
    promote: bool = False,
    if_better: bool = False,
) -> TrainedVersion:
    """Train a version into ``store`` (on simulated data, or on recorded ``readings``) and decide whether it serves.

    The policy the training Job relies on: with ``promote`` the new version becomes active; with ``if_better`` it
    is trained on all but the last ``holdout`` share of the labelled rows and becomes active only when it detects
    no worse than the active version on those held-out rows (``gate``); otherwise it becomes active only when no
    version is (the first one). Recorded readings without labels, or a zero holdout, leave nothing to gate on,
    which ``if_better`` refuses rather than promoting blindly.
    """
    if if_better and readings is None:
        raise ValueError("promoting if better compares on held-out labelled readings: none were given")
    training: dict[str, Any] = {"evaluate": evaluation_for_metadata}
    held_out = None
    if readings is not None:
        config, training, held_out = recorded_training(readings, config, holdout=holdout)
        if if_better and (held_out is None or not len(held_out)):
            raise ValueError("--promote-if-better needs an is_anomaly column and --holdout above 0 to compare on")
    detector, active = train_version(store, config, promote=promote, **training)
    if not if_better or active:
        return TrainedVersion(detector, active)
    assert held_out is not None
    decision = gate(store, detector.version, held_out)
    return TrainedVersion(detector, decision.promote, decision)
