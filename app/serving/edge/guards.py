"""The service's own middlewares besides metrics and access log: error guard and response hardening."""

from __future__ import annotations

import logging

from app.serving.edge.asgi import HttpMiddleware, Message, Receive, Scope, Send
from app.serving.edge.http_errors import JSONResponse

logger = logging.getLogger(__name__)


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
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)


class SecurityHeadersMiddleware(HttpMiddleware):
    """``X-Content-Type-Options: nosniff`` on every answer: a browser never second-guesses a JSON or text body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)
