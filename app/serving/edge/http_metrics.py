"""The HTTP metrics of the service and the ASGI middleware that records them.

Names and labels are a contract with ``grafana-dashboards/`` and ``prometheus-rules/``; tests fail if those use a
metric that no module defines. Bounded labels only: ``path`` is the route template (``/predict``), never the raw
URL, with every unknown URL collapsed into ``app.serving.edge.asgi.UNMATCHED_PATH``; ``method`` is a standard
method or ``other``; ``status`` is the status code sent and ``status_class`` its class (``2xx``...``5xx``).

**Series the alerts divide by exist from the start.** A labelled series appears on its first use, and ``rate()``
cannot see the step from "no series" to 1: the first 500 or 503 of a replica would be lost to the availability SLO.
The ``/predict`` series in ``PRECREATED_REQUESTS`` are therefore exported at 0 as soon as the application is built.
In-flight requests are summed over the worker processes (``livesum``).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from app.scoring.metrics import LATENCY_BUCKETS, trace_exemplar
from app.serving.edge.asgi import ASGIApp, HttpMiddleware, Message, Receive, Scope, Send, route_label, status_sent

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METRICS_PATH = "/metrics"

REQUESTS = Counter(
    "requests",
    "HTTP responses sent, by route template, method and status code.",
    ["path", "method", "status"],
)
REQUEST_LATENCY = Histogram(
    "request_latency_seconds",
    "Time from receiving a request to sending the last byte of its response, by route template, method and status "
    "class (2xx, 4xx, 5xx).",
    ["path", "method", "status_class"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge(
    "requests_in_flight",
    "HTTP requests being handled right now (scrapes of /metrics excluded).",
    multiprocess_mode="livesum",
)
REQUESTS_SHED = Counter(
    "requests_shed",
    "Requests refused with 503 at once because MAX_INFLIGHT requests were already in flight in the worker.",
)
PRECREATED_REQUESTS = (("/predict", "POST", "200"), ("/predict", "POST", "500"), ("/predict", "POST", "503"))
"""``requests_total`` series exported at 0 before their first request (and ``request_latency_seconds`` of the 2xx
ones): the availability SLO divides 5xx (500 a bug, 503 shed or unready) by all ``/predict`` answers, and the latency
SLO reads the successful ones. ``requests_shed_total`` has no labels, so it is exported at 0 anyway."""


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_class(status: int) -> str:
    """``2xx`` for 200-299 and so on: the latency histogram's status label, five values at most (HTTP status codes
    are 100-599), where the full code would multiply every bucket by each code the service sends."""
    return f"{status // 100}xx"


class HTTPMetricsMiddleware(HttpMiddleware):
    """Counts every HTTP response exactly once, times it, and tracks requests in flight.

    It wraps the application below the error handling, so 404s, 405s, 413s, 422s and 500s are all counted. The
    route template is read from the scope the router filled in. A response is recorded just before its last body
    chunk is handed to the server, so a client never holds a response that is not counted yet (even if the worker
    is killed right after); the latency therefore ends there. If the app raises before a response is complete,
    the request is recorded as a 500 (or the status already sent).
    """

    def __init__(self, app: ASGIApp, *, exemplars: bool = True) -> None:
        super().__init__(app)
        self.exemplars = exemplars
        # Labelled children by label values: a dict lookup per request instead of prometheus-client's labels().
        # Bounded like the labels themselves (routes x methods x statuses).
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._histograms: dict[tuple[str, str, str], Histogram] = {}
        for path, method, status in PRECREATED_REQUESTS:
            self._counter(path, method, status)
            if status.startswith("2"):
                self._histogram(path, method, status_class(int(status)))

    def _counter(self, path: str, method: str, status: str) -> Counter:
        key = (path, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(*key)
        return counter

    def _histogram(self, path: str, method: str, klass: str) -> Histogram:
        key = (path, method, klass)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = REQUEST_LATENCY.labels(*key)
        return histogram

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        status = status_sent(scope, status)
        path, method = route_label(scope), method_label(scope["method"])
        self._counter(path, method, str(status)).inc()
        histogram = self._histogram(path, method, status_class(status))
        histogram.observe(seconds, trace_exemplar() if self.exemplars else None)

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
                self._record(scope, status, time.perf_counter() - started)
            await send(message)

        if in_flight:
            REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if in_flight:
                REQUESTS_IN_FLIGHT.dec()
            if not recorded:
                self._record(scope, status, time.perf_counter() - started)
