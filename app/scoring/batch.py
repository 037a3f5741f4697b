"""Scoring one batch with the served model, and what operators watch of it: latency, counts, drift, a span.

The middle hop of every front door: the HTTP route (``app.serving.routes``) calls ``BatchScorer.score``, which
calls ``Detector.predict_batch`` (``app.detector.model``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property  # counted once, read by the metrics and by the answer
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
        self.traced = not isinstance(tracer, trace.NoOpTracer)
        """Tracing is on: each batch gets a span. Off (the default), not even a no-op span is made: a request pays
        for one context manager, a context token and four attribute calls that record nothing."""

    def score(self, model: LoadedModel, X: np.ndarray, *, credits: bool = False) -> ScoredBatch:
        """Score on the calling thread; the request's trace context is current (also in a worker thread, which
        gets a copy of it), so the span is the request span's child. With ``credits``, the same walk of the trees
        also credits each reading's isolating features, for an explanation (the scores are the same)."""
        if self.traced:
            with self.tracer.start_as_current_span("score_batch") as span:
                batch, elapsed = _timed_walk(model.detector, X, credits)
                _describe(span, batch, model.detector)
                INFERENCE_LATENCY.observe(elapsed, trace_exemplar() if self.exemplars else None)
        else:
            batch, elapsed = _timed_walk(model.detector, X, credits)
            INFERENCE_LATENCY.observe(elapsed)
        readings = X.shape[0]
        ANOMALIES.inc(batch.anomalies)
        READINGS_SCORED.inc(readings)
        BATCH_SIZE.observe(readings)
        model.gauges.record(model.drift, X, batch.flags)
        return batch

    def score_other(self, detector: Detector, X: np.ndarray, *, credits: bool = False) -> ScoredBatch:
        """Score with a version that is not the served one (a challenger compared by hand through
        ``/v2/models/gridwatch/versions/{version}/infer``): the span only, so the served model's latency, counts
        and drift window keep describing the served model. ``credits`` as for ``score``."""
        if not self.traced:
            return _walk(detector, X, credits)
        with self.tracer.start_as_current_span("score_batch") as span:
            batch = _walk(detector, X, credits)
            _describe(span, batch, detector)
        return batch


def _describe(span: trace.Span, batch: ScoredBatch, detector: Detector) -> None:
    span.set_attribute("gridwatch.batch_size", len(batch.flags))
    span.set_attribute("gridwatch.anomalies", batch.anomalies)
    span.set_attribute("gridwatch.model_version", detector.version)


def _timed_walk(detector: Detector, X: np.ndarray, credits: bool) -> tuple[ScoredBatch, float]:
    """The batch scored (and credited), and the seconds the walk took: what ``inference_latency_seconds`` times."""
    started = time.perf_counter()
    batch = _walk(detector, X, credits)
    return batch, time.perf_counter() - started


def _walk(detector: Detector, X: np.ndarray, credits: bool) -> ScoredBatch:
    """The batch scored, and with ``credits`` also credited by the same walk of the trees."""
    if credits:
        return ScoredBatch(*detector.predict_and_credit(X))
    return ScoredBatch(*detector.predict_batch(X))
