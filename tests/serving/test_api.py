"""The HTTP contract: routes, answers, every bad-input case, readiness, and the foundation metrics."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app import FEATURES
from app.detector.artifact import metadata_path
from app.detector.errors import ModelArtifactError
from app.detector.model import Detector
from app.serving.app import create_app
from app.serving.edge.body_errors import MAX_REPORTED_ERRORS
from app.serving.settings import Settings
from app.sim import GridSimulator

NORMAL = {"voltage": 230.4, "current": 11.2, "frequency": 50.003}
EXTREME = {"voltage": 410.0, "current": 200.0, "frequency": 45.0}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post_raw(client: TestClient, body: str | bytes, content_type: str = "application/json"):
    return client.post("/predict", content=body, headers={"content-type": content_type})


# --- readiness and liveness -------------------------------------------------------------------------------------


def test_livez_answers_while_the_model_is_loading_and_health_says_why_not_ready(settings: Settings, detector):
    release = threading.Event()

    def slow_loader() -> Detector:
        release.wait(timeout=30)
        return detector

    app = create_app(settings, loader=slow_loader)
    with TestClient(app) as client:
        assert client.get("/livez").json() == {"status": "alive"}
        waiting = client.get("/health")
        assert waiting.status_code == 503
        assert waiting.json()["status"] == "loading"
        assert "loading" in waiting.json()["reason"]
        assert waiting.headers["retry-after"] == "5"
        refused = client.post("/predict", json={"readings": [NORMAL]})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert client.get("/model").status_code == 503

        release.set()
        assert app.state.model.wait(timeout=30)
        assert client.get("/health").status_code == 200
        assert client.post("/predict", json={"readings": [NORMAL]}).status_code == 200


def test_failed_model_load_keeps_the_process_alive_and_unready(settings: Settings, tmp_path: Path):
    broken = tmp_path / "broken.joblib"

    def failing_loader() -> Detector:
        raise ModelArtifactError(broken, "SHA-256 mismatch")

    app = create_app(settings, loader=failing_loader)
    with TestClient(app) as client:
        assert app.state.model.wait(timeout=30)
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed"
        assert str(broken) in health.json()["reason"]
        assert client.get("/livez").status_code == 200


def test_app_loads_the_model_from_model_dir_on_start(settings: Settings, detector: Detector):
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.model.wait(timeout=60)
        assert client.get("/health").json()["model_version"] == detector.version


def test_health_reports_model_and_where_it_runs(client: TestClient, detector: Detector):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == "isolation_forest"
    assert body["features"] == list(FEATURES)
    assert body["model_version"] == detector.version
    assert body["pod"] == "pod-a"
    assert body["node"] == "node-1"
    assert body["instance"].startswith("pod-a:")


# --- /predict ---------------------------------------------------------------------------------------------------


def test_predict_scores_in_input_order(client: TestClient, detector: Detector):
    readings = [NORMAL, EXTREME, NORMAL, EXTREME, NORMAL]
    response = client.post("/predict", json={"readings": readings})
    assert response.status_code == 200
    body = response.json()
    assert [p["anomaly"] for p in body["predictions"]] == [False, True, False, True, False]
    assert body["anomalies"] == 2
    assert body["total"] == 5
    assert body["served_by"] == client.get("/health").json()["instance"]
    expected = detector.predict_batch(np.array([[r[f] for f in FEATURES] for r in readings]))[1]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected, rtol=0, atol=1e-12)
    for prediction in body["predictions"]:
        assert prediction["anomaly"] == (prediction["score"] > 0)


def test_predict_accepts_simulator_records_with_extra_fields_and_integers(client: TestClient):
    records = GridSimulator(anomaly_rate=0.0, seed=1).batch(50).to_records()
    records[0] = {**records[0], "sensor_id": "feeder-7", "voltage": 230}
    response = client.post("/predict", json={"readings": records})
    assert response.status_code == 200
    assert response.json()["total"] == 50


def test_predict_accepts_a_json_media_type_with_charset(client: TestClient):
    response = post_raw(client, json.dumps({"readings": [NORMAL]}), "application/json; charset=utf-8")
    assert response.status_code == 200


def test_predict_accepts_exactly_max_batch(client: TestClient):
    response = client.post("/predict", json={"readings": [NORMAL] * 10_000})
    assert response.status_code == 200
    assert response.json()["total"] == 10_000


def error_locations(response) -> list[list[object]]:
    return [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    ("reading", "field", "message"),
    [
        ({"current": 1.0, "frequency": 50.0}, "voltage", "field required"),
        ({**NORMAL, "current": "12.5"}, "current", "must be a number, got string '12.5'"),
        ({**NORMAL, "frequency": "fifty"}, "frequency", "must be a number, got string 'fifty'"),
        ({**NORMAL, "voltage": None}, "voltage", "must be a number, got null"),
        ({**NORMAL, "voltage": True}, "voltage", "must be a number, got boolean true"),
        ({**NORMAL, "current": [1.0]}, "current", "must be a number, got array"),
    ],
)
def test_bad_field_is_named_with_its_row(client: TestClient, reading, field, message):
    response = client.post("/predict", json={"readings": [NORMAL, NORMAL, reading]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "readings", 2, field]
    assert error["msg"] == message


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e999", "1e999")],
)
def test_non_finite_numbers_are_named_with_their_row(client: TestClient, literal: str, shown: str):
    body = '{"readings": [{"voltage": 230.0, "current": 1.0, "frequency": 50.0}, ' + (
        '{"voltage": 230.0, "current": ' + literal + ', "frequency": 50.0}]}'
    )
    response = post_raw(client, body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "readings", 1, "current"]
    assert error["msg"] == f"must be a finite number, got {shown}"


def test_integer_beyond_double_range_is_rejected(client: TestClient):
    body = '{"readings": [{"voltage": 1' + "0" * 400 + ', "current": 1.0, "frequency": 50.0}]}'
    response = post_raw(client, body)
    assert response.status_code == 422
    assert error_locations(response) == [["body", "readings", 0, "voltage"]]


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        ('{"readings": []}', ["body", "readings"], "at least one reading"),
        ("{}", ["body", "readings"], "field required"),
        ('{"readings": {"voltage": 1}}', ["body", "readings"], "must be an array of readings, got object"),
        ("[1, 2]", ["body"], "expected a JSON object"),
        ('{"readings": [42]}', ["body", "readings", 0], "must be a JSON object, got number"),
        ('{"readings": [{"voltage": 230.0,', ["body"], "malformed JSON"),
        ("", ["body"], "malformed JSON"),
        ("[" * 5000 + "]" * 5000, ["body"], "malformed JSON"),
    ],
)
def test_malformed_bodies_get_a_422_naming_the_problem(client: TestClient, body: str, loc, fragment: str):
    response = post_raw(client, body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert fragment in error["msg"]


def test_many_bad_rows_are_reported_with_a_count_of_the_rest(client: TestClient):
    response = client.post("/predict", json={"readings": [{"voltage": "x"}] * 100})
    assert response.status_code == 422
    detail = response.json()["detail"]
    listed = MAX_REPORTED_ERRORS // 3  # whole readings are listed, three errors each, within the cap
    assert len(detail) == listed * 3 + 1
    assert {tuple(error["loc"][:3]) for error in detail[:-1]} == {("body", "readings", row) for row in range(listed)}
    assert detail[-1] == {
        "type": "too_many_errors",
        "loc": ["body", "readings"],
        "msg": f"100 of 100 readings are invalid; the errors of the first {listed} are listed",
    }


def test_batch_over_max_batch_is_413(settings: Settings, detector: Detector):
    small = settings.model_copy(update={"max_batch": 5})
    with TestClient(create_app(small, detector=detector)) as client:
        assert client.post("/predict", json={"readings": [NORMAL] * 5}).status_code == 200
        response = client.post("/predict", json={"readings": [NORMAL] * 6})
    assert response.status_code == 413
    assert response.json()["detail"] == ("batch of 6 readings exceeds MAX_BATCH=5; split it into smaller requests")


def test_body_over_the_size_limit_is_413_before_parsing(settings: Settings, detector: Detector):
    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small, detector=detector)) as client:
        response = post_raw(client, b"x" * 4096)  # not JSON at all: refused for its size, not its syntax
        chunked = client.post(
            "/predict",
            content=iter([b'{"readings": [', b" " * 3000, b"]}"]),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert "MAX_BODY_BYTES=2048" in response.json()["detail"]
    assert chunked.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_not_declared_as_json_is_415(client: TestClient, content_type: str | None):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=json.dumps({"readings": [NORMAL]}), headers=headers)
    assert response.status_code == 415
    assert "Content-Type must be application/json" in response.json()["detail"]


def test_unexpected_error_is_a_logged_500_and_the_service_keeps_serving(
    settings: Settings, detector: Detector, caplog: pytest.LogCaptureFixture
):
    class Exploding(Detector):
        def predict_batch(self, X):
            if X.shape[0] == 3:
                raise RuntimeError("boom")
            return super().predict_batch(X)

    exploding = Exploding(detector.forest, detector.metadata)
    before = sample("requests_total", path="/predict", method="POST", status="500")
    with TestClient(create_app(settings, detector=exploding), raise_server_exceptions=False) as client:
        failed = client.post("/predict", json={"readings": [NORMAL] * 3})
        assert failed.status_code == 500
        assert failed.json() == {"detail": "internal server error"}
        assert client.post("/predict", json={"readings": [NORMAL]}).status_code == 200
    assert sample("requests_total", path="/predict", method="POST", status="500") == before + 1
    assert "RuntimeError: boom" in caplog.text


# --- other routes -----------------------------------------------------------------------------------------------


def test_model_route_returns_the_metadata_file(client: TestClient, model_dir: Path):
    on_disk = json.loads(metadata_path(model_dir / "iso_forest.joblib").read_text())
    assert client.get("/model").json() == on_disk


def test_unknown_route_and_wrong_method(client: TestClient):
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_openapi_documents_the_predict_contract(client: TestClient):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["readings"]["maxItems"] == 10_000
    assert set(schema["properties"]["readings"]["items"]["required"]) == set(FEATURES)
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])


# --- metrics ----------------------------------------------------------------------------------------------------


def test_every_response_is_counted_once_by_route_template(client: TestClient):
    cases = [
        ("get", "/health", None, "/health", "GET", "200"),
        ("post", "/predict", {"readings": [NORMAL]}, "/predict", "POST", "200"),
        ("post", "/predict", {"readings": []}, "/predict", "POST", "422"),
        ("get", "/predict", None, "/predict", "GET", "405"),
        ("get", "/definitely/not/here", None, "unmatched", "GET", "404"),
    ]
    for method, url, payload, path, label_method, status in cases:
        before = sample("requests_total", path=path, method=label_method, status=status)
        latency = {"path": path, "method": label_method, "status_class": status[0] + "xx"}
        latency_before = sample("request_latency_seconds_count", **latency)
        getattr(client, method)(url, **({"json": payload} if payload is not None else {}))
        assert sample("requests_total", path=path, method=label_method, status=status) == before + 1, url
        assert sample("request_latency_seconds_count", **latency) == latency_before + 1


def test_random_urls_and_methods_collapse_into_bounded_labels(client: TestClient):
    before = sample("requests_total", path="unmatched", method="GET", status="404")
    for i in range(50):
        client.get(f"/scan/{i}/admin.php?id={i}")
    client.request("BREW", "/coffee")
    assert sample("requests_total", path="unmatched", method="GET", status="404") == before + 50
    assert sample("requests_total", path="unmatched", method="other", status="404") >= 1
    paths = {s.labels["path"] for m in REGISTRY.collect() if m.name == "requests" for s in m.samples}
    assert not any(p.startswith("/scan") for p in paths)


def test_anomalies_and_inference_latency_are_recorded(client: TestClient):
    anomalies_before = sample("anomalies_total")
    inferences_before = sample("inference_latency_seconds_count")
    body = client.post("/predict", json={"readings": [EXTREME, NORMAL, EXTREME]}).json()
    assert sample("anomalies_total") == anomalies_before + body["anomalies"] == anomalies_before + 2
    assert sample("inference_latency_seconds_count") == inferences_before + 1


def test_metrics_exposition_and_openmetrics_negotiation(client: TestClient):
    client.post("/predict", json={"readings": [NORMAL]})
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    for name in ("requests_total", "request_latency_seconds_bucket", "inference_latency_seconds_bucket"):
        assert name in text.text
    assert "anomalies_total" in text.text
    open_metrics = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")


# --- overload -------------------------------------------------------------------------------------------------------


def test_past_max_inflight_a_request_is_refused_at_once_with_retry_after(
    settings: Settings, detector: Detector, monkeypatch: pytest.MonkeyPatch
):
    """One /predict holds the only slot (its scoring waits on an event in the thread pool); the next is shed with
    503 and Retry-After without waiting, probes still answer, and the held request completes normally."""
    from concurrent.futures import ThreadPoolExecutor

    from app.scoring.holder import LoadedModel

    entered, release = threading.Event(), threading.Event()
    score = detector.predict_batch

    def held(X: np.ndarray):
        entered.set()
        release.wait(timeout=30)
        return score(X)

    monkeypatch.setattr(detector, "predict_batch", held)
    monkeypatch.setattr(LoadedModel, "scores_inline", lambda self, rows: False)  # score in the thread pool
    shed_before = sample("requests_shed_total")
    app = create_app(settings.model_copy(update={"max_inflight": 1}), detector=detector)
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/predict", json={"readings": [NORMAL]})
        assert entered.wait(timeout=30)
        shed = client.post("/predict", json={"readings": [NORMAL]})
        probes = [client.get(path).status_code for path in ("/health", "/livez", "/metrics")]
        release.set()
        assert first.result(timeout=30).status_code == 200
        after = client.post("/predict", json={"readings": [NORMAL]})
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert "MAX_INFLIGHT=1" in shed.json()["detail"]
    assert probes == [200, 200, 200]
    assert after.status_code == 200, "the slot is free again"
    assert sample("requests_shed_total") == shed_before + 1
