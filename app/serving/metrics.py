"""Prometheus metrics of the service, their exposition, and the ASGI middleware that records the HTTP ones.

Names and labels are a contract with ``grafana-dashboards/`` and ``prometheus-rules/``; tests fail if those use a
metric that is not defined here. Conventions: base units (seconds), ``_total`` counters, and bounded labels only:
``path`` is the route template (``/predict``), never the raw URL, with every unknown URL collapsed into
``app.serving.asgi.UNMATCHED_PATH``; ``method`` is a standard method or ``other``; ``status`` is the status code
sent and ``status_class`` its class (``2xx``...``5xx``); ``feature`` is one of the model's three features.

**Series the alerts divide by exist from the start.** A labelled series appears on its first use, and ``rate()``
cannot see the step from "no series" to 1: the first 500 or 503 of a replica would be lost to the availability SLO.
The ``/predict`` series in ``PRECREATED_REQUESTS`` are therefore exported at 0 as soon as the application is built.

**Several worker processes.** With ``WORKERS>1`` each uvicorn worker is its own process with its own counters, and
a scrape reaches only one of them. ``gridwatch serve`` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start (so prometheus-client keeps every value in a shared memory-mapped file), and ``/metrics`` merges all files
into one answer. Every gauge declares how to merge: ``livesum`` for in-flight requests, ``livemax`` for facts that
are the same in every worker (model info), ``livemostrecent`` for the sliding-window statistics (the window of the
worker that scored last). ``live*`` modes drop a worker's gauges once it is dead, so no per-pid series leak;
counters and histograms of dead workers stay, because a count must never go down.

**Exemplars.** When a request is traced, its latency observation carries the trace id as an exemplar, visible in
the OpenMetrics exposition. prometheus-client's multiprocess files cannot store exemplars, so they are off with
``WORKERS>1``; the chart runs one worker per pod (scale with replicas) and keeps them.

**Process metrics of several workers.** prometheus-client's ``ProcessCollector`` reports the process that answers
the scrape, which with WORKERS>1 is one worker chosen by the kernel: each scrape would see a different process's
CPU counter, and ``rate()`` over it would be nonsense. ``ServerProcessCollector`` reports the same metric names
summed over every live worker (the processes that write into ``PROMETHEUS_MULTIPROC_DIR``), so
``rate(process_cpu_seconds_total[5m])`` is the server's CPU use, as in the single-process case.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from opentelemetry import trace
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from app.detector.drift import DriftSnapshot
from app.serving.asgi import ASGIApp, HttpMiddleware, Message, Receive, Scope, Send, route_label, status_sent
from app.serving.readiness import pid_alive

# `*_created` samples double the series count in the text format and carry nothing the dashboards use; they are
# also absent in multiprocess mode, so disabling them keeps both modes' exposition identical.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Half a millisecond to ten seconds: a small batch scores in well under a millisecond, a 10,000-row batch or an
overloaded worker takes seconds. 0.1 s is a bucket edge because the latency SLO is "99 % under 100 ms"."""

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Readings per request, up to the default MAX_BATCH."""

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
INFERENCE_LATENCY = Histogram(
    "inference_latency_seconds",
    "Time spent scoring one batch with the model (excludes parsing and serialisation).",
    buckets=LATENCY_BUCKETS,
)
ANOMALIES = Counter("anomalies", "Readings the model flagged as anomalous.")
READINGS_SCORED = Counter("readings_scored", "Readings scored by the model.")
BATCH_SIZE = Histogram(
    "batch_size_readings",
    "Readings per scored /predict request.",
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_INFO = Gauge(
    "model_info",
    "Always 1; labels name the loaded model version and the scikit-learn version it was trained with.",
    ["model_version", "sklearn_version"],
    multiprocess_mode="livemax",
)
MODEL_LOAD_DURATION = Gauge(
    "model_load_duration_seconds",
    "How long obtaining the model took at start-up: loading the artifact, or training it (source label).",
    ["source"],
    multiprocess_mode="livemax",
)
FEATURE_WINDOW_MEAN = Gauge(
    "feature_window_mean",
    "Mean of each input feature over the sliding window of recent readings, in the feature's unit (V, A, Hz).",
    ["feature"],
    multiprocess_mode="livemostrecent",
)
FEATURE_DRIFT_SCORE = Gauge(
    "feature_drift_score",
    "Standardised shift of the window mean from the training mean (|window mean - training mean| / training "
    "std). Normal traffic stays below 2.2 at any hour of the day; above 3 means the input has drifted.",
    ["feature"],
    multiprocess_mode="livemostrecent",
)
ANOMALY_RATIO_WINDOW = Gauge(
    "anomaly_ratio_window",
    "Fraction of the readings in the sliding window that were flagged.",
    multiprocess_mode="livemostrecent",
)
DRIFT_WINDOW_READINGS = Gauge(
    "drift_window_readings",
    "Readings currently in the sliding window (it fills up to DRIFT_WINDOW after a start).",
    multiprocess_mode="livemostrecent",
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


def trace_exemplar() -> dict[str, str] | None:
    """``{"trace_id": ...}`` of the current sampled span, for attaching to an observation; None when untraced."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": format(context.trace_id, "032x")}


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


