"""The Open Inference Protocol (v2) routes through the app: the same answers as /predict for the same readings, in
either tensor form, every error in the protocol's shape and status, /predict's key and budgets, named versions loaded
the verified way and kept, metrics labelled by route template, traces like /predict's.

The ecosystem's own clients against a live server are in test_v2_clients.py.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from app import FEATURES
from app.detector.artifact import forest_path, load_forest
from app.detector.model import Detector, ModelConfig
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer
from app.detector.training import train_version
from app.scoring import versions as versions_module
from app.scoring.versions import ModelNotFoundError, OtherVersions, VersionNotServableError
from app.serving.app import create_app
from app.serving.settings import Settings
from app.sim import GridSimulator
from tests.support import BlockingDetector

INFER = "/v2/models/gridwatch/infer"
SMALL = ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000)


def readings(n: int = 64, seed: int = 5) -> np.ndarray:
    """Simulated readings with anomalies among them, as an (n, 3) array in the features' order."""
    return GridSimulator(seed=seed, anomaly_rate=0.2).batch(n).features()


def matrix(X: np.ndarray, *, datatype: str = "FP64", name: str = "readings") -> dict:
    return {"name": name, "shape": list(X.shape), "datatype": datatype, "data": X.ravel().tolist()}


def columns(X: np.ndarray, order: tuple[str, ...] = FEATURES, datatype: str = "FP64") -> list[dict]:
    return [
        {"name": name, "shape": [len(X)], "datatype": datatype, "data": X[:, FEATURES.index(name)].tolist()}
        for name in order
    ]


