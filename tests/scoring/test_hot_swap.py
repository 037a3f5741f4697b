"""Hot swap against a real server with two workers under load: a promotion and a rollback are each served without a
restart and without a failed request, every answer names the version that scored it, and a version that cannot be
loaded is refused while the old one keeps serving."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from app.detector.artifact import forest_path
from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_version
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

SMALL = ModelConfig(n_estimators=20, max_samples=1024, train_samples=5_000)
READINGS = {"readings": [{"voltage": 230.1, "current": 10.4, "frequency": 50.01}] * 8}
DEADLINE_S = 60.0
"""Far above the poll interval of 0.2 s and a load: a swap not seen by then did not happen."""


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    store = ModelStore(tmp_path / "models")
    first, _ = train_version(store, SMALL, promote=False)
    second, _ = train_version(store, replace(SMALL, random_state=7), promote=False)
    return store.root, first.version, second.version


def models(model_dir: Path, *args: str) -> None:
    command = [sys.executable, "-m", "app.tools.cli", "models", "--model-dir", str(model_dir), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


class Load:
    """Connections kept alive (each stays with one worker), sending /predict back to back until stopped; what each
    answered is kept in order, per connection."""

    def __init__(self, url: str, *, workers: int) -> None:
        self.url = url
        self.answers: dict[int, list[tuple[int, str | None, str | None]]] = defaultdict(list)
        self.stop = threading.Event()
        self.clients: list[httpx2.Client] = []
        pids: set[str] = set()
        while len(pids) < workers and len(self.clients) < 64:  # open connections until every worker has some
            client = httpx2.Client(timeout=30)
            pids.add(client.post(f"{url}/predict", json=READINGS).json()["served_by"])
            self.clients.append(client)
        assert len(pids) == workers, "the connections reached every worker"
        self.threads = [threading.Thread(target=self._send, args=(n,)) for n in range(len(self.clients))]

    def _send(self, n: int) -> None:
        client = self.clients[n]
        while not self.stop.is_set():
            answer = client.post(f"{self.url}/predict", json=READINGS)
            body = answer.json() if answer.status_code == 200 else {}
            self.answers[n].append((answer.status_code, body.get("served_by"), body.get("model_version")))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for client in self.clients:
            client.close()

    def wait_until_every_connection_answers(self, version: str) -> None:
        """Until each connection's latest answer came from ``version`` (so every worker serves it)."""
        deadline = time.monotonic() + DEADLINE_S
        while not all(self.answers[n] and self.answers[n][-1][2] == version for n in range(len(self.clients))):
            assert time.monotonic() < deadline, f"not every worker serves {version}"
            time.sleep(0.05)  # polling interval: the loop waits for the answers themselves


def collapsed(versions: list[str | None]) -> list[str | None]:
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


def test_promote_and_rollback_under_load_swap_each_worker_once_each_way(two_versions: tuple[Path, str, str]):
    model_dir, first, second = two_versions
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "WORKERS": "2", "MODEL_POLL_INTERVAL": "0.2"}
    with ServerProcess(env=env) as server, Load(server.url, workers=2) as load:
        load.wait_until_every_connection_answers(first)
        models(model_dir, "promote", second)
        load.wait_until_every_connection_answers(second)
        models(model_dir, "rollback")
        load.wait_until_every_connection_answers(first)
        metrics = httpx2.get(f"{server.url}/metrics").text
    assert 'model_swaps_total{result="swapped"} 4.0' in metrics, "two swaps in each of the two workers"
    assert 'model_swaps_total{result="failed"} 0.0' in metrics
    answers = [answer for connection in load.answers.values() for answer in connection]
    assert {status for status, _, _ in answers} == {200}, "no request failed during the swaps"
    assert len({served_by for _, served_by, _ in answers}) == 2
    for connection in load.answers.values():
        assert collapsed([version for _, _, version in connection]) == [first, second, first]


def test_a_version_that_cannot_be_loaded_is_refused_and_the_old_one_keeps_serving(
    two_versions: tuple[Path, str, str],
):
    model_dir, first, second = two_versions
    damaged = forest_path(ModelStore(model_dir).artifact_of(second))
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "MODEL_POLL_INTERVAL": "0"}
    with ServerProcess(env=env) as server:
        models(model_dir, "promote", second)  # verified at promote; damaged after, before this server loads it
        damaged.write_bytes(damaged.read_bytes()[:1000])
        refused = httpx2.post(f"{server.url}/model/reload")
        assert refused.status_code == 409
        assert f"version {second} was not loaded, {first} keeps serving" in refused.json()["detail"]
        assert "truncated" in refused.json()["detail"]
        answer = httpx2.post(f"{server.url}/predict", json=READINGS)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == first
        text = httpx2.get(f"{server.url}/metrics").text
        assert 'model_swaps_total{result="failed"} 1.0' in text
        assert 'model_swaps_total{result="swapped"} 0.0' in text
        models(model_dir, "rollback")
        kept = httpx2.post(f"{server.url}/model/reload").json()
        assert kept == {"model_version": first, "previous": None, "swapped": False}


def test_reload_swaps_at_once_and_needs_the_api_key(two_versions: tuple[Path, str, str]):
    model_dir, first, second = two_versions
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "MODEL_POLL_INTERVAL": "0", "API_KEY": "k3y"}
    with ServerProcess(env=env) as server:
        assert httpx2.post(f"{server.url}/model/reload").status_code == 401
        models(model_dir, "promote", second)
        keyed = {"X-API-Key": "k3y"}
        assert httpx2.post(f"{server.url}/model/reload", headers=keyed).json() == {
            "model_version": second,
            "previous": first,
            "swapped": True,
        }
        assert httpx2.get(f"{server.url}/health").json()["model_version"] == second
        assert httpx2.get(f"{server.url}/model", headers=keyed).json()["model_version"] == second
        answer = httpx2.post(f"{server.url}/predict", json=READINGS, headers=keyed).json()
        assert answer["model_version"] == second
        text = httpx2.get(f"{server.url}/metrics").text
        assert 'model_swaps_total{result="swapped"} 1.0' in text
        assert f'model_info{{model_version="{second}"' in text