class DriftGauges:
    """Publishes snapshots through the window gauges; the labelled children are resolved once, not per request."""

    def __init__(self, features: Sequence[str]) -> None:
        self._means = {name: FEATURE_WINDOW_MEAN.labels(name) for name in features}
        self._scores = {name: FEATURE_DRIFT_SCORE.labels(name) for name in features}

    def export(self, snapshot: DriftSnapshot) -> None:
        for name, mean in snapshot.means.items():
            self._means[name].set(mean)
            self._scores[name].set(snapshot.scores[name])
        ANOMALY_RATIO_WINDOW.set(snapshot.anomaly_ratio)
        DRIFT_WINDOW_READINGS.set(snapshot.readings)


# --- process metrics of several workers ----------------------------------------------------------------------

_PID_IN_FILE = re.compile(r"_(\d+)\.db$")

_SUMMED = {
    "process_cpu_seconds": "Total user and system CPU time of the live worker processes, in seconds.",
    "process_resident_memory_bytes": "Resident memory of the live worker processes, summed, in bytes.",
    "process_virtual_memory_bytes": "Virtual memory of the live worker processes, summed, in bytes.",
    "process_open_fds": "Open file descriptors of the live worker processes, summed.",
}


def live_worker_pids(directory: Path) -> list[int]:
    """Pids that wrote metrics into ``directory`` and are still running."""
    pids = {int(m.group(1)) for entry in directory.glob("*.db") if (m := _PID_IN_FILE.search(entry.name))}
    return sorted(pid for pid in pids if pid_alive(pid))


class ServerProcessCollector(Collector):
    """``process_*`` metrics summed over the live workers; ``process_start_time_seconds`` is the oldest worker's."""

    def __init__(self, directory: Path, registry: CollectorRegistry | None = None) -> None:
        self.directory = directory
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterable[Metric]:
        totals = dict.fromkeys(_SUMMED, 0.0)
        start_times: list[float] = []
        for pid in live_worker_pids(self.directory):
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                for sample in family.samples:
                    if family.name in totals:
                        totals[family.name] += sample.value
                    elif family.name == "process_start_time_seconds":
                        start_times.append(sample.value)
        if not start_times:  # no readable /proc (not Linux), nothing honest to report
            return
        yield CounterMetricFamily(
            "process_cpu_seconds", _SUMMED["process_cpu_seconds"], value=totals["process_cpu_seconds"]
        )
        for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"):
            yield GaugeMetricFamily(name, _SUMMED[name], value=totals[name])
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the oldest live worker since the Unix epoch, in seconds.",
            value=min(start_times),
        )


# --- exposition -------------------------------------------------------------------------------------------------

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def mark_dead_workers(directory: Path) -> list[int]:
    """Drop the live gauges of worker processes that no longer exist (crashed or restarted); returns their pids.

    Uvicorn has no hook for a dying worker, so the scrape does it: a ``live*`` gauge file whose pid is gone is
    removed through prometheus-client's ``mark_process_dead``.
    """
    dead = set()
    for entry in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_process_dead(pid, str(directory))
    return sorted(dead)


def render_metrics(accept: str, multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The exposition for a scrape: Prometheus text, or OpenMetrics if ``accept`` asks for it.

    In multiprocess mode a fresh registry merges every worker's files (plus Python platform info and the process
    metrics of the whole server, which prometheus-client cannot collect across processes by itself).
    """
    encoder, content_type = choose_encoder(accept)
    if multiprocess_dir is None:
        return encoder(REGISTRY), content_type
    mark_dead_workers(multiprocess_dir)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiprocess_dir))
    PlatformCollector(registry=registry)
    ServerProcessCollector(multiprocess_dir, registry=registry)
    return encoder(registry), content_type


MODEL_SWAPS = Counter(
    "model_swaps",
    "Changes of the serving model to MODEL_DIR's active version without a restart (result: swapped, or failed when "
    "the new version could not be loaded and the old one kept serving).",
    ["result"],
)
for _result in ("swapped", "failed"):
    MODEL_SWAPS.labels(_result)  # exported at 0 from the start, so the first swap is an increase
MODEL_REFUSING_ACTIVE = Gauge(
    "model_refusing_active",
    "1 while this worker keeps serving an older version because MODEL_DIR's active version (or active.json) does "
    "not load, else 0: a pod that restarts would not serve what this one serves, so versions differ across pods.",
    multiprocess_mode="livemax",
)


SHADOW_READINGS = Counter(
    "shadow_readings_scored",
    "Readings the shadow (challenger) model scored after the active one answered.",
    ["shadow_version"],
)
SHADOW_AGREEMENTS = Counter(
    "shadow_agreements",
    "Readings the shadow model flagged exactly as the active model did (both anomalous or both normal).",
    ["shadow_version"],
)
SHADOW_ANOMALIES = Counter(
    "shadow_anomalies",
    "Readings the shadow model flagged as anomalous (the active model's own count is anomalies_total).",
    ["shadow_version"],
)
SHADOW_SCORING_SECONDS = Counter(
    "shadow_scoring_seconds",
    "CPU seconds the shadow model spent scoring, bounded by SHADOW_MAX_SHARE of the wall-clock time per worker.",
    ["shadow_version"],
)
SHADOW_ERRORS = Counter(
    "shadow_errors",
    "Shadow scorings that failed; never an answer's failure, which the active model had already sent.",
)
SHADOW_SKIPPED = Counter(
    "shadow_skipped",
    "Batches the shadow model did not score because it had fallen behind (its queue was full) or had used its "
    "SHADOW_MAX_SHARE of the time: the answer is never held up by the shadow, the shadow's work is shed first.",
)
