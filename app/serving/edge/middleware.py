"""The ASGI middlewares around every route, outermost last as ``create_app`` adds them: security headers, the
access log, the HTTP metrics, the error guard.

All are pure ASGI (``app.serving.edge.asgi.HttpMiddleware``), so each costs a function call per request, not a
Starlette request object. The access log replaces uvicorn's (which is switched off) because it knows the route
template and the trace; its format is ``app.serving.telemetry.logs``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from app.scoring.metrics import trace_exemplar
from app.serving.edge.asgi import ASGIApp, HttpMiddleware, Message, Receive, Scope, Send, route_label, status_sent
from app.serving.edge.http_errors import JSONResponse
from app.serving.telemetry.logs import ACCESS_LOGGER
from app.serving.telemetry.metrics import (
    METRICS_PATH,
    PRECREATED_REQUESTS,
    REQUEST_LATENCY,
    REQUESTS,
    REQUESTS_IN_FLIGHT,
    method_label,
    status_class,
)

logger = logging.getLogger(__name__)


NOSNIFF_HEADER = (b"x-content-type-options", b"nosniff")
"""Sent with every answer (``SecurityHeadersMiddleware``): a browser never second-guesses a JSON or text body."""


class RequestMetrics:
    """Records an HTTP answer in ``requests_total`` and ``request_latency_seconds``: one instance per application,
    shared by ``HTTPMetricsMiddleware`` and the ``/predict`` fast path, so both count into the same children."""

    def __init__(self, *, exemplars: bool) -> None:
        self.exemplars = exemplars
        # Labelled children by label values: a dict lookup per request instead of prometheus-client's labels().
        # Bounded like the labels themselves (routes x methods x statuses).
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._histograms: dict[tuple[str, str, str], Histogram] = {}
        for path, method, status in PRECREATED_REQUESTS:
            self.counter(path, method, status)
            if status.startswith("2"):
                self.histogram(path, method, status_class(int(status)))

    def counter(self, path: str, method: str, status: str) -> Counter:
        key = (path, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(*key)
        return counter

    def histogram(self, path: str, method: str, klass: str) -> Histogram:
        key = (path, method, klass)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = REQUEST_LATENCY.labels(*key)
        return histogram

    def recorder(self, path: str, method: str, status: int) -> Callable[[float], None]:
        """``record`` for one route, method and status, its children bound once (the fast path's 200s)."""
        counter, histogram = self.counter(path, method, str(status)), self.histogram(path, method, status_class(status))
        exemplars = self.exemplars

        def record(seconds: float) -> None:
            counter.inc()
            histogram.observe(seconds, trace_exemplar() if exemplars else None)

        return record

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        status = status_sent(scope, status)
        path, method = route_label(scope), method_label(scope["method"])
        self.counter(path, method, str(status)).inc()
        histogram = self.histogram(path, method, status_class(status))
        histogram.observe(seconds, trace_exemplar() if self.exemplars else None)


class HTTPMetricsMiddleware(HttpMiddleware):
    """Counts every HTTP response exactly once, times it, and tracks requests in flight.

    It wraps the application below the error handling, so 404s, 405s, 413s, 422s and 500s are all counted. The
    route template is read from the scope the router filled in. A response is recorded just before its last body
    chunk is handed to the server, so a client never holds a response that is not counted yet (even if the worker
    is killed right after); the latency therefore ends there. If the app raises before a response is complete,
    the request is recorded as a 500 (or the status already sent).
    """

    def __init__(self, app: ASGIApp, *, metrics: RequestMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        recorded = False
        in_flight = scope["path"] != METRICS_PATH

        async def send_and_record(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not recorded:
                recorded = True
                self.metrics.record(scope, status, time.perf_counter() - started)
            await send(message)

        if in_flight:
            REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if in_flight:
                REQUESTS_IN_FLIGHT.dec()
            if not recorded:
                self.metrics.record(scope, status, time.perf_counter() - started)


class AccessLogMiddleware(HttpMiddleware):
    """One INFO line per HTTP request on the ``gridwatch.access`` logger, with its outcome as fields."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        size = 0

        async def send_and_observe(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            log_access(self.logger, scope, status, started, size)


def log_access(logger: logging.Logger, scope: Scope, status: int, started: float, size: int) -> None:
    """The access log's line for one answer of ``size`` body bytes, started at ``started`` (``perf_counter``)."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    client = scope.get("client")
    status = status_sent(scope, status)
    logger.info(
        "%s %s %d %.1fms",
        scope["method"],
        scope["path"],
        status,
        duration_ms,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "route": route_label(scope),
            "status": status,
            "duration_ms": duration_ms,
            "response_bytes": size,
            "client": f"{client[0]}:{client[1]}" if client else None,
        },
    )


class InternalErrorMiddleware(HttpMiddleware):
    """Turns an unexpected exception into one logged 500 JSON answer, so the process keeps serving.

    Starlette's outermost error handler re-raises after answering (so the server logs a second traceback); this
    middleware sits inside it and answers without re-raising. If the response had already started, the
    exception is re-raised: the server then closes the connection, which is all that can be done.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_started = False

        async def send_and_track(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_track)
        except Exception:
            if response_started:
                log_internal_error(scope)
                raise
            await answer_internal_error(scope, receive, send)


def log_internal_error(scope: Scope) -> None:
    """The traceback of an unexpected exception, named by the request (call while handling it)."""
    logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))


async def answer_internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    """Log the exception being handled and answer 500 with a JSON detail (the response has not started)."""
    log_internal_error(scope)
    await INTERNAL_ERROR(scope, receive, send)


INTERNAL_ERROR = JSONResponse({"detail": "internal server error"}, status_code=500)
"""The one answer to a bug: the same bytes every time, so made once."""


class SecurityHeadersMiddleware(HttpMiddleware):
    """``X-Content-Type-Options: nosniff`` on every answer: a browser never second-guesses a JSON or text body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], NOSNIFF_HEADER]
            await send(message)

        await self.app(scope, receive, send_with_headers)
