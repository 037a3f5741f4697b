"""The HTTP API: ``create_app(settings)`` builds the FastAPI application, its middleware and all its routes.

Routes are thin: check the request, call one function, shape the answer. A ``POST /predict`` goes down three hops:
``predict`` here (HTTP: key, in-flight limit, body, parsing) -> ``Inference.score`` (``app.serving.inference``:
scoring with its metrics, drift and span) -> ``Detector.predict_batch`` (``app.detector.model``).

Model loading starts in the lifespan on a worker thread, so the port opens at once: ``/livez`` answers immediately
(liveness) and ``/health`` answers 503 with a reason until the model is loaded (readiness).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from opentelemetry import trace
from prometheus_client.multiprocess import mark_process_dead
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.detector.errors import ModelUnavailableError
from app.detector.loading import load_detector
from app.detector.model import Detector
from app.detector.registry import ModelStore, VersionRefusedError
from app.serving.errors import JSONResponse, ModelRefusedError, install_error_handlers
from app.serving.inference import Inference, ModelHolder, ModelState
from app.serving.logs import AccessLogMiddleware
from app.serving.metrics import HTTPMetricsMiddleware, render_metrics
from app.serving.middleware import InternalErrorMiddleware, SecurityHeadersMiddleware
from app.serving.model_swap import ModelWatcher, SharedCheck
from app.serving.parsing import most_readings, parse_readings
from app.serving.protocol import (
    BodyBytesBudget,
    InflightLimit,
    ReadingBudget,
    read_body,
    require_api_key,
    require_json,
)
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
from app.serving.shadow import ShadowScorer
from app.serving.tracing import build_tracing, instrument

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size (about 1,000 readings) are parsed on the event loop; bigger ones in the thread pool.

Parsing costs about a microsecond per reading and holds the GIL either way, but on the event loop a burst of big
bodies is parsed back to back before the loop polls again, and the probes wait behind all of them; in a thread the
loop gets the GIL back every few milliseconds. Small bodies stay inline: a thread hop costs more than parsing them."""


def create_app(
    settings: Settings | None = None,
    *,
    detector: Detector | None = None,
    loader: Callable[[], Detector] | None = None,
    span_exporters: Sequence[SpanExporter] | None = None,
) -> FastAPI:
    """Build the application.

    ``detector`` makes it ready at once (tests); ``loader`` replaces how the model is obtained (default:
    ``load_detector`` on ``MODEL_DIR/MODEL_NAME``, training if allowed); ``span_exporters`` turns tracing on with
    these exporters, each span exported as it ends (tests). Settings default to the environment.
    """
    settings = settings or Settings()
    readiness = ServerReadiness(settings.workers, settings.prometheus_multiproc_dir)
    holder = ModelHolder(
        loader or _default_loader(settings),
        drift_window=settings.drift_window,
        detector=detector,
        on_ready=readiness.mark_ready,
        model_dir=settings.model_dir,
    )
    shadow = ShadowScorer(max_share=settings.shadow_max_share)
    watcher = ModelWatcher(
        holder,
        ModelStore.of(settings.model_path),
        interval=settings.model_poll_interval,
        scorer=settings.scorer,
        shadow=shadow,
        shadow_version=settings.shadow_model_version,
    )
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
        threading.Thread(target=watcher.run, name="model-watcher", daemon=True).start()
        try:
            yield
        finally:
            watcher.close()
            holder.close()
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
    _add_middleware(app, settings, exemplars=exemplars)
    if tracing is not None:
        instrument(app, tracing)
    _add_routes(app, settings, holder, readiness, inference, shadow=shadow)
    _add_model_reload(app, settings, holder, watcher)
    return app


def _add_middleware(app: FastAPI, settings: Settings, *, exemplars: bool) -> None:
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


