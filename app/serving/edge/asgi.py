"""ASGI types, the base of the pure-ASGI middlewares, and what the router leaves in a request's scope.

Kept apart from ``app.serving.edge.middleware`` so that modules needed by uvicorn's supervisor process (logging) never
import prometheus-client: in multiprocess mode an import there would create metric files for a process that serves
nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED_PATH = "unmatched"
"""The route label of every request that matched no route, so a URL scan adds one series, not thousands."""


SERVER_ANSWERED = "gridwatch.server_answered"
"""Scope key set when the server itself answered a request the application was still reading (uvicorn's 400 for a
broken chunked body): the status the client really got, which the metrics and the access log record."""


BODY_ARRIVED = "gridwatch.body_arrived"
"""Scope key set by the connection (``app.serving.edge.connections``) once the request's whole body has been received
from the socket: reading it from ``receive`` cannot wait any more, so no body timeout is needed."""


def status_sent(scope: Scope, status: int) -> int:
    """What the client received for this request: the server's own answer if it gave one, else ``status``."""
    return int(scope.get(SERVER_ANSWERED, status))


def route_label(scope: Scope) -> str:
    """The route template that handled the request (set by the router in the shared scope), or UNMATCHED_PATH."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_PATH


class HttpMiddleware:
    """Base of the pure-ASGI middlewares: HTTP requests go to ``handle``, every other scope straight through.

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
