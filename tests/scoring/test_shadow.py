"""A challenger in the shadow, against a real server: it never changes, fails or delays an answer, and its metrics
count exactly how it scored the batches the active version answered."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx2
import numpy as np
import pytest

from app.detector.artifact import forest_path, load_forest
from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_version
from app.scoring.shadow import ShadowScorer
from app.sim import GridSimulator
from tests.support import ServerProcess, wait_for

SMALL = ModelConfig(n_estimators=20, max_samples=1024, train_samples=5_000)


@pytest.fixture
def versions(tmp_path: Path) -> tuple[ModelStore, str, str]:
    store = ModelStore(tmp_path / "models")
    active, _ = train_version(store, SMALL, promote=False)
    challenger, _ = train_version(store, replace(SMALL, contamination=0.05, random_state=3), promote=False)
    return store, active.version, challenger.version


def counter(url: str, name: str, version: str) -> float:
    found = re.search(rf'^{name}_total{{shadow_version="{version}"}} (\S+)$', httpx2.get(f"{url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_the_shadow_scores_every_answered_batch_without_touching_the_answers(versions):
    store, active, challenger = versions
    batches = [GridSimulator(seed=seed, anomaly_rate=0.05).batch(200) for seed in range(6)]
    X = np.vstack([batch.features() for batch in batches])
    active_flags, _ = load_forest(store.artifact_of(active)).predict_batch(X)
    shadow_flags, _ = load_forest(store.artifact_of(challenger)).predict_batch(X)
    assert (active_flags != shadow_flags).any(), "the two versions really differ on these readings"

    env = {"MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "0", "SHADOW_MODEL_VERSION": challenger}
    with ServerProcess(env=env, args=[]) as server:
        wait_for(lambda: f'shadow_version="{challenger}"' in httpx2.get(f"{server.url}/metrics").text, "shadow up")
        answered = []
        for batch in batches:
            answer = httpx2.post(f"{server.url}/predict", json={"readings": batch.to_records(ground_truth=False)})
            assert answer.status_code == 200
            assert answer.json()["model_version"] == active, "the active version answers"
            answered += [prediction["anomaly"] for prediction in answer.json()["predictions"]]
        assert answered == active_flags.tolist(), "answers are exactly the active version's"
        wait_for(lambda: counter(server.url, "shadow_readings_scored", challenger) == len(X), "all scored")
        assert counter(server.url, "shadow_agreements", challenger) == int((active_flags == shadow_flags).sum())
        assert counter(server.url, "shadow_anomalies", challenger) == int(shadow_flags.sum())
        assert counter(server.url, "shadow_batches_scored", challenger) == len(batches), "one per answered batch"
        assert "shadow_errors_total 0.0" in httpx2.get(f"{server.url}/metrics").text


@pytest.mark.slow
def test_a_challenger_named_with_the_cli_is_followed_and_a_broken_one_is_refused(versions):
    store, active, challenger = versions
    env = {"MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "0", "MODEL_POLL_INTERVAL": "0"}
    damaged = forest_path(store.artifact_of(challenger))
    intact = damaged.read_bytes()
    with ServerProcess(env=env, args=[]) as server:
        store.set_shadow(challenger)  # verified when named; damaged after, before this server loads it
        damaged.write_bytes(intact[:1000])
        assert httpx2.post(f"{server.url}/model/reload").status_code == 200, "the active version is fine"
        body = {"readings": GridSimulator(seed=1).batch(50).to_records(ground_truth=False)}
        assert httpx2.post(f"{server.url}/predict", json=body).status_code == 200
        assert "not scoring in the shadow with model" in server.log()
        assert counter(server.url, "shadow_readings_scored", challenger) == 0
        damaged.write_bytes(intact)
        httpx2.post(f"{server.url}/model/reload")  # its files changed: the refused version is read again
        assert httpx2.post(f"{server.url}/predict", json=body).json()["model_version"] == active
        wait_for(lambda: counter(server.url, "shadow_readings_scored", challenger) == 50, "the repaired one scores")


class Exploding:
    version = "deadbeef0000"

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("kernel blew up")


def test_a_failing_shadow_is_counted_and_never_raises():
    from app.scoring.metrics import SHADOW_ERRORS

    shadow = ShadowScorer()
    shadow.use(Exploding())  # type: ignore[arg-type]
    before = SHADOW_ERRORS._value.get()
    shadow.score(np.zeros((3, 3)), np.zeros(3, dtype=bool))
    assert SHADOW_ERRORS._value.get() == before + 1


class Blocking:
    version = "b10c0000000"

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.release.wait(60)
        return np.zeros(X.shape[0], dtype=bool), np.zeros(X.shape[0])


def test_a_shadow_that_falls_behind_skips_batches_instead_of_queueing_them():
    """Submitting never waits: past the queue's size, batches are counted as skipped, and the rest are scored."""
    from app.scoring.metrics import SHADOW_BATCHES, SHADOW_READINGS, SHADOW_SKIPPED

    shadow, slow = ShadowScorer(queue_size=2), Blocking()
    shadow.use(slow)  # type: ignore[arg-type]
    before = SHADOW_SKIPPED._value.get()
    for _ in range(6):  # one taken by the scoring thread (or still queued), two queued, the rest skipped
        shadow.submit(np.zeros((4, 3)), np.zeros(4, dtype=bool))
    skipped = SHADOW_SKIPPED._value.get() - before
    assert 3 <= skipped <= 4
    slow.release.set()
    assert shadow.drain(timeout=60)
    assert SHADOW_READINGS.labels(slow.version)._value.get() == 4 * (6 - skipped)
    assert SHADOW_BATCHES.labels(slow.version)._value.get() == 6 - skipped, "skipped and scored add up"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_share_budget_lets_the_shadow_score_its_share_of_the_time_and_no_more():
    from app.scoring.shadow import ShareBudget

    clock = Clock()
    budget = ShareBudget(0.25, burst=0.5, clock=clock)
    assert budget.allow(), "a fresh budget holds its burst"
    budget.charge(0.6)  # one slow batch overdraws it
    assert not budget.allow()
    clock.now += 0.2  # 0.05 s of credit back: still overdrawn by 0.05
    assert not budget.allow()
    clock.now += 0.3  # 0.075 s more: positive again
    assert budget.allow()
    clock.now += 3600.0  # an idle hour refills up to the burst, not beyond
    assert budget.allow()
    budget.charge(0.51)
    assert not budget.allow()
    with pytest.raises(ValueError, match="within"):
        ShareBudget(0.0)


