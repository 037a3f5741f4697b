"""The promotion gate: a new version becomes active only if it does not detect worse than the active one on the
same labelled readings (a held-out part of its training file, or a file given for the purpose).

Both versions score the same rows with their own thresholds, as they would serve. F1 decides, since it weighs the
false alarms an operator chases against the anomalies missed; a tie promotes (not worse). On readings without any
labelled anomaly F1 is undefined, so the false-positive rate decides instead (lower or equal promotes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.detector.artifact import load_forest
from app.detector.dataset import RecordedReadings
from app.detector.errors import ModelArtifactError
from app.detector.evaluate import EvaluationReport, evaluate_recorded
from app.detector.registry import ModelStore


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
