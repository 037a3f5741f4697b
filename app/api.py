"""The HTTP API: ``create_app(settings)`` builds the FastAPI application.

Routes are thin: check the request, call one function, shape the answer. Model loading starts in the lifespan
on a worker thread, so the port opens at once: ``/livez`` answers immediately (liveness) and ``/health``
answers 503 with a reason until the model is loaded (readiness).

``/predict`` reads its body itself (``app.parsing``) rather than through a pydantic model: that keeps a batch
of readings one NumPy array from bytes to scores, and lets the error name the row and field. The request
schema is still published in OpenAPI (``/docs``) from the pydantic models below, which exist for documentation.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.multiprocess import mark_process_dead
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.logs import AccessLogMiddleware
from app.metrics import HTTPMetricsMiddleware, render_metrics
from app.model import Detector, ensure_model
from app.parsing import parse_readings
from app.service import Inference, ModelHolder, ModelState
from app.settings import Settings
from app.tracing import build_tracing, instrument
from app.web import (
    InflightLimit,
    InternalErrorMiddleware,
    JSONResponse,
    SecurityHeadersMiddleware,
    install_error_handlers,
    read_body,
    require_api_key,
    require_json,
)

logger = logging.getLogger(__name__)


class Reading(BaseModel):
    """One sensor reading. Extra fields (``timestamp``, ``sensor_id``...) are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"voltage": 231.2, "current": 12.5, "frequency": 50.01}]},
    )
    voltage: float = Field(description="RMS voltage in volts; finite.")
    current: float = Field(description="Current in amperes; finite.")
    frequency: float = Field(description="Grid frequency in hertz; finite.")


class Prediction(BaseModel):
    anomaly: bool = Field(description="True when score > 0.")
    score: float = Field(description="Negated IsolationForest decision function: higher is more anomalous.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per reading, in input order.")
    anomalies: int = Field(description="How many readings were flagged.")
    total: int = Field(description="How many readings were scored.")
    served_by: str = Field(description="Instance (pod or host, and process id) that answered.")


class HealthResponse(BaseModel):
    status: str
    model: str
    features: list[str]
    model_version: str
    instance: str
    pod: str | None
    node: str | None


class NotReadyResponse(BaseModel):
    status: str = Field(description="`loading` or `failed`.")
    reason: str
    instance: str


class ErrorResponse(BaseModel):
    detail: Any = Field(description="A message, or for 422 a list of {type, loc, msg} naming row and field.")


def _predict_request_schema(max_batch: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["readings"],
        "properties": {
            "readings": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "items": Reading.model_json_schema(),
            }
        },
    }


def _default_loader(settings: Settings) -> Callable[[], Detector]:
    def load() -> Detector:
        # Imported here: scikit-learn's metrics are only needed when a model is trained, not to serve one.
        from app.evaluate import evaluation_for_metadata  # noqa: PLC0415

        detector = ensure_model(
            settings.model_path,
            train_if_missing=settings.train_if_missing,
            evaluate=evaluation_for_metadata,
        )
        detector.use(settings.scorer)
        detector.warm_up()
        return detector

    return load


PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "Body not received within BODY_TIMEOUT seconds."},
    413: {"model": ErrorResponse, "description": "More than MAX_BATCH readings, or body over MAX_BODY_BYTES."},
    415: {"model": ErrorResponse, "description": "Body not sent as application/json."},
    422: {"model": ErrorResponse, "description": "Invalid batch; `detail` names each row and field."},
    503: {
        "model": ErrorResponse,
        "description": "Model not loaded yet, or MAX_INFLIGHT requests already in flight (see Retry-After).",
    },
}
"""The documented error answers of /predict (OpenAPI), besides 401 when an API key is required."""


def _install_middleware(app: FastAPI, settings: Settings, *, exemplars: bool) -> None:
    """Added innermost first: security headers > access log > metrics > CORS > error guard > routes, so CORS
    answers (preflights) are counted and logged too. The tracing middleware, when on, wraps them all."""
    app.add_middleware(InternalErrorMiddleware)
    if origins := settings.allowed_origins():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(HTTPMetricsMiddleware, exemplars=exemplars)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)


