"""ASGI types and what the router leaves in a request's scope, shared by the middlewares.

Kept apart from ``app.metrics`` so that modules needed by uvicorn's supervisor process (logging) never import
prometheus-client: in multiprocess mode an import there would create metric files for a process that serves nothing.
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


def route_label(scope: Scope) -> str:
    """The route template that handled the request (set by the router in the shared scope), or UNMATCHED_PATH."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_PATH
