"""Logging: JSON lines for log collectors (or plain text for a terminal), one access-log line per request.

Every record logged while a request is traced carries ``trace_id`` and ``span_id``, so a log line leads to its
trace and back. The access log replaces uvicorn's (which is switched off) because it knows the route template,
the duration and the trace.
"""

from __future__ import annotations

import logging
import sys
import time

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from app.serving.asgi import ASGIApp, HttpMiddleware, Message, Receive, Scope, Send, route_label, status_sent

ACCESS_LOGGER = "gridwatch.access"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, as tracing back-ends show them) when a sampled span is current."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def configure_logging(level: str, fmt: str = "text") -> None:
    """Route every logger (uvicorn's included) to stderr at ``level``, as JSON lines or text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            OrjsonFormatter(  # orjson: the access log writes a line per request, json.dumps cost twice as much
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601 in UTC
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured duplicate
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(TraceContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


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
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            client = scope.get("client")
            status = status_sent(scope, status)
            self.logger.info(
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