def _add_probes(app: FastAPI, holder: ModelHolder, settings: Settings) -> None:
    """/livez (liveness) and /health (readiness): always open, never behind the API key or the in-flight limit."""

    @app.get("/livez", summary="Liveness: the process is up (independent of the model).")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/health",
        summary="Readiness: 200 once the model is loaded, 503 with a reason before.",
        response_model=HealthResponse,
        responses={503: {"model": NotReadyResponse}},
    )
    async def health(request: Request) -> Response:
        instance = request.app.state.instance
        if holder.state is not ModelState.ready:
            body = {"status": holder.state.value, "reason": holder.reason, "instance": instance}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
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


def _add_metrics(app: FastAPI, multiprocess_dir: Path | None) -> None:
    @app.get(
        "/metrics",
        summary="Prometheus metrics (OpenMetrics when the scraper asks for it).",
        response_class=PlainTextResponse,
        responses={200: {"content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        content, content_type = render_metrics(request.headers.get("accept", ""), multiprocess_dir)
        return Response(content, media_type=content_type)


def create_app(
    settings: Settings | None = None,
    *,
    detector: Detector | None = None,
    loader: Callable[[], Detector] | None = None,
    span_exporters: Sequence[SpanExporter] | None = None,
) -> FastAPI:
    """Build the application.

    ``detector`` makes it ready at once (tests); ``loader`` replaces how the model is obtained (default:
    ``ensure_model`` on ``MODEL_DIR/MODEL_NAME``, training if allowed); ``span_exporters`` turns tracing on with
    these exporters, each span exported as it ends (tests). Settings default to the environment.
    """
    settings = settings or Settings()
    holder = ModelHolder(loader or _default_loader(settings), drift_window=settings.drift_window, detector=detector)
    multiprocess_dir = settings.prometheus_multiproc_dir
    tracing = build_tracing(settings, settings.instance_id(), exporters=span_exporters, batch=span_exporters is None)
    exemplars = tracing is not None and multiprocess_dir is None
    inference = Inference(tracing.tracer if tracing else trace.NoOpTracer(), exemplars=exemplars)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything here runs in the worker process, after uvicorn started it: its pid, the exporters' threads.
        app.state.instance = settings.instance_id()
        if tracing is not None:
            tracing.start()
        threading.Thread(target=holder.load, name="model-loader", daemon=True).start()
        try:
            yield
        finally:
            if tracing is not None:
                tracing.shutdown()
            if multiprocess_dir is not None:  # this worker's live gauges leave with it
                mark_process_dead(os.getpid(), str(multiprocess_dir))

    app = FastAPI(
        title="GridWatch",
        version=__version__,
        summary="Anomaly detection on electricity-grid readings (voltage, current, frequency).",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.model = holder
    app.state.instance = settings.instance_id()
    install_error_handlers(app)
    _install_middleware(app, settings, exemplars=exemplars)
    if tracing is not None:
        instrument(app, tracing)

    api_key = settings.required_api_key()
    inflight = InflightLimit(settings.max_inflight)
    # Declared only when a key is required, so /docs shows the scheme (and an Authorize button) exactly then; the
    # check itself is require_api_key, in constant time.
    keyed = [Security(APIKeyHeader(name="X-API-Key", auto_error=False))] if api_key else []
    unauthorized = {401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key."}} if api_key else {}
    errors = {**unauthorized, **PREDICT_ERRORS}

    _add_probes(app, holder, settings)

    @app.get(
        "/model",
        summary="Metadata of the loaded model: version, training, statistics, evaluation.",
        responses={**unauthorized, 503: {"model": ErrorResponse, "description": "Model not loaded yet."}},
        dependencies=keyed,
    )
    async def model_metadata(request: Request) -> Response:
        require_api_key(request, api_key)
        return JSONResponse(holder.get().detector.metadata)

    @app.post(
        "/predict",
        summary="Score a batch of readings.",
        response_model=PredictResponse,
        responses=errors,
        dependencies=keyed,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _predict_request_schema(settings.max_batch)}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        require_api_key(request, api_key)
        with inflight:
            model = holder.get()
            require_json(request)
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
            X = parse_readings(body, model.detector.features, settings.max_batch)
            if model.scores_inline(X.shape[0]):
                scored = inference.score(model, X)
            else:
                scored = await run_in_threadpool(inference.score, model, X)
        predictions = [
            {"anomaly": flag, "score": score}
            for flag, score in zip(scored.flags.tolist(), scored.scores.tolist(), strict=True)
        ]
        return JSONResponse(
            {
                "predictions": predictions,
                "anomalies": scored.anomalies,
                "total": len(predictions),
                "served_by": request.app.state.instance,
            }
        )

    _add_metrics(app, multiprocess_dir)
    return app
