"""Human-readable tables for the command line (rich), kept apart from the computations they show."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:  # the load generator's report needs no scikit-learn; keep it importable without it
    from app.detector.evaluate import EvaluationReport, ExplanationQuality
    from app.detector.model import Detector
    from app.tools.loadgen import LoadReport


def _console() -> Console:
    return Console(highlight=False)


def print_training(detector: Detector) -> None:
    meta = detector.metadata
    console = _console()
    console.print(
        f"model [bold]{meta['model_version']}[/] saved to {detector.path} "
        f"({meta['artifact']['bytes'] / 1e6:.1f} MB, trained in {meta['training_seconds']:.2f}s "
        f"on {meta['training']['samples']} readings{_training_source(meta['training'])})"
    )
    if meta.get("evaluation"):
        evaluation = meta["evaluation"]
        console.print(
            f"evaluation at {evaluation['anomaly_rate']:.1%} anomalies: precision {evaluation['precision']:.3f}, "
            f"recall {evaluation['recall']:.3f}, F1 {evaluation['f1']:.3f}, ROC-AUC {evaluation['roc_auc']:.4f}"
        )


def _training_source(training: dict) -> str:
    if training.get("source") != "file":
        return ""
    left_out = [
        f"{training[key]} {label}"
        for key, label in (("excluded_anomalies", "labelled anomalies"), ("holdout_rows", "held out"))
        if training.get(key)
    ]
    return f" of {training['file']}" + (f"; left out: {', '.join(left_out)}" if left_out else "")


def print_evaluation(detector: Detector, report: EvaluationReport) -> None:
    console = _console()
    config = detector.config
    console.print(
        f"model {detector.version}: {config.n_estimators} trees, max_samples={config.max_samples}, "
        f"contamination={config.contamination}"
    )
    console.print(
        f"{report.readings} readings, {report.anomalies} anomalies ({report.anomaly_rate:.1%}), "
        + (f"seed {report.seed}" if report.seed >= 0 else "labelled data file")
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


def print_explanation_quality(detector: Detector, quality: Sequence[ExplanationQuality]) -> None:
    table = Table(
        "fault",
        "faulty feature",
        "flagged",
        "ranked first",
        "mean contribution",
        title=f"explanations of model {detector.version}: the faulty feature first among flagged readings",
    )
    for row in quality:
        table.add_row(
            row.kind,
            row.faulty_feature,
            f"{row.flagged} of {row.readings}",
            f"{row.ranked_first:.1%}",
            f"{row.mean_contribution:.2f}",
        )
    _console().print(table)


class LoadProgress:
    """A live one-line status of a running load test (rich), refreshed by the generator's progress callback."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._live = Live(Text("starting..."), console=Console(stderr=True), refresh_per_second=4, transient=False)

    def update(self, status: dict[str, float]) -> None:
        self._live.update(
            Text(
                f"{min(status['elapsed'], self.duration):5.1f}/{self.duration:.0f}s  sent {status['sent']:.0f}  "
                f"ok {status['ok']:.0f}  errors {status['errors']:.0f}  p99 {status['p99_ms']:.1f} ms"
            )
        )

    def __enter__(self) -> LoadProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)


def print_load_report(report: LoadReport) -> None:
    console = _console()
    console.print(
        f"{report.target}: {report.sent} sent of {report.scheduled} scheduled in {report.duration_s:.1f}s, "
        f"{report.succeeded} ok, {report.failed} failed"
    )
    if report.unsent:
        console.print(
            f"[yellow]{report.unsent} scheduled requests never got a free connection: the target (or this "
            "generator) could not keep up with the rate; their wait is not in the latencies below[/]"
        )
    table = Table("achieved rps", "rows/s", "avg ms", "p50 ms", "p95 ms", "p99 ms", "max ms")
    latency = report.latency_ms
    table.add_row(
        f"{report.achieved_rps:.1f}",
        f"{report.rows_per_s:,.0f}",
        *(f"{latency[key]:.2f}" for key in ("avg", "p50", "p95", "p99", "max")),
    )
    console.print(table)
    if report.failures:
        console.print("failures: " + ", ".join(f"{kind} x{count}" for kind, count in report.failures.items()))
    if report.served_by:
        console.print("served by: " + ", ".join(f"{name} x{count}" for name, count in report.served_by.items()))
    if report.model_versions:
        versions = ", ".join(f"{name} x{count}" for name, count in report.model_versions.items())
        console.print(f"scored by model: {versions}")


def print_versions(versions: list[dict]) -> None:
    """The model versions of a folder, oldest first, the active one marked *, the shadow s, one that does not load
    ! (with the reason in place of what it was trained on)."""
    table = Table(
        Column("", width=1),
        Column("version", no_wrap=True),
        Column("trained (UTC)", no_wrap=True),
        Column("on", overflow="fold"),
    )
    for heading in ("precision", "recall", "F1"):
        table.add_column(heading, justify="right", no_wrap=True)
    for entry in versions:
        evaluation = entry.get("evaluation") or {}
        table.add_row(
            "!" if entry.get("problem") else ("*" if entry.get("active") else ("s" if entry.get("shadow") else "")),
            entry.get("version") or "(before versions)",
            (entry.get("trained_at") or "")[:16].replace("T", " ") or entry.get("error", ""),
            str(entry.get("problem") or entry.get("source") or ""),
            *(
                f"{evaluation[key]:.3f}" if evaluation.get(key) is not None else ""
                for key in ("precision", "recall", "f1")
            ),
        )
    console = _console()
    console.print(table if versions else "no model yet: `gridwatch train` makes the first version")
