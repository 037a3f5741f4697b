"""Human-readable tables for the command line (rich), kept apart from the computations they show."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from app.evaluate import EvaluationReport
from app.model import Detector


def _console() -> Console:
    return Console(highlight=False)


def print_training(detector: Detector) -> None:
    meta = detector.metadata
    console = _console()
    console.print(
        f"model [bold]{meta['model_version']}[/] saved to {detector.path} "
        f"({meta['artifact']['bytes'] / 1e6:.1f} MB, trained in {meta['training_seconds']:.2f}s "
        f"on {meta['training']['samples']} readings)"
    )
    if meta.get("evaluation"):
        evaluation = meta["evaluation"]
        console.print(
            f"evaluation at {evaluation['anomaly_rate']:.1%} anomalies: precision {evaluation['precision']:.3f}, "
            f"recall {evaluation['recall']:.3f}, F1 {evaluation['f1']:.3f}, ROC-AUC {evaluation['roc_auc']:.4f}"
        )


def print_evaluation(detector: Detector, report: EvaluationReport) -> None:
    console = _console()
    config = detector.config
    console.print(
        f"model {detector.version}: {config.n_estimators} trees, max_samples={config.max_samples}, "
        f"contamination={config.contamination}"
    )
    console.print(
        f"{report.readings} readings, {report.anomalies} anomalies ({report.anomaly_rate:.1%}), seed {report.seed}"
    )
    overall = Table("precision", "recall", "F1", "ROC-AUC", "false-positive rate", "flagged")
    overall.add_row(
        f"{report.precision:.3f}",
        f"{report.recall:.3f}",
        f"{report.f1:.3f}",
        f"{report.roc_auc:.4f}",
        f"{report.false_positive_rate:.4f}",
        str(report.flagged),
    )
    console.print(overall)
    kinds = Table("anomaly kind", "injected", "detected", "recall", "mean score")
    for kind in report.per_kind:
        kinds.add_row(kind.kind, str(kind.count), str(kind.detected), f"{kind.recall:.3f}", f"{kind.mean_score:.3f}")
    console.print(kinds)


def print_sweep(detector: Detector, sweep: Sequence[tuple[float, EvaluationReport]]) -> None:
    table = Table(
        "contamination",
        "precision",
        "recall",
        "F1",
        "false-positive rate",
        title="threshold sweep (same trees, threshold at each contamination)",
    )
    for contamination, report in sweep:
        marker = " (current)" if contamination == detector.config.contamination else ""
        table.add_row(
            f"{contamination}{marker}",
            f"{report.precision:.3f}",
            f"{report.recall:.3f}",
            f"{report.f1:.3f}",
            f"{report.false_positive_rate:.4f}",
        )
    _console().print(table)
