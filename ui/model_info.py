"""The few facts of ``GET /model`` a person wants at a glance, picked out of the full metadata.

The metadata is the backend's, and another version of it may lack a field: every lookup here tolerates a
missing or oddly typed key and leaves that fact out, rather than failing the panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSummary:
    facts: dict[str, Any]
    """Name -> value, in display order; None values are left out by the page."""
    evaluation: str | None
    """The offline evaluation in one line, e.g. ``precision 0.922 · recall 0.998 · ...``."""


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def model_summary(metadata: Mapping[str, Any]) -> ModelSummary:
    config = _get(metadata, "config") or {}
    facts = {
        "version": _get(metadata, "model_version"),
        "trained at": _get(metadata, "trained_at"),
        "training readings": _get(metadata, "training", "samples"),
        "trees x samples": (
            f"{config.get('n_estimators')} x {config.get('max_samples')}"
            if isinstance(config, Mapping) and config.get("n_estimators")
            else None
        ),
        "contamination": config.get("contamination") if isinstance(config, Mapping) else None,
        "threshold": _get(metadata, "threshold", "rule"),
        "scikit-learn": _get(metadata, "versions", "sklearn"),
    }
    evaluation = _get(metadata, "evaluation")
    line = None
    if isinstance(evaluation, Mapping):
        parts = [
            f"{name.replace('_', '-')} {evaluation[key]:.3f}"
            for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("roc_auc", "ROC_AUC"))
            if isinstance(evaluation.get(key), int | float)
        ]
        if parts:
            line = " \u00b7 ".join(parts)
            if isinstance(evaluation.get("readings"), int):
                line += f" on {evaluation['readings']:,} readings"
    return ModelSummary(facts=facts, evaluation=line)
