"""The HTTP API: ``create_app(settings)`` wires the model this worker serves (``app.scoring``), the HTTP edge
(``app.serving.edge``), telemetry and the routes (``app.serving.routes``) into one FastAPI application.

Model loading starts in the lifespan on a worker thread, so the port opens at once: ``/livez`` answers immediately
(liveness) and ``/health`` answers 503 with a reason until the model is loaded (readiness).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from opentelemetry import trace
from prometheus_client.multiprocess import mark_process_dead

from app import __version__
from app.detector.model import Detector
from app.scoring.batch import BatchScorer
from app.scoring.served import ServedModel
from app.serving.edge.admission import BodyBytesBudget, InflightLimit, ReadingBudget
from app.serving.edge.asgi import Receive, Scope, Send
from app.serving.edge.fast_path import PredictFastPath
from app.serving.edge.http_errors import JSONResponse, install_error_handlers
from app.serving.edge.middleware import (
    AccessLogMiddleware,
    HTTPMetricsMiddleware,
    InternalErrorMiddleware,
    RequestMetrics,
    SecurityHeadersMiddleware,
)
from app.serving.predict import Predictor
from app.serving.readiness import ServerReadiness
from app.serving.routes import add_routes
from app.serving.settings import Settings
from app.serving.telemetry.tracing import build_tracing, instrument

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


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
    served = ServedModel.of(settings, loader=loader, detector=detector, on_ready=readiness.mark_ready)
    holder = served.holder
    multiprocess_dir = settings.prometheus_multiproc_dir
    tracing = build_tracing(settings, settings.instance_id(), exporters=span_exporters, batch=span_exporters is None)
    exemplars = tracing is not None and multiprocess_dir is None
    scorer = BatchScorer(tracing.tracer if tracing else trace.NoOpTracer(), exemplars=exemplars)
    predictor = Predictor(
        settings,
        holder=holder,
        scorer=scorer,
        shadow=served.shadow,
        inflight=InflightLimit(settings.max_inflight),
        budget=ReadingBudget(settings.max_inflight_readings),
        buffered=BodyBytesBudget(settings.max_buffered_body_bytes),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything here runs in the worker process, after uvicorn started it: its pid, the exporters' threads.
        app.state.instance = settings.instance_id()
        if tracing is not None:
            tracing.start()
        served.start()
        try:
            yield
        finally:
            served.close()
            if tracing is not None:
                tracing.shutdown()
            if multiprocess_dir is not None:  # this worker's live gauges leave with it
                mark_process_dead(os.getpid(), str(multiprocess_dir))

    app = GridWatchAPI(
        title="GridWatch",
        version=__version__,
        summary="Anomaly detection on electricity-grid readings (voltage, current, frequency).",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # FastAPI's own OpenTelemetry hooks stay off: GridWatch traces with its own instrumentation (``instrument``),
        # and the hooks would otherwise ask the global providers whether they are configured on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.model = holder
    app.state.instance = settings.instance_id()
    install_error_handlers(app)
    request_metrics = RequestMetrics(exemplars=exemplars)
    _add_middleware(app, settings, request_metrics)
    if tracing is not None:
        instrument(app, tracing)
    add_routes(
        app,
        settings,
        holder=holder,
        readiness=readiness,
        predictor=predictor,
        watcher=served.watcher,
    )
    if tracing is None:  # with tracing on, every request goes through the instrumented stack and gets its span
        app.fast_path = PredictFastPath(
            predictor=predictor,
            api_key=settings.required_api_key(),
            metrics=request_metrics,
            route=_route(app, "/predict", "POST"),
            cors=bool(settings.allowed_origins()),
        )
    return app


class GridWatchAPI(FastAPI):
    """FastAPI, which first offers each request to ``POST /predict``'s fast path (``app.serving.edge.fast_path``)."""

    fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast_path = self.fast_path
        if fast_path is not None and fast_path.takes(scope):
            scope["app"] = self  # as Starlette sets it: the route's code reads app.state
            await fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route(app: FastAPI, path: str, method: str) -> APIRoute:
    return next(
        route
        for route in app.routes
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ())
    )


def _add_middleware(app: FastAPI, settings: Settings, request_metrics: RequestMetrics) -> None:
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
    app.add_middleware(HTTPMetricsMiddleware, metrics=request_metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
