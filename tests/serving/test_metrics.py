"""What /metrics exports in a single process: the full metric set, in-flight tracking, exemplars."""

from __future__ import annotations

import re
import threading

import httpx2
import pytest
import sklearn
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from app.detector.model import Detector
from app.scoring.metrics import LATENCY_BUCKETS
from app.serving.app import create_app
from app.serving.settings import Settings
from tests.support import BlockingDetector, ServerProcess

NORMAL = {"voltage": 230.4, "current": 11.2, "frequency": 50.003}
EXTREME = {"voltage": 410.0, "current": 200.0, "frequency": 45.0}
OPENMETRICS = {"accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
V2_TEMPLATES = {
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{model_name}",
    "/v2/models/{model_name}/ready",
    "/v2/models/{model_name}/infer",
    "/v2/models/{model_name}/versions/{version}",
    "/v2/models/{model_name}/versions/{version}/ready",
    "/v2/models/{model_name}/versions/{version}/infer",
}
"""The Open Inference Protocol's routes (app.serving.v2), each labelled by its template, never by the raw URL."""


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_scoring_metrics_follow_each_batch(client: TestClient):
    readings_before = sample("readings_scored_total")
    batches_before = sample("batch_size_readings_count")
    small_bucket_before = sample("batch_size_readings_bucket", le="5.0")
    client.post("/predict", json={"readings": [NORMAL] * 3 + [EXTREME]})
    client.post("/predict", json={"readings": [NORMAL] * 40})
    assert sample("readings_scored_total") == readings_before + 44
    assert sample("batch_size_readings_count") == batches_before + 2
    assert sample("batch_size_readings_bucket", le="5.0") == small_bucket_before + 1


def test_rejected_batches_are_not_counted_as_scored(client: TestClient):
    before = sample("readings_scored_total")
    client.post("/predict", json={"readings": [NORMAL, {"voltage": "x"}]})
    assert sample("readings_scored_total") == before


def test_model_info_and_load_duration(client: TestClient, detector: Detector):
    assert sample("model_info", model_version=detector.version, sklearn_version=sklearn.__version__) == 1.0
    assert sample("model_load_duration_seconds", source="loaded") > 0


def test_requests_in_flight_counts_a_request_while_it_runs(settings: Settings, detector: Detector):
    """A large batch is scored in the thread pool, so other requests (the scrape, the probes) are served meanwhile."""
    held = BlockingDetector.of(detector)
    entered, release, blocking = held.entered, held.release, held.blocking
    large = {"readings": [NORMAL] * 1000}  # above INLINE_BUDGET_STEPS for the default model
    with TestClient(create_app(settings, detector=blocking)) as client:
        idle = sample("requests_in_flight")
        worker = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": large})
        worker.start()
        assert entered.wait(timeout=30)
        assert sample("requests_in_flight") == idle + 1
        assert client.get("/health").status_code == 200  # not held up by the batch being scored
        assert client.get("/livez").status_code == 200
        scrape = client.get("/metrics").text  # the scrape itself is not in flight
        assert f"requests_in_flight {idle + 1}" in scrape
        release.set()
        worker.join(timeout=30)
        assert sample("requests_in_flight") == idle


def test_latency_histograms_cover_sub_millisecond_to_seconds(client: TestClient):
    client.post("/predict", json={"readings": [NORMAL]})
    text = client.get("/metrics").text
    edges = re.findall(
        r'request_latency_seconds_bucket\{le="([^"]+)",method="POST",path="/predict",status_class="2xx"\}', text
    )
    assert [float(edge) for edge in edges[:-1]] == list(LATENCY_BUCKETS)
    assert edges[-1] == "+Inf"
    assert LATENCY_BUCKETS[0] <= 0.0005 and LATENCY_BUCKETS[-1] >= 10  # noqa: PT018 - one statement of range


def test_latency_is_split_by_status_class(client: TestClient):
    """The latency SLO counts successful /predict requests only: a fast 422 must not pass for a fast success."""

    def count(status_class: str) -> float:
        return sample("request_latency_seconds_count", path="/predict", method="POST", status_class=status_class)

    ok, rejected = count("2xx"), count("4xx")
    client.post("/predict", json={"readings": [NORMAL]})
    client.post("/predict", json={"readings": [{"voltage": "x"}]})
    client.post("/predict", json={"readings": []})
    assert (count("2xx"), count("4xx")) == (ok + 1, rejected + 2)
    assert sample("request_latency_seconds_bucket", path="/predict", method="POST", status_class="2xx", le="0.1") > 0


@pytest.mark.slow
def test_the_series_the_slo_alerts_divide_by_exist_before_any_request(server: ServerProcess):
    """A fresh process exports the /predict 200, 500 and 503 counters and the shed counter at 0 before any
    /predict, so rate() sees the first failure of a replica (a series created on first use starts at 1)."""
    families = text_string_to_metric_families(httpx2.get(f"{server.url}/metrics", headers=OPENMETRICS).text)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
    for status in ("200", "500", "503"):
        key = ("requests_total", (("method", "POST"), ("path", "/predict"), ("status", status)))
        assert samples.get(key) == 0.0, key
    assert samples.get(("requests_shed_total", ())) == 0.0
    successes = (("method", "POST"), ("path", "/predict"), ("status_class", "2xx"))
    assert samples.get(("request_latency_seconds_count", successes)) == 0.0


def test_process_and_platform_collectors_are_exported(client: TestClient):
    text = client.get("/metrics").text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info", "python_gc_"):
        assert name in text


def test_no_created_series(client: TestClient):
    client.post("/predict", json={"readings": [NORMAL]})
    assert "_created" not in client.get("/metrics").text


def test_every_series_has_bounded_labels_after_hostile_traffic(client: TestClient):
    for i in range(20):
        client.get(f"/x/{i}")
        client.request("PROPFIND", f"/y/{i}")
        client.get(f"/v2/models/model-{i}/versions/{i}")  # answered (404) by a route: labelled by its template
    families = text_string_to_metric_families(client.get("/metrics", headers=OPENMETRICS).text)
    for family in families:
        for s in family.samples:
            assert set(s.labels) <= {"path", "method", "status", "status_class", "le", "feature", "model_version",
                                     "sklearn_version", "source", "implementation", "major", "minor",
                                     "patchlevel", "version", "generation", "result", "shadow_version",
                                     "outcome"}, s  # fmt: skip
            if "path" in s.labels:
                assert s.labels["path"] in {"/predict", "/health", "/livez", "/model", "/model/reload", "/metrics",
                                            "unmatched", "/docs", "/openapi.json", *V2_TEMPLATES}, s  # fmt: skip
            if "result" in s.labels:
                assert s.labels["result"] in {"swapped", "failed"}, s
            if "outcome" in s.labels:
                assert s.labels["outcome"] in {"held", "rolled_back", "superseded", "undecided"}, s


def exemplars_of(text: str, metric: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(sample labels, exemplar labels) for every sample of ``metric`` that carries an exemplar."""
    found = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and s.exemplar is not None:
                found.append((s.labels, s.exemplar.labels))
    return found


def test_traced_requests_leave_their_trace_id_as_exemplar(settings: Settings, detector: Detector):
    exporter = InMemorySpanExporter()
    with TestClient(create_app(settings, detector=detector, span_exporters=[exporter])) as client:
        client.post("/predict", json={"readings": [NORMAL, EXTREME]})
        text = client.get("/metrics", headers=OPENMETRICS).text
    (server_span,) = [s for s in exporter.get_finished_spans() if s.name == "POST /predict"]
    trace_id = format(server_span.context.trace_id, "032x")
    request_exemplars = exemplars_of(text, "request_latency_seconds_bucket")
    assert ({"path": "/predict", "method": "POST", "status_class": "2xx"}, {"trace_id": trace_id}) in [
        ({k: v for k, v in labels.items() if k != "le"}, exemplar) for labels, exemplar in request_exemplars
    ]
    assert ({"trace_id": trace_id}) in [e for _, e in exemplars_of(text, "inference_latency_seconds_bucket")]


def test_untraced_service_adds_no_exemplars(client: TestClient):
    """The registry is process-wide, so exemplars of earlier traced tests may remain; none may be added."""

    def trace_ids() -> set[str]:
        text = client.get("/metrics", headers=OPENMETRICS).text
        assert text.rstrip().endswith("# EOF")
        return {e["trace_id"] for _, e in exemplars_of(text, "request_latency_seconds_bucket")}

    before = trace_ids()
    for _ in range(5):
        client.post("/predict", json={"readings": [NORMAL]})
    assert trace_ids() <= before


@pytest.mark.parametrize("accept", ["", "text/plain", "*/*"])
def test_plain_text_format_by_default(client: TestClient, accept: str):
    response = client.get("/metrics", headers={"accept": accept} if accept else {})
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