def _add_routes(
    app: FastAPI,
    settings: Settings,
    holder: ModelHolder,
    readiness: ServerReadiness,
    inference: Inference,
    *,
    shadow: ShadowScorer,
) -> None:
    """The whole HTTP surface. Probes and /metrics are always open, never behind the API key or the in-flight
    limit; /model and /predict require the key when one is set."""
    multiprocess_dir = settings.prometheus_multiproc_dir
    api_key = settings.required_api_key()
    inflight = InflightLimit(settings.max_inflight)
    budget = ReadingBudget(settings.max_inflight_readings)
    buffered = BodyBytesBudget(settings.max_buffered_body_bytes)
    keyed, unauthorized = _key_declarations(api_key)

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
    async def model_metadata(request: Request) -> Response:
        require_api_key(request, api_key)
        return JSONResponse(holder.get().detector.metadata)

    @app.post(
        "/predict",
        summary="Score a batch of readings.",
        response_model=PredictResponse,
        responses={**unauthorized, **PREDICT_ERRORS},
        dependencies=keyed,
        openapi_extra=_predict_request_body(settings.max_batch),
    )
    async def predict(request: Request) -> Response:
        require_api_key(request, api_key)
        model = holder.get()
        require_json(request)
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout, buffered)
        with inflight, budget.admit(most_readings(body, settings.max_batch)):
            batch = (body, model.detector.features, settings.max_batch)
            inline = len(body) <= INLINE_PARSE_BYTES
            X = parse_readings(*batch) if inline else await run_in_threadpool(parse_readings, *batch)
            if model.scores_inline(X.shape[0]):
                scored = inference.score(model, X)
            else:
                scored = await run_in_threadpool(inference.score, model, X)
        shadow.submit(X, scored.flags)  # the challenger scores it on its own thread: never in the answer's way
        return JSONResponse(
            {
                "predictions": scored.predictions(),
                "anomalies": scored.anomalies,
                "total": len(scored.flags),
                "served_by": request.app.state.instance,
                "model_version": model.detector.version,
            }
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics (OpenMetrics when the scraper asks for it).",
        response_class=PlainTextResponse,
        responses={200: {"content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        content, content_type = render_metrics(request.headers.get("accept", ""), multiprocess_dir)
        return Response(content, media_type=content_type)


def _key_declarations(api_key: str | None) -> tuple[list[Any], dict[int | str, dict[str, Any]]]:
    """The OpenAPI dependency and 401 answer of a key-protected route, declared only when a key is required, so
    /docs shows the scheme (and an Authorize button) exactly then; the check itself is require_api_key, in constant
    time."""
    if api_key is None:
        return [], {}
    return [Security(APIKeyHeader(name="X-API-Key", auto_error=False))], UNAUTHORIZED


def _add_model_reload(app: FastAPI, settings: Settings, holder: ModelHolder, watcher: ModelWatcher) -> None:
    api_key = settings.required_api_key()
    keyed, unauthorized = _key_declarations(api_key)
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
    async def reload_model(request: Request) -> Response:
        require_api_key(request, api_key)
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


def _default_loader(settings: Settings) -> Callable[[], Detector]:
    """Load (or, with ``TRAIN_IF_MISSING``, train) the model; retried by the holder until it succeeds.

    A model that was trained and then refused by its own verification would be trained, byte for byte, again at
    every retry (a training child every few seconds, forever): after one such refusal the retries only load,
    picking up a model an operator provides, and keep answering with the refusal until then."""
    refusal: VersionRefusedError | None = None

    def load() -> Detector:
        nonlocal refusal
        train = settings.train_if_missing and refusal is None
        try:
            return load_detector(settings.model_path, train_if_missing=train, scorer=settings.scorer, warm_up=True)
        except VersionRefusedError as error:
            refusal = error
            raise
        except ModelUnavailableError:
            if refusal is not None:
                raise refusal from None
            raise

    return load


def _predict_request_body(max_batch: int) -> dict[str, Any]:
    """The /predict body in OpenAPI, from the doc-only schema (the route reads the bytes itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": predict_request_schema(max_batch)}},
        }
    }
