"""The routes of the HTTP API: the whole surface in one file, each route thin (check, call one function, shape).

A ``POST /predict`` goes down three hops: ``Predictor.predict`` (``app.serving.predict``: HTTP checks, in-flight
limit, body, parsing, from ``app.serving.edge``) -> ``BatchScorer.score`` (``app.scoring.batch``: scoring with its
metrics, drift and span) -> ``Detector.predict_batch`` (``app.detector.model``). A plain ``POST /predict`` (no query
string) reaches ``Predictor.predict`` through the fast path in front of the framework
(``app.serving.edge.fast_path``); the route here documents it in OpenAPI and serves ``?explain=``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader

from app.scoring.holder import ModelHolder, ModelState
from app.scoring.hot_swap import ModelWatcher, SharedCheck
from app.serving.edge.admission import require_api_key
from app.serving.edge.asgi import BODY_ARRIVED
from app.serving.edge.http_errors import JSONResponse, ModelRefusedError
from app.serving.predict import Predictor
from app.serving.readiness import ServerReadiness
from app.serving.schemas import (
    PREDICT_ERRORS,
    UNAUTHORIZED,
    ErrorResponse,
    HealthResponse,
    NotReadyResponse,
    PredictResponse,
    ReloadResponse,
    predict_request_schema,
)
from app.serving.settings import Settings
from app.serving.telemetry.exposition import render_metrics
from app.serving.v2 import add_v2_routes


def add_routes(
    app: FastAPI,
    settings: Settings,
    *,
    holder: ModelHolder,
    readiness: ServerReadiness,
    predictor: Predictor,
    watcher: ModelWatcher,
) -> None:
    """The whole HTTP surface. Probes and /metrics are always open, never behind the API key or the in-flight
    limit; /model, /predict and /model/reload require the key when one is set. The Open Inference Protocol's /v2
    routes (``app.serving.v2``) share the key and /predict's budgets (``predictor``'s)."""
    multiprocess_dir = settings.prometheus_multiproc_dir
    inflight, budget, buffered = predictor.inflight, predictor.budget, predictor.buffered
    keyed, unauthorized = api_key_dependency(settings.required_api_key())

    @app.get("/livez", summary="Liveness: the process is up (independent of the model).")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/health",
        summary="Readiness: 200 once every worker has its model loaded, 503 with a reason before.",
        response_model=HealthResponse,
        responses={503: {"model": NotReadyResponse}},
    )
    async def health(request: Request) -> Response:
        instance = request.app.state.instance
        if holder.state is not ModelState.ready:
            body = {"status": holder.state.value, "reason": holder.reason, "instance": instance}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        if not readiness.all_ready():
            reason = f"this worker is ready, {readiness.ready_workers()} of {readiness.workers} workers are"
            body = {"status": ModelState.loading.value, "reason": reason, "instance": instance}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        model = holder.get().detector
        return JSONResponse(
            {
                "status": "ok",
                "model": "isolation_forest",
                "features": list(model.features),
                "model_version": model.version,
                "instance": instance,
                "pod": settings.pod_name,
                "node": settings.node_name,
            }
        )

    @app.get(
        "/model",
        summary="Metadata of the loaded model: version, training, statistics, evaluation.",
        responses={**unauthorized, 503: {"model": ErrorResponse, "description": "Model not loaded yet."}},
        dependencies=keyed,
    )
    async def model_metadata() -> Response:
        return JSONResponse(holder.get().detector.metadata)

    @app.post(
        "/predict",
        summary="Score a batch of readings.",
        response_model=PredictResponse,
        responses={**unauthorized, **PREDICT_ERRORS},
        dependencies=keyed,
        openapi_extra=_predict_request_body(settings.max_batch),
    )
    async def predict(
        request: Request,
        explain: bool = Query(
            False,
            description="Add to each prediction why: per feature its contribution to the isolation (summing to 1), "
            "value, training band, robust z-score and EN 50160 limits, and the top feature (docs/api.md).",
        ),
    ) -> Response:
        instance = request.app.state.instance
        arrived = BODY_ARRIVED in request.scope
        document = await predictor.predict(
            request.headers, request.stream(), explain=explain, instance=instance, arrived=arrived
        )
        return JSONResponse(document)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (OpenMetrics when the scraper asks for it).",
        response_class=PlainTextResponse,
        responses={200: {"content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        content, content_type = render_metrics(request.headers.get("accept", ""), multiprocess_dir)
        return Response(content, media_type=content_type)

    _add_model_reload(app, keyed, unauthorized, holder, watcher)
    add_v2_routes(app, settings, keyed=keyed, inflight=inflight, budget=budget, buffered=buffered, holder=holder,
                  readiness=readiness, scorer=predictor.scorer, shadow=predictor.shadow)  # fmt: skip


def api_key_dependency(key: str | None) -> tuple[list[Any], dict[int | str, dict[str, Any]]]:
    """The one API-key dependency of the protected routes and their 401 answer, both only when a key is required:
    the dependency declares the X-API-Key scheme in OpenAPI (so /docs shows an Authorize button exactly then) and
    checks the key, in constant time (``require_api_key``), before the route runs."""
    if key is None:
        return [], {}
    header = APIKeyHeader(name="X-API-Key", auto_error=False)

    async def check_api_key(request: Request, _declared: str | None = Security(header)) -> None:
        require_api_key(request.headers, key)

    return [Depends(check_api_key)], UNAUTHORIZED


def _add_model_reload(
    app: FastAPI,
    keyed: list[Any],
    unauthorized: dict[int | str, dict[str, Any]],
    holder: ModelHolder,
    watcher: ModelWatcher,
) -> None:
    shared_check = SharedCheck(watcher.check)

    @app.post(
        "/model/reload",
        summary="Serve MODEL_DIR's active version now, without waiting for the next poll (this worker).",
        response_model=ReloadResponse,
        responses={
            **unauthorized,
            409: {"model": ErrorResponse, "description": "The active version failed to load; the old one serves."},
            503: {"model": ErrorResponse, "description": "Model not loaded yet."},
        },
        dependencies=keyed,
    )
    async def reload_model() -> Response:
        holder.get()  # 503 while the first model is still loading
        outcome = await shared_check()  # one check in flight per worker; concurrent calls share its outcome
        if outcome.refused is not None:
            raise ModelRefusedError(
                f"version {outcome.refused} was not loaded, {outcome.serving} keeps serving: "
                f"{holder.without_model_dir(outcome.reason or '')}"
            )
        return JSONResponse(
            {"model_version": outcome.serving, "previous": outcome.previous, "swapped": outcome.swapped}
        )


def _predict_request_body(max_batch: int) -> dict[str, Any]:
    """The /predict body in OpenAPI, from the doc-only schema (the route reads the bytes itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": predict_request_schema(max_batch)}},
        }
    }
