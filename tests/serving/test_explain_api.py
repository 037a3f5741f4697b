"""POST /predict?explain=true: each prediction says why, the scores and flags stay exactly those of a plain call,
and without the option the answer is unchanged."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.detector.model import Detector

SPIKE = {"voltage": 281.0, "current": 10.0, "frequency": 50.0}
SURGE = {"voltage": 224.0, "current": 58.0, "frequency": 50.0}
EXCURSION = {"voltage": 230.0, "current": 10.0, "frequency": 50.9}
NORMAL = {"voltage": 230.1, "current": 10.4, "frequency": 50.01}
READINGS = {"readings": [SPIKE, SURGE, EXCURSION, NORMAL]}
FIELDS = {"name", "contribution", "value", "median", "spread", "band", "z", "limits", "outside_limits"}


def test_without_explain_the_answer_is_unchanged(client: TestClient):
    plain = client.post("/predict", json=READINGS).json()
    off = client.post("/predict?explain=false", json=READINGS).json()
    assert plain == off
    assert all(set(prediction) == {"anomaly", "score"} for prediction in plain["predictions"])


def test_each_prediction_says_which_feature_and_how_far(client: TestClient, detector: Detector):
    plain = client.post("/predict", json=READINGS).json()
    explained = client.post("/predict?explain=true", json=READINGS).json()
    for before, after in zip(plain["predictions"], explained["predictions"], strict=True):
        assert (after["anomaly"], after["score"]) == (before["anomaly"], before["score"]), "scores untouched"
    spike, surge, excursion, _ = (p["explanation"] for p in explained["predictions"])
    assert [spike["top_feature"], surge["top_feature"], excursion["top_feature"]] == ["voltage", "current", "frequency"]
    for explanation, reading in zip((spike, surge, excursion), (SPIKE, SURGE, EXCURSION), strict=True):
        features = explanation["features"]
        assert [f["name"] for f in features] == list(detector.features), "the model's feature order"
        assert all(set(f) == FIELDS for f in features)
        assert sum(f["contribution"] for f in features) == pytest.approx(1.0)
        assert [f["value"] for f in features] == [reading[f["name"]] for f in features]
        for f in features:
            low, high = f["band"]
            assert low < f["median"] < high
            assert f["z"] == pytest.approx((f["value"] - f["median"]) / f["spread"])
    by_name = {f["name"]: f for f in spike["features"]}
    assert by_name["voltage"]["limits"] == [207.0, 253.0]
    assert by_name["voltage"]["outside_limits"] is True
    assert by_name["current"]["limits"] is None
    assert by_name["current"]["outside_limits"] is None
    assert {f["name"]: f for f in excursion["features"]}["frequency"]["outside_limits"] is True


def test_the_nominal_supply_is_a_setting(settings, detector: Detector):
    from app.serving.app import create_app

    american = settings.model_copy(update={"nominal_voltage": 120.0, "nominal_frequency": 60.0})
    with TestClient(create_app(american, detector=detector)) as client:
        answer = client.post("/predict?explain=true", json={"readings": [NORMAL]}).json()
    limits = {f["name"]: f["limits"] for f in answer["predictions"][0]["explanation"]["features"]}
    assert limits == {"voltage": [108.0, 132.0], "current": None, "frequency": [59.4, 60.6]}


def test_an_unreadable_option_is_a_422_naming_it(client: TestClient):
    answer = client.post("/predict?explain=perhaps", json=READINGS)
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["query", "explain"]


def test_the_option_is_in_the_openapi_document_and_counted(client: TestClient):
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["explain"]
    metrics = client.get("/metrics").text
    before = _explained(metrics)
    client.post("/predict?explain=true", json=READINGS)
    assert _explained(client.get("/metrics").text) == before + len(READINGS["readings"])


def _explained(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("readings_explained_total "):
            return float(line.split()[1])
    raise AssertionError("readings_explained_total is not exported")
