"""Scoring one batch with the served model, and what operators watch of it: latency, counts, drift, a span.

The middle hop of every front door: the HTTP route (``app.serving.routes``) calls ``BatchScorer.score``, which
calls ``Detector.predict_batch`` (``app.detector.model``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace

from app.detector.model import Detector
from app.scoring.holder import LoadedModel
from app.scoring.metrics import ANOMALIES, BATCH_SIZE, INFERENCE_LATENCY, READINGS_SCORED, trace_exemplar


@dataclass(frozen=True)
class ScoredBatch:
    flags: np.ndarray
    scores: np.ndarray
    credits: np.ndarray | None = None
    """Per reading and feature, the forest's isolation credit, when the batch was scored to be explained."""

    @property
    def anomalies(self) -> int:
        return int(np.count_nonzero(self.flags))

    def predictions(self) -> list[dict[str, bool | float]]:
        """The answer's ``predictions``: one ``{"anomaly", "score"}`` per reading, in input order."""
        return [
            {"anomaly": flag, "score": score}
            for flag, score in zip(self.flags.tolist(), self.scores.tolist(), strict=True)
        ]


class BatchScorer:
    """Scores a batch and records what operators watch: latency, counts, batch size, the drift window, a span."""

    def __init__(self, tracer: trace.Tracer, *, exemplars: bool) -> None:
        self.tracer = tracer
        self.exemplars = exemplars

    def score(self, model: LoadedModel, X: np.ndarray, *, credits: bool = False) -> ScoredBatch:
        """Score on the calling thread; the request's trace context is current (also in a worker thread, which
        gets a copy of it), so the span is the request span's child. With ``credits``, the same walk of the trees
        also credits each reading's isolating features, for an explanation (the scores are the same)."""
        with self.tracer.start_as_current_span("score_batch") as span:
            started = time.perf_counter()
            batch = _walk(model.detector, X, credits)
            flags = batch.flags
            elapsed = time.perf_counter() - started
            span.set_attribute("gridwatch.batch_size", int(X.shape[0]))
            span.set_attribute("gridwatch.anomalies", batch.anomalies)
            span.set_attribute("gridwatch.model_version", model.detector.version)
            INFERENCE_LATENCY.observe(elapsed, trace_exemplar() if self.exemplars else None)
        ANOMALIES.inc(batch.anomalies)
        READINGS_SCORED.inc(X.shape[0])
        BATCH_SIZE.observe(X.shape[0])
        model.gauges.export(model.drift.update(X, flags))
        return batch

    def score_other(self, detector: Detector, X: np.ndarray, *, credits: bool = False) -> ScoredBatch:
        """Score with a version that is not the served one (a challenger compared by hand through
        ``/v2/models/gridwatch/versions/{version}/infer``): the span only, so the served model's latency, counts
        and drift window keep describing the served model. ``credits`` as for ``score``."""
        with self.tracer.start_as_current_span("score_batch") as span:
            batch = _walk(detector, X, credits)
            span.set_attribute("gridwatch.batch_size", int(X.shape[0]))
            span.set_attribute("gridwatch.anomalies", batch.anomalies)
            span.set_attribute("gridwatch.model_version", detector.version)
        return batch


def _walk(detector: Detector, X: np.ndarray, credits: bool) -> ScoredBatch:
    """The batch scored, and with ``credits`` also credited by the same walk of the trees."""
    if credits:
        return ScoredBatch(*detector.predict_and_credit(X))
    return ScoredBatch(*detector.predict_batch(X))
