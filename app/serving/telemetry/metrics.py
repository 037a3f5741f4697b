"""The HTTP metrics of the service: their definitions, apart from the middleware that records them
(``app.serving.edge.middleware``) and from their exposition (``app.serving.telemetry.exposition``).

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

from prometheus_client import Counter, Gauge, Histogram

from app.scoring.metrics import LATENCY_BUCKETS

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
INFERENCE_PATHS = ("/predict", "/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer")
"""The routes that score readings: what the SLOs count (``path=~"/predict|/v2/models/.+/infer"`` in the rules)."""
PRECREATED_REQUESTS = tuple((path, "POST", status) for path in INFERENCE_PATHS for status in ("200", "500", "503"))
"""``requests_total`` series exported at 0 before their first request (and ``request_latency_seconds`` of the 2xx
ones): the availability SLO divides 5xx (500 a bug, 503 shed or unready) by all inference answers, and the latency
SLO reads the successful ones. ``requests_shed_total`` has no labels, so it is exported at 0 anyway."""


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_class(status: int) -> str:
    """``2xx`` for 200-299 and so on: the latency histogram's status label, five values at most (HTTP status codes
    are 100-599), where the full code would multiply every bucket by each code the service sends."""
    return f"{status // 100}xx"
