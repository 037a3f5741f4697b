"""Explanations for a front door: the served model's ``Explainer`` kept per version, and each reading's
explanation as the JSON both front doors answer with (``/predict?explain=true``, ``STREAM_EXPLAIN``).

The credits come from the same walk of the trees that scores the batch (``Detector.predict_and_credit``), which
costs more than scoring alone (docs/performance.md), so they are computed only when asked: without it, answers and
speed are what they were.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from app.detector.explain import Explainer, Explanations, SupplyStandard
from app.detector.model import Detector
from app.scoring.metrics import READINGS_EXPLAINED


class BatchExplainer:
    """Explains batches with the serving model; one ``Explainer`` per model version, rebuilt after a swap."""

    def __init__(self, standard: SupplyStandard) -> None:
        self.standard = standard
        self._cached: tuple[Detector, Explainer] | None = None
        self._lock = threading.Lock()

    def _explainer(self, detector: Detector) -> Explainer:
        cached = self._cached
        if cached is not None and cached[0] is detector:
            return cached[1]
        explainer = Explainer(detector.features, detector.metadata["feature_stats"], self.standard)
        with self._lock:
            self._cached = (detector, explainer)
        return explainer

    def explain(self, detector: Detector, X: np.ndarray, credits: np.ndarray) -> Explanations:
        """The explanations of ``X`` by ``detector`` (the one that scored it), from the ``credits`` its scoring
        walk gave (``BatchScorer.score(..., credits=True)``)."""
        explanations = self._explainer(detector).explain(X, credits)
        READINGS_EXPLAINED.inc(X.shape[0])
        return explanations


def explanation_dicts(explanations: Explanations) -> list[dict[str, Any]]:
    """One JSON-ready explanation per reading: the top feature by name and, per feature in the model's order, its
    contribution, value, training band, robust z-score and physical limits."""
    names = explanations.features
    contributions = explanations.contributions.tolist()
    values = explanations.values.tolist()
    z = explanations.z.tolist()
    outside = explanations.outside_limits.tolist()
    bands = [[band.low, band.high] for band in explanations.bands]
    medians = [band.median for band in explanations.bands]
    spreads = [band.spread for band in explanations.bands]
    limits = [list(limit) if limit is not None else None for limit in explanations.limits]
    answers = []
    for row, top in enumerate(explanations.top.tolist()):
        answers.append(
            {
                "top_feature": names[top] if top >= 0 else None,
                "features": [
                    {
                        "name": name,
                        "contribution": contributions[row][column],
                        "value": values[row][column],
                        "median": medians[column],
                        "spread": spreads[column],
                        "band": bands[column],
                        "z": z[row][column],
                        "limits": limits[column],
                        "outside_limits": outside[row][column] if limits[column] is not None else None,
                    }
                    for column, name in enumerate(names)
                ],
            }
        )
    return answers
