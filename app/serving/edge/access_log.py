"""The access log: one line per request, with the route template, the status, the duration and the trace.

It replaces uvicorn's own (which is switched off) because it knows the route template and the trace; the format
(JSON or text) is ``app.serving.telemetry.logs``'s.
"""

from __future__ import annotations

import logging
import time

from app.serving.edge.asgi import ASGIApp, HttpMiddleware, Message, Receive, Scope, Send, route_label, status_sent
from app.serving.telemetry.logs import ACCESS_LOGGER


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
