"""A serving worker carries no scikit-learn: it loads the compiled forest, trains or converts in a child process,
and says ready only when every worker is. Real server processes on free localhost ports."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from app.detector import forest_jit
from app.detector.artifact import forest_path, metadata_path
from app.detector.registry import ModelStore
from app.tools.processes import wait_until_ready
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

TRAINING_ONLY = ("/sklearn/", "/scipy/")
"""Shared objects that only scikit-learn (and the SciPy it pulls in) map into a process."""


def mapped_files(pid: int) -> set[str]:
    """The files a live process has mapped: every compiled extension module it imported is among them."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def assert_lean(pid: int) -> None:
    mapped = mapped_files(pid)
    heavy = sorted(path for path in mapped if any(part in path for part in TRAINING_ONLY))
    assert heavy == [], f"the serving worker loaded {heavy[:3]}"
    if forest_jit.KIND == "ahead-of-time":  # built by `make sync` and the image: then no numba/LLVM either
        assert not [path for path in mapped if "llvmlite" in path or "/numba/" in path]


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes uvicorn started under ``supervisor`` (its multiprocess mode)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if "app" in Path(f"/proc/{pid}/cmdline").read_text()]


def test_a_worker_serving_a_trained_model_never_loads_scikit_learn(model_dir: Path):
    with ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0"}) as server:
        body = {"readings": [{"voltage": 231.0, "current": 12.0, "frequency": 50.0}] * 64}
        assert httpx2.post(f"{server.url}/predict", json=body).status_code == 200
        assert_lean(server.process.pid)


def test_first_start_trains_in_a_child_while_probes_answer(tmp_path: Path):
    models = tmp_path / "models"
    env = {"MODEL_DIR": str(models), "TRAIN_IF_MISSING": "1", "LOG_LEVEL": "info"}
    with ServerProcess(env=env, ready_path="/livez") as server:
        seen = []
        while (health := httpx2.get(f"{server.url}/health", timeout=5)).status_code != 200:
            assert health.json()["status"] == "loading", health.text
            seen.append(httpx2.get(f"{server.url}/livez", timeout=5).status_code)
            time.sleep(0.05)  # probe period, not synchronisation: the loop waits for the condition itself
        assert set(seen) <= {200}, "liveness answered throughout the training"
        assert_lean(server.process.pid)
        assert "model preparation: no model at" in server.log()
    active = ModelStore(models).active_artifact()
    assert forest_path(active).is_file()
    assert "forest" in json.loads(metadata_path(active).read_text())


def test_a_model_saved_without_its_compiled_forest_is_converted_once(model_dir: Path):
    artifact = model_dir / "iso_forest.joblib"
    forest_path(artifact).unlink()
    metadata = json.loads(metadata_path(artifact).read_text())
    del metadata["forest"]
    metadata_path(artifact).write_text(json.dumps(metadata))
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "LOG_LEVEL": "info"}
    with ServerProcess(env=env) as server:
        assert httpx2.get(f"{server.url}/health").json()["model_version"] == metadata["model_version"]
        assert_lean(server.process.pid)
        assert "converted model" in server.log()
    assert forest_path(artifact).is_file()
    with ServerProcess(env=env) as again:
        assert "converted model" not in again.log(), "converted once, loaded directly after"
        assert "preparing it in a child process" not in again.log()


def test_with_two_workers_health_says_ready_only_when_both_can_score(model_dir: Path, tmp_path: Path):
    """The moment /health first says 200, every connection, whichever worker accepts it, gets scores."""
    env = {
        "MODEL_DIR": str(model_dir),
        "TRAIN_IF_MISSING": "0",
        "WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    body = {"readings": [{"voltage": 231.0, "current": 12.0, "frequency": 50.0}] * 8}
    with ServerProcess(env=env, ready_path="/livez") as server:
        wait_until_ready(f"{server.url}/health", timeout=120, process=server.process)

        def predict(_: int) -> tuple[int, str]:
            with httpx2.Client(timeout=30) as fresh:  # a new connection each: the kernel picks the worker
                answer = fresh.post(f"{server.url}/predict", json=body)
            return answer.status_code, answer.json().get("served_by", "")

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(predict, range(200)))
        assert [status for status, _ in answers] == [200] * 200
        for pid in worker_pids(server.process.pid):
            assert_lean(pid)
