"""The Open Inference Protocol spoken with the ecosystem's own clients against a live ``gridwatch serve`` on
127.0.0.1: Triton's ``tritonclient.http`` (JSON tensors, ``binary_data=False``) and the protocol's generated
``open-inference-openapi`` client send and read real requests, their answers equal /predict's for the same readings,
a challenger version is scored by name, and schemathesis finds no 5xx (nor any undocumented answer) on the /v2
routes of the live server, with the API key on as a deployment has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import httpx2
import numpy as np
import pytest
import schemathesis
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from open_inference.openapi.client import InferenceRequest, OpenInferenceClient
from schemathesis.generation import GenerationMode
from tritonclient.utils import InferenceServerException

from app import FEATURES
from app.detector.artifact import load_forest
from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_version
from app.sim import GridSimulator
from tests.serving.test_fuzz import CHECKS, fuzz_config
from tests.serving.test_metrics import V2_TEMPLATES
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

KEY = "v2-s3cret"
KEYED = {"X-API-Key": KEY}
SMALL = ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000)


class Live:
    """The live server, its store's active and challenger versions, and /predict's answers for readings."""

    def __init__(self, server: ServerProcess, store: ModelStore, active: str, challenger: str) -> None:
        self.server, self.store, self.active, self.challenger = server, store, active, challenger

    def predict(self, X: np.ndarray) -> tuple[list[bool], list[float]]:
        records = [dict(zip(FEATURES, row, strict=True)) for row in X.tolist()]
        answer = httpx2.post(f"{self.server.url}/predict", json={"readings": records}, headers={**KEYED}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == self.active
        predictions = answer.json()["predictions"]
        return [p["anomaly"] for p in predictions], [p["score"] for p in predictions]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    store = ModelStore(tmp_path_factory.mktemp("v2-clients") / "models")
    active, _ = train_version(store, SMALL, promote=True)
    challenger, _ = train_version(store, replace(SMALL, contamination=0.05, random_state=3), promote=False)
    env = {"MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "0", "API_KEY": KEY, "MAX_BATCH": "500"}
    with ServerProcess(env=env) as server:
        yield Live(server, store, active.version, challenger.version)


def readings(n: int, seed: int = 21) -> np.ndarray:
    return GridSimulator(seed=seed, anomaly_rate=0.2).batch(n).features()


# --- tritonclient ------------------------------------------------------------------------------------------------


@pytest.fixture
def triton_client(live: Live) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{live.server.port}")
    yield client
    client.close()


def test_tritonclient_sees_a_live_ready_server_and_the_models_metadata(live: Live, triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("gridwatch", headers={**KEYED})
    assert not triton_client.is_model_ready("iris", headers={**KEYED})
    assert triton_client.get_server_metadata() == {"name": "gridwatch", "version": "0.1.0", "extensions": []}
    metadata = triton_client.get_model_metadata("gridwatch", headers={**KEYED})
    assert sorted(metadata["versions"]) == sorted([live.active, live.challenger])
    (tensor,) = metadata["inputs"]
    assert (tensor["datatype"], tensor["shape"], tensor["parameters"]["features"]) == ("FP64", [-1, 3], list(FEATURES))
    with pytest.raises(InferenceServerException, match="missing or wrong API key"):
        triton_client.get_model_metadata("gridwatch")


def test_tritonclient_inference_answers_what_predict_answers(live: Live, triton_client):
    X = readings(300)
    flags, scores = live.predict(X)
    assert any(flags)
    readings_input = triton.InferInput("readings", list(X.shape), "FP64")
    readings_input.set_data_from_numpy(X, binary_data=False)
    asked = [triton.InferRequestedOutput(name, binary_data=False) for name in ("anomaly", "score")]
    result = triton_client.infer("gridwatch", [readings_input], outputs=asked, request_id="t-1", headers={**KEYED})
    assert result.as_numpy("anomaly").tolist() == flags
    assert result.as_numpy("score").tolist() == scores
    response = result.get_response()
    assert (response["id"], response["model_version"]) == ("t-1", live.active)
    explained = triton_client.infer(
        "gridwatch", [readings_input], parameters={"explain": True}, headers={**KEYED}
    ).as_numpy("contributions")
    assert explained.dtype == np.float32
    assert explained.shape == (300, 3)
    flagged = np.array(flags)
    np.testing.assert_allclose(explained[flagged].sum(axis=1), 1.0, rtol=1e-6)  # a share per feature


def test_tritonclient_float32_columns_and_a_challenger_by_version(live: Live, triton_client):
    X32 = readings(120, seed=4).astype(np.float32)
    flags, scores = live.predict(X32.astype(np.float64))
    columns = []
    for i, name in enumerate(FEATURES):
        column = triton.InferInput(name, [len(X32)], "FP32")
        column.set_data_from_numpy(np.ascontiguousarray(X32[:, i]), binary_data=False)
        columns.append(column)
    asked = [triton.InferRequestedOutput("score", binary_data=False)]
    result = triton_client.infer("gridwatch", columns, outputs=asked, headers={**KEYED})
    assert result.as_numpy("score").tolist() == scores
    assert result.as_numpy("anomaly") is None, "only the outputs asked for"
    expected_flags, expected_scores = load_forest(live.store.artifact_of(live.challenger)).predict_batch(
        X32.astype(np.float64)
    )
    assert expected_flags.tolist() != flags, "the two versions really differ on these readings"
    by_version = triton_client.infer("gridwatch", columns, model_version=live.challenger, headers={**KEYED})
    assert by_version.as_numpy("anomaly").tolist() == expected_flags.tolist()
    assert by_version.as_numpy("score").tolist() == expected_scores.tolist()
    assert by_version.get_response()["model_version"] == live.challenger


def test_tritonclients_binary_tensors_get_a_clear_400(live: Live, triton_client):
    binary = triton.InferInput("readings", [2, 3], "FP64")
    binary.set_data_from_numpy(readings(2), binary_data=True)
    with pytest.raises(InferenceServerException, match="binary tensor extension is not supported") as refused:
        triton_client.infer("gridwatch", [binary], headers={**KEYED})
    assert refused.value.status() == "400"


# --- open-inference-openapi -------------------------------------------------------------------------------------


@pytest.fixture
def oip_client(live: Live) -> Iterator[OpenInferenceClient]:
    with httpx.Client(headers={**KEYED}, timeout=30) as http:
        yield OpenInferenceClient(base_url=live.server.url, httpx_client=http)


def test_open_inference_client_reads_metadata_and_health(live: Live, oip_client: OpenInferenceClient):
    oip_client.check_server_liveness()
    oip_client.check_server_readiness()
    oip_client.check_model_readiness("gridwatch")
    oip_client.check_model_version_readiness("gridwatch", live.challenger)
    server = oip_client.read_server_metadata()
    assert (server.name, server.extensions) == ("gridwatch", [])
    metadata = oip_client.read_model_metadata("gridwatch")
    assert (metadata.name, metadata.platform) == ("gridwatch", "isolation_forest")
    assert sorted(metadata.versions or []) == sorted([live.active, live.challenger])
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs or []] == [("anomaly", "BOOL", [-1]),
                                                                             ("score", "FP64", [-1])]  # fmt: skip
    assert oip_client.read_model_version_metadata("gridwatch", live.challenger).name == "gridwatch"


def test_open_inference_client_inference_answers_what_predict_answers(live: Live, oip_client: OpenInferenceClient):
    X = readings(250, seed=8)
    flags, scores = live.predict(X)
    request = InferenceRequest(
        id="oip-1",
        inputs=[{"name": "readings", "shape": list(X.shape), "datatype": "FP64", "data": X.tolist()}],
        outputs=[{"name": "anomaly"}, {"name": "score"}],
    )
    answer = oip_client.model_infer("gridwatch", request=request)
    assert (answer.id, answer.model_name, answer.model_version) == ("oip-1", "gridwatch", live.active)
    by_name = {output.name: output for output in answer.outputs}
    assert (by_name["anomaly"].datatype, by_name["anomaly"].shape) == ("BOOL", [len(X)])
    assert by_name["anomaly"].data.__root__ == flags
    assert by_name["score"].data.__root__ == scores
    challenger = oip_client.model_version_infer("gridwatch", live.challenger, request=request)
    expected_flags, _ = load_forest(live.store.artifact_of(live.challenger)).predict_batch(X)
    assert {o.name: o for o in challenger.outputs}["anomaly"].data.__root__ == expected_flags.tolist()


def test_open_inference_client_gets_the_protocols_errors(live: Live, oip_client: OpenInferenceClient):
    from open_inference.openapi.errors import BadRequestError, NotFoundError

    wrong = InferenceRequest(inputs=[{"name": "readings", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}])
    with pytest.raises(BadRequestError) as bad:
        oip_client.model_infer("gridwatch", request=wrong)
    assert "datatype 'INT64'" in bad.value.body["error"]
    with pytest.raises(NotFoundError) as missing:
        oip_client.check_model_readiness("iris")
    assert missing.value.body == {"error": "no model 'iris': this server serves 'gridwatch'"}


# --- schemathesis against the live server --------------------------------------------------------------------------

LIVE_EXAMPLES = 30
"""Generated requests per route and mode: schema-valid ones for every route, schema-violating bodies for the two
inference routes; about 330 over HTTP."""


@pytest.fixture(scope="module")
def live_v2_schema(live: Live) -> schemathesis.BaseSchema:
    config = fuzz_config(headers=KEYED)
    return schemathesis.openapi.from_url(f"{live.server.url}/openapi.json", config=config).include(path_regex=r"^/v2")


def test_the_live_schema_covers_every_v2_route(live_v2_schema):
    assert {result.ok().path for result in live_v2_schema.get_all_operations()} == V2_TEMPLATES


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_the_live_v2_routes_answer_every_generated_request_as_documented(live_v2_schema, mode: GenerationMode):
    """No 5xx, only documented statuses and bodies, schema-violating requests refused: test_fuzz.py's checks, over
    real HTTP to the live server (test_fuzz.py runs them in process over every route, /v2 included)."""
    for result in live_v2_schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # only a body can violate the schema: the paths' parameters are any string

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=LIVE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case) -> None:
            case.call_and_validate(checks=CHECKS)

        answers_as_documented()
