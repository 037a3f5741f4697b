"""Fixtures every area shares: one trained model per session, a private model folder, an app client and a real
server process. Each area's own fixtures live in its folder's conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.detector.estimator import load_model
from app.detector.model import Detector, ModelConfig
from app.detector.training import train_model
from app.serving.app import create_app
from app.serving.settings import Settings
from tests.support import ServerProcess, copy_model


@pytest.fixture(scope="session")
def trained_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model, trained once per test session (with its evaluation, as `gridwatch train` does)."""
    from app.detector.evaluate import evaluation_for_metadata

    artifact = tmp_path_factory.mktemp("trained") / "iso_forest.joblib"
    train_model(ModelConfig(), artifact, evaluate=evaluation_for_metadata)
    return artifact


@pytest.fixture(scope="session")
def detector(trained_artifact: Path) -> Detector:
    return load_model(trained_artifact)


@pytest.fixture
def model_dir(tmp_path: Path, trained_artifact: Path) -> Path:
    """A private model folder holding a copy of the session's trained model, free to damage."""
    return copy_model(trained_artifact, tmp_path / "models")


@pytest.fixture
def settings(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, train_if_missing=False, pod_name="pod-a", node_name="node-1")


@pytest.fixture
def client(settings: Settings, detector: Detector) -> Iterator[TestClient]:
    """A client of an app whose model is ready from the first request."""
    with TestClient(create_app(settings, detector=detector), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def server(model_dir: Path) -> Iterator[ServerProcess]:
    """A real `gridwatch serve` process on a free localhost port, ready (model loaded) when yielded."""
    with ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0"}) as process:
        yield process