def predicted(client: TestClient, X: np.ndarray) -> tuple[list[bool], list[float], str]:
    """What /predict answers for the same readings: flags, scores and the version."""
    answer = client.post("/predict", json={"readings": [dict(zip(FEATURES, row, strict=True)) for row in X.tolist()]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [p["anomaly"] for p in body["predictions"]], [p["score"] for p in body["predictions"]], body["model_version"]


def outputs(body: dict) -> dict[str, dict]:
    return {output["name"]: output for output in body["outputs"]}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- server and model metadata, health ------------------------------------------------------------------------------


def test_server_metadata_health_and_model_metadata(client: TestClient, detector: Detector):
    assert client.get("/v2").json() == {"name": "gridwatch", "version": client.app.version, "extensions": []}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/gridwatch/ready").json() == {"name": "gridwatch", "ready": True}
    metadata = client.get("/v2/models/gridwatch").json()
    assert metadata == {
        "name": "gridwatch",
        "versions": [detector.version],  # a folder from before versions: the served one only
        "platform": "isolation_forest",
        "inputs": [
            {"name": "readings", "datatype": "FP64", "shape": [-1, 3], "parameters": {"features": list(FEATURES)}}
        ],
        "outputs": [
            {"name": "anomaly", "datatype": "BOOL", "shape": [-1]},
            {"name": "score", "datatype": "FP64", "shape": [-1]},
        ],
    }
    assert client.get(f"/v2/models/gridwatch/versions/{detector.version}").json() == metadata
    assert client.get(f"/v2/models/gridwatch/versions/{detector.version}/ready").status_code == 200


def test_not_ready_is_503_in_the_protocols_shape_while_liveness_holds(settings: Settings, detector: Detector):
    release = threading.Event()

    def slow_loader() -> Detector:
        release.wait(timeout=30)
        return detector

    with TestClient(create_app(settings, loader=slow_loader)) as client:
        try:
            assert client.get("/v2/health/live").status_code == 200
            for path in ("/v2/health/ready", "/v2/models/gridwatch/ready", "/v2/models/gridwatch"):
                answer = client.get(path)
                assert answer.status_code == 503, path
                assert answer.json() == {"error": "model is loading"}
                assert answer.headers["retry-after"] == "5"
            answer = client.post(INFER, json={"inputs": [matrix(readings(2))]})
            assert (answer.status_code, answer.json()) == (503, {"error": "model is loading"})
        finally:
            release.set()


# --- inference: the same answers as /predict -------------------------------------------------------------------------


def test_one_matrix_tensor_answers_exactly_what_predict_answers(client: TestClient):
    X = readings(200)
    flags, scores, version = predicted(client, X)
    assert any(flags), "the batch holds anomalies"
    answer = client.post(INFER, json={"id": "req-7", "inputs": [matrix(X)]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("gridwatch", version, "req-7")
    assert body["parameters"]["served_by"] == client.app.state.instance
    assert [output["name"] for output in body["outputs"]] == ["anomaly", "score"]
    anomaly, score = outputs(body)["anomaly"], outputs(body)["score"]
    assert (anomaly["datatype"], anomaly["shape"], anomaly["data"]) == ("BOOL", [200], flags)
    assert (score["datatype"], score["shape"], score["data"]) == ("FP64", [200], scores)


def test_rows_and_named_columns_in_any_order_are_the_same_readings(client: TestClient):
    X = readings(50)
    flags, scores, _ = predicted(client, X)
    nested = {"name": "x", "shape": [50, 3], "datatype": "FP64", "data": X.tolist()}
    shuffled = columns(X, order=("frequency", "voltage", "current"))
    for inputs in ([nested], shuffled):
        body = client.post(INFER, json={"inputs": inputs}).json()
        assert outputs(body)["anomaly"]["data"] == flags
        assert outputs(body)["score"]["data"] == scores
        assert "id" not in body, "no id asked, none answered"


def test_fp32_data_are_read_as_32_bit_floats(client: TestClient):
    X32 = readings(40).astype(np.float32)
    flags, scores, _ = predicted(client, X32.astype(np.float64))  # what a float32 array is, exactly
    for inputs in ([matrix(X32, datatype="FP32")], columns(X32.astype(np.float64), datatype="FP32")):
        body = client.post(INFER, json={"inputs": inputs}).json()
        assert outputs(body)["score"]["data"] == scores
        assert outputs(body)["anomaly"]["data"] == flags
    decimal = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [231.2, 12.5, 50.01]}]}
    rounded = np.array([[231.2, 12.5, 50.01]], dtype=np.float32).astype(np.float64)
    assert outputs(client.post(INFER, json=decimal).json())["score"]["data"] == predicted(client, rounded)[1]


def test_the_outputs_asked_for_are_answered_in_their_order(client: TestClient):
    body = client.post(INFER, json={"inputs": [matrix(readings(3))], "outputs": [{"name": "score"}]}).json()
    assert [output["name"] for output in body["outputs"]] == ["score"]
    asked = [{"name": "score"}, {"name": "anomaly", "parameters": {"binary_data": False}}]
    body = client.post(INFER, json={"inputs": [matrix(readings(3))], "outputs": asked}).json()
    assert [output["name"] for output in body["outputs"]] == ["score", "anomaly"]


def test_a_body_without_content_type_is_read_as_json_as_tritonclient_sends_it(client: TestClient):
    import json

    answer = client.post(INFER, content=json.dumps({"inputs": [matrix(readings(2))]}).encode())
    assert answer.status_code == 200, answer.text


# --- errors ------------------------------------------------------------------------------------------------------


ROW = [231.2, 12.5, 50.01]


@pytest.mark.parametrize(
    ("request_body", "says"),
    [
        ({"inputs": []}, "send one input of shape [N, 3]"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}, "datatype 'INT64'"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, "shape [1, 4]"),
        ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": ROW}]}, "shape [3]"),
        (
            {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": ROW}]},
            "holds 6 values, its data has 3",
        ),
        ({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP64", "data": []}]}, "at least one reading"),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, "2", 3]}]},
            "must be finite numbers",
        ),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [[1, 2], [3]]}]}, "hold 3 values"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [[[1, 2, 3]]]}]}, "finite numbers"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1e39, 1, 1]}]}, "range of FP32"),
        ({"inputs": columns(np.array([ROW]))[:2]}, "inputs 'voltage', 'current'"),
        ({"inputs": [*columns(np.array([ROW]))[:2], {**columns(np.array([ROW]))[0], "name": "power"}]}, "'power'"),
        ({"inputs": [*columns(np.array([ROW]))[:2], {**columns(np.array([ROW, ROW]))[2]}]}, "different lengths"),
        ({"inputs": [matrix(np.array([ROW]))], "outputs": [{"name": "label"}]}, "unknown output 'label'"),
        ({"inputs": [matrix(np.array([ROW]))], "outputs": [{"name": "score"}, {"name": "score"}]}, "twice"),
        ({"inputs": [matrix(np.array([ROW]))], "parameters": {"explain": "yes"}}, "true or false"),
        ({"inputs": [{**matrix(np.array([ROW])), "parameters": {"binary_data_size": 24}}]}, "binary tensors"),
        ({"inputs": "readings"}, "not an inference request"),
        ({"id": 42, "inputs": [matrix(np.array([ROW]))]}, "not an inference request"),
        ([ROW], "not an inference request"),
    ],
)
def test_a_request_whose_tensors_are_not_readings_is_400_naming_what(client: TestClient, request_body, says: str):
    answer = client.post(INFER, json=request_body)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
    assert says in answer.json()["error"]


