"""Prometheus metrics of the service and the ASGI middleware that records the HTTP ones.

Names and labels are a contract with the dashboards and alert rules in ``grafana-dashboards/`` and
``prometheus-rules/``; tests fail if those use a metric that is not defined here. Conventions: base units
(seconds), ``_total`` counters, and bounded labels only: ``path`` is the route template (``/predict``), never the
raw URL, with every unknown URL collapsed into ``UNMATCHED_PATH``; ``method`` is one of the standard methods or
``other``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Half a millisecond to ten seconds: a small batch scores in well under a millisecond, a 10,000-row batch or
an overloaded worker takes seconds. 0.1 s is a bucket edge because the latency SLO is "99 % under 100 ms"."""

UNMATCHED_PATH = "unmatched"
"""The ``path`` label of every request that matched no route, so a URL scan adds one series, not thousands."""

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "requests",
    "HTTP responses sent, by route template, method and status code.",
    ["path", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "request_latency_seconds",
    "Time from receiving a request to sending the last byte of its response, by route template and method.",
    ["path", "method"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_LATENCY = Histogram(
    "inference_latency_seconds",
    "Time spent scoring one batch with the model (excludes parsing and serialisation).",
    buckets=LATENCY_BUCKETS,
)
ANOMALIES = Counter("anomalies", "Readings the model flagged as anomalous.")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_label(scope: Scope) -> str:
    """The route template that handled the request (set by the router in the shared scope), or UNMATCHED_PATH."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_PATH


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class HTTPMetricsMiddleware:
    """Counts every HTTP response exactly once and times it, whatever the status.

    It wraps the whole application, so 404s, 405s, 413s, 422s and 500s are all counted. The route template is
    read after the inner app ran, from the scope the router filled in. If the inner app raises before sending a
    response, the request is counted as a 500 (that is what the client gets from the server).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            path = route_label(scope)
            method = method_label(scope["method"])
            REQUESTS.labels(path, method, str(status)).inc()
            REQUEST_LATENCY.labels(path, method).observe(time.perf_counter() - started)
