"""What ``POST /predict`` does between the HTTP edge and its answer, written once for its two entrances.

The framework route (``app.serving.routes``, which FastAPI documents in OpenAPI and which serves
``/predict?explain=...``) and the fast path in front of the framework (``app.serving.edge.fast_path``, which serves a
plain ``POST /predict``) both call ``Predictor.predict``: the same checks in the same order, the same errors, the
same answer. Only the headers' container and the source of the body differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.detector.model import Detector
from app.scoring.batch import BatchScorer
from app.scoring.explaining import BatchExplainer, explanation_dicts
from app.scoring.holder import ModelHolder
from app.scoring.rounds import ScoringRound
from app.scoring.shadow import ShadowScorer
from app.serving.edge.admission import BodyBytesBudget, InflightLimit, ReadingBudget, read_body, require_json
from app.serving.edge.parsing import INLINE_PARSE_BYTES, most_readings, parse_readings
from app.serving.settings import Settings


class Predictor:
    """Scores one ``/predict`` request: model ready, JSON declared, body within its bounds, a slot and a reading
    budget free, readings valid; then the answer, and the batch handed to the shadow. Each refusal raises the named
    error of ``app.serving.edge.http_errors``; the caller turns it into the answer (one function for both)."""

    def __init__(
        self,
        settings: Settings,
        *,
        holder: ModelHolder,
        scorer: BatchScorer,
        shadow: ShadowScorer,
        inflight: InflightLimit,
        budget: ReadingBudget,
        buffered: BodyBytesBudget,
    ) -> None:
        self.holder = holder
        self.scorer = scorer
        self.round = None if scorer.traced else ScoringRound(scorer)
        """The iteration's batches scored back to back (``app.scoring.rounds``); with tracing on, each request
        scores its own batch in its own context, where its span finds its parent."""
        self.shadow = shadow
        self.inflight = inflight
        self.budget = budget
        self.buffered = buffered
        self.max_batch = settings.max_batch
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout
        self.explainer = BatchExplainer(settings.supply_standard())

    async def predict(
        self,
        headers: Mapping[str, str],
        chunks: AsyncIterator[bytes],
        *,
        explain: bool,
        instance: str,
        arrived: bool = False,
    ) -> dict[str, Any]:
        """The answer's document for the body ``chunks`` of a request with these ``headers``; ``arrived``: the
        server holds the whole body already (``app.serving.edge.asgi.BODY_ARRIVED``)."""
        model = self.holder.get()
        require_json(headers)
        body = await read_body(headers, chunks, self.max_body_bytes, self.body_timeout, self.buffered, arrived=arrived)
        with self.inflight, self.budget.admit(most_readings(body, self.max_batch)):
            batch = (body, model.detector.features, self.max_batch)
            inline = len(body) <= INLINE_PARSE_BYTES
            X = parse_readings(*batch) if inline else await run_in_threadpool(parse_readings, *batch)
            if model.scores_inline(X.shape[0]) and not explain:
                scored = await self.round.score(model, X) if self.round else self.scorer.score(model, X)
            else:
                scored = await run_in_threadpool(partial(self.scorer.score, model, X, credits=explain))
            predictions = scored.predictions()
            if scored.credits is not None:
                self._add_explanations(predictions, model.detector, X, scored.credits)
        # The challenger (and a promotion's guard) score it on their own thread: never in the answer's way.
        self.shadow.submit(X, scored.flags, model.detector.version)
        return {
            "predictions": predictions,
            "anomalies": scored.anomalies,
            "total": len(scored.flags),
            "served_by": instance,
            "model_version": model.detector.version,
        }

    def _add_explanations(
        self, predictions: list[dict[str, Any]], detector: Detector, X: np.ndarray, credits: np.ndarray
    ) -> None:
        explanations = explanation_dicts(self.explainer.explain(detector, X, credits))
        for prediction, explanation in zip(predictions, explanations, strict=True):
            prediction["explanation"] = explanation