def test_contributions_equal_the_explanations_of_predict_whichever_way_they_are_asked(client: TestClient):
    """parameters.explain adds the contributions output (FP32, [N, 3]); naming it in outputs gives it alone; its
    rows are /predict?explain=true's contributions, and the scores are unchanged."""
    X = readings(16)
    rows = [dict(zip(FEATURES, row, strict=True)) for row in X.tolist()]
    explained = client.post("/predict?explain=true", json={"readings": rows}).json()["predictions"]
    expected = np.array([[f["contribution"] for f in p["explanation"]["features"]] for p in explained], np.float32)
    asked = client.post(INFER, json={"inputs": [matrix(X)], "parameters": {"explain": True}}).json()
    by_name = {output["name"]: output for output in asked["outputs"]}
    assert list(by_name) == ["anomaly", "score", "contributions"]
    contributions = by_name["contributions"]
    assert (contributions["datatype"], contributions["shape"]) == ("FP32", [16, 3])
    np.testing.assert_array_equal(np.array(contributions["data"], np.float32).reshape(16, 3), expected)
    assert by_name["score"]["data"] == [p["score"] for p in explained], "scored as without explanations"
    alone = client.post(INFER, json={"inputs": [matrix(X)], "outputs": [{"name": "contributions"}]}).json()
    assert [output["name"] for output in alone["outputs"]] == ["contributions"]
    assert alone["outputs"][0]["data"] == contributions["data"]
    plain = client.post(INFER, json={"inputs": [matrix(X)], "parameters": {"explain": False}}).json()
    assert [output["name"] for output in plain["outputs"]] == ["anomaly", "score"]