@pytest.mark.slow
def test_a_slow_challenger_is_held_to_its_share_and_the_rest_is_skipped(versions):
    """A challenger far slower than the active model (400 trees of 4,096 samples against 20 of 1,024) under a
    steady stream of answers: every answer is the active version's, the shadow spends at most SHADOW_MAX_SHARE of
    the time scoring (plus its burst and one batch), and the batches it had no time for are counted as skipped."""
    store, active, _ = versions
    slow, _ = train_version(store, replace(SMALL, n_estimators=400, max_samples=4096, random_state=5), promote=False)
    share = 0.05
    env = {
        "MODEL_DIR": str(store.root),
        "TRAIN_IF_MISSING": "0",
        "SHADOW_MODEL_VERSION": slow.version,
        "SHADOW_MAX_SHARE": str(share),
    }
    body = {"readings": GridSimulator(seed=4).batch(2_000).to_records(ground_truth=False)}
    with ServerProcess(env=env, args=[]) as server, httpx2.Client(timeout=60) as client:
        # Ready means the active model is loaded; the challenger (a far larger forest) loads after it, on the
        # watcher's thread, and is exported at 0 once it scores: without it, nothing could be skipped.
        loaded = f'shadow_readings_scored_total{{shadow_version="{slow.version}"}}'
        wait_for(lambda: loaded in httpx2.get(f"{server.url}/metrics").text, "the challenger was loaded")
        answers = [client.post(f"{server.url}/predict", json=body) for _ in range(60)]
        assert {answer.status_code for answer in answers} == {200}
        assert {answer.json()["model_version"] for answer in answers} == {active}
        metrics = httpx2.get(f"{server.url}/metrics").text
        skipped = float(re.search(r"^shadow_skipped_total (\S+)$", metrics, re.M).group(1))
        started = float(re.search(r"^process_start_time_seconds (\S+)$", metrics, re.M).group(1))
        spent = counter(server.url, "shadow_scoring_seconds", slow.version)
        scored_batches = counter(server.url, "shadow_readings_scored", slow.version) / 2_000
        elapsed = time.time() - started
    assert skipped > 0, "the challenger could not score every batch within its share"
    assert scored_batches > 0, "it scored some: a sample, not nothing"
    one_batch = spent / scored_batches
    assert spent <= share * elapsed + 0.5 + one_batch, (spent, elapsed)