def test_malformed_json_and_binary_tensors_are_400(client: TestClient):
    answer = client.post(INFER, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("the body is not JSON")
    binary = client.post(INFER, content=b"{}", headers={"Inference-Header-Content-Length": "2"})
    assert binary.status_code == 400
    assert "binary tensor extension is not supported" in binary.json()["error"]


def test_unknown_model_or_version_is_404(client: TestClient):
    body = {"inputs": [matrix(readings(2))]}
    for method, path in [
        ("GET", "/v2/models/iris"),
        ("GET", "/v2/models/iris/ready"),
        ("POST", "/v2/models/iris/infer"),
        ("GET", "/v2/models/gridwatch/versions/0123456789ab"),
        ("GET", "/v2/models/gridwatch/versions/0123456789ab/ready"),
        ("POST", "/v2/models/gridwatch/versions/0123456789ab/infer"),
        ("POST", "/v2/models/gridwatch/versions/.staging-x/infer"),
        ("POST", "/v2/models/gridwatch/versions/a%00b/infer"),
    ]:
        answer = client.request(method, path, json=body if method == "POST" else None)
        assert answer.status_code == 404, (path, answer.text)
        assert set(answer.json()) == {"error"}


def test_the_limits_of_predict_apply(settings: Settings, detector: Detector):
    limited = settings.model_copy(update={"max_batch": 10, "max_body_bytes": 2_000})
    with TestClient(create_app(limited, detector=detector)) as client:
        too_many = client.post(INFER, json={"inputs": [matrix(readings(11))]})
        assert too_many.status_code == 413
        assert too_many.json() == {"error": "11 readings in one request exceed MAX_BATCH=10"}
        assert client.post(INFER, json={"inputs": [matrix(readings(10))]}).status_code == 200
        too_big = client.post(INFER, json={"inputs": [matrix(readings(10))], "id": "x" * 2_000})
        assert too_big.status_code == 413
        assert "MAX_BODY_BYTES=2000" in too_big.json()["error"]
        wrong_type = client.post(INFER, content=b"{}", headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
        assert set(wrong_type.json()) == {"error"}


def test_inference_shares_predicts_in_flight_limit_and_is_shed_with_503(settings: Settings, detector: Detector):
    held = BlockingDetector.of(detector)
    entered, release, blocking = held.entered, held.release, held.blocking
    large = {"readings": [dict(zip(FEATURES, ROW, strict=True))] * 1000}  # scored in the thread pool
    with TestClient(create_app(settings.model_copy(update={"max_inflight": 1}), detector=blocking)) as client:
        worker = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": large})
        worker.start()
        try:
            assert entered.wait(timeout=30)
            shed_before = sample("requests_shed_total")
            answer = client.post(INFER, json={"inputs": [matrix(readings(2))]})
            assert answer.status_code == 503
            assert answer.json() == {"error": "1 requests in flight, MAX_INFLIGHT=1; retry in 1s"}
            assert answer.headers["retry-after"] == "1"
            assert sample("requests_shed_total") == shed_before + 1
        finally:
            release.set()
            worker.join(timeout=30)


def test_the_api_key_guards_the_model_routes_as_it_guards_predict(model_dir: Path, detector: Detector):
    keyed_settings = Settings(model_dir=model_dir, train_if_missing=False, api_key="s3cret")
    with TestClient(create_app(keyed_settings, detector=detector)) as client:
        for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        for method, path in [("GET", "/v2/models/gridwatch"), ("GET", "/v2/models/gridwatch/ready"), ("POST", INFER)]:
            answer = client.request(method, path, json={"inputs": [matrix(readings(2))]})
            assert answer.status_code == 401, path
            assert answer.json() == {"error": "missing or wrong API key: send it in the X-API-Key header"}
            assert answer.headers["www-authenticate"].startswith("ApiKey")
        keyed = client.post(INFER, json={"inputs": [matrix(readings(2))]}, headers={"X-API-Key": "s3cret"})
        assert keyed.status_code == 200


# --- named versions -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, str]:
    """A store of three versions: the first active, two challengers."""
    store = ModelStore(tmp_path_factory.mktemp("v2-store") / "models")
    active, _ = train_version(store, SMALL, promote=True)
    second, _ = train_version(store, replace(SMALL, contamination=0.05, random_state=3), promote=False)
    third, _ = train_version(store, replace(SMALL, random_state=11), promote=False)
    return store.root, active.version, second.version, third.version


@pytest.fixture
def store(store_template, tmp_path: Path) -> ModelStore:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(store_template[0], root)
    return ModelStore(root)


@pytest.fixture
def versioned(store: ModelStore) -> TestClient:
    settings = Settings(model_dir=store.root, train_if_missing=False)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.model.wait(timeout=60)
        yield client


def test_metadata_lists_the_stores_versions(versioned: TestClient, store_template):
    _, active, second, third = store_template
    assert versioned.get("/v2/models/gridwatch").json()["versions"] == sorted([active, second, third])


def test_a_challenger_is_scored_by_its_own_version_without_touching_the_served_models_metrics(
    versioned: TestClient, store: ModelStore, store_template
):
    _, active, second, _ = store_template
    X = readings(300, seed=9)
    expected_flags, expected_scores = load_forest(store.artifact_of(second)).predict_batch(X)
    served_flags, _, served_version = predicted(versioned, X)
    assert served_version == active
    assert served_flags != expected_flags.tolist(), "the two versions really differ on these readings"
    scored = sample("readings_scored_total")
    answer = versioned.post(f"/v2/models/gridwatch/versions/{second}/infer", json={"inputs": [matrix(X)]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == second
    assert outputs(body)["anomaly"]["data"] == expected_flags.tolist()
    assert outputs(body)["score"]["data"] == expected_scores.tolist()
    assert sample("readings_scored_total") == scored, "a hand comparison is not the served model's traffic"
    active_answer = versioned.post(f"/v2/models/gridwatch/versions/{active}/infer", json={"inputs": [matrix(X)]})
    assert outputs(active_answer.json())["anomaly"]["data"] == served_flags
    assert sample("readings_scored_total") == scored + len(X), "the served version is the served model"


def test_named_versions_are_loaded_once_the_two_most_recent_kept(
    versioned: TestClient, store_template, monkeypatch: pytest.MonkeyPatch
):
    _, _, second, third = store_template
    loads: list[str] = []
    real = versions_module.load_for_serving

    def counted(store, version, scorer, **options):
        loads.append(version)
        return real(store, version, scorer, **options)

    monkeypatch.setattr(versions_module, "load_for_serving", counted)
    body = {"inputs": [matrix(readings(4))]}
    for version in (second, second, third, second, third, second):
        assert versioned.post(f"/v2/models/gridwatch/versions/{version}/infer", json=body).status_code == 200
    assert versioned.get(f"/v2/models/gridwatch/versions/{third}/ready").json() == {"name": "gridwatch", "ready": True}
    assert loads == [second, third], "each version loaded once for the whole comparison"


def test_a_version_that_does_not_load_is_409_and_the_served_one_keeps_answering(
    versioned: TestClient, store: ModelStore, store_template
):
    _, _, second, _ = store_template
    forest = forest_path(store.artifact_of(second))
    forest.write_bytes(forest.read_bytes()[:-10])
    for method, path in [
        ("POST", f"/v2/models/gridwatch/versions/{second}/infer"),
        ("GET", f"/v2/models/gridwatch/versions/{second}/ready"),
        ("GET", f"/v2/models/gridwatch/versions/{second}"),
    ]:
        answer = versioned.request(method, path, json={"inputs": [matrix(readings(2))]} if method == "POST" else None)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"].startswith(f"version {second} cannot be served: ")
    assert versioned.post(INFER, json={"inputs": [matrix(readings(2))]}).status_code == 200


def test_other_versions_keep_a_bounded_number_and_reread_changed_files(store: ModelStore, store_template):
    _, active, second, third = store_template
    others = OtherVersions(store, Scorer.numpy, size=1)
    first = others.get(second)
    assert others.cached(second) is first
    others.get(third)
    assert others.cached(second) is None, "only the most recent one is kept"
    with pytest.raises(ModelNotFoundError):
        others.get("0123456789ab")
    with pytest.raises(ModelNotFoundError):
        others.get("../models")
    forest = forest_path(store.artifact_of(active))
    damaged = forest.read_bytes()
    forest.write_bytes(damaged[:-10])
    with pytest.raises(VersionNotServableError):
        others.get(active)
    forest.write_bytes(damaged[:-10] + b"0123456789")  # still wrong, and changed: read again, refused again
    with pytest.raises(VersionNotServableError, match="cannot be served"):
        others.get(active)


# --- metrics and traces -------------------------------------------------------------------------------------------


def test_metrics_are_labelled_by_route_template_and_inference_series_exist_from_the_start(client: TestClient):
    template = "/v2/models/{model_name}/versions/{version}/infer"
    for status in ("200", "500", "503"):
        for path in ("/v2/models/{model_name}/infer", template):
            labels = {"path": path, "method": "POST", "status": status}
            assert REGISTRY.get_sample_value("requests_total", labels) is not None, labels
    before = sample("requests_total", path=template, method="POST", status="404")
    client.post("/v2/models/gridwatch/versions/0123456789ab/infer", json={"inputs": [matrix(readings(2))]})
    assert sample("requests_total", path=template, method="POST", status="404") == before + 1
    successes = {"path": "/v2/models/{model_name}/infer", "method": "POST", "status_class": "2xx"}
    ok = sample("request_latency_seconds_count", **successes)
    client.post(INFER, json={"inputs": [matrix(readings(2))]})
    assert sample("request_latency_seconds_count", **successes) == ok + 1


def test_inference_is_traced_like_predict_and_probes_are_not(settings: Settings, detector: Detector):
    exporter = InMemorySpanExporter()
    with TestClient(create_app(settings, detector=detector, span_exporters=[exporter])) as client:
        for path in ("/v2/health/live", "/v2/health/ready"):
            client.get(path)
        assert exporter.get_finished_spans() == ()
        client.post(INFER, json={"inputs": [matrix(np.array([ROW, [410.0, 200.0, 45.0]]))]})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, inference = spans["POST /v2/models/{model_name}/infer"], spans["score_batch"]
    assert server.kind is SpanKind.SERVER
    assert inference.parent is not None
    assert inference.parent.span_id == server.context.span_id
    assert inference.attributes["gridwatch.batch_size"] == 2
    assert inference.attributes["gridwatch.model_version"] == detector.version
