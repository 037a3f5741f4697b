"""Automatic rollback of a bad promotion (MODEL_AUTO_ROLLBACK, app/scoring/promotion_guard.py), with real model
versions in a real store: a promoted version that flags far more than the one it replaced on the same readings is
rolled back, a sound one holds even while the grid is in trouble, the rollback's own swap is never judged, many
workers judging one promotion undo it once and never further back, and it is off unless asked."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_version
from app.scoring.metrics import PROMOTION_CHECKS
from app.scoring.promotion_guard import WATCH_MAX_S, PromotionGuard
from app.scoring.served import ServedModel
from app.scoring.settings import ScoringSettings
from app.serving.app import create_app
from app.serving.settings import Settings
from app.sim import GridSimulator
from tests.support import wait_for

SMALL = ModelConfig(n_estimators=20, max_samples=1024, train_samples=5_000)
READINGS = 2_000
"""What each guard here compares before deciding (MODEL_ROLLBACK_READINGS)."""


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A store with four versions: the one before, the active one, a sound sibling and a bad one (it flags a fifth
    of normal readings: trained with contamination 0.2)."""
    store = ModelStore(tmp_path_factory.mktemp("guard") / "models")
    older, _ = train_version(store, replace(SMALL, random_state=1), promote=True)
    active, _ = train_version(store, SMALL, promote=True)
    sound, _ = train_version(store, replace(SMALL, random_state=7), promote=False)
    bad, _ = train_version(store, replace(SMALL, contamination=0.2, random_state=3), promote=False)
    versions = {"older": older.version, "active": active.version, "sound": sound.version, "bad": bad.version}
    return store.root, versions


@pytest.fixture
def store(store_template: tuple[Path, dict[str, str]], tmp_path: Path) -> ModelStore:
    root, _ = store_template
    shutil.copytree(root, tmp_path / "models")
    return ModelStore(tmp_path / "models")


@pytest.fixture
def versions(store_template: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return store_template[1]


GUARDED = {
    "train_if_missing": False,
    "model_poll_interval": 0,
    "model_auto_rollback": True,
    "model_rollback_readings": READINGS,
}
"""The settings of a worker whose promotions are judged, polled only when a test says so."""


def served(store: ModelStore, **settings: object) -> Iterator[ServedModel]:
    config = ScoringSettings(model_dir=store.root, **GUARDED, **settings)
    model = ServedModel.of(config)
    model.holder.load()
    yield model
    model.close()


@pytest.fixture
def worker(store: ModelStore) -> Iterator[ServedModel]:
    yield from served(store)


def traffic(model: ServedModel, readings: int, *, anomaly_rate: float = 0.0, seed: int = 11) -> None:
    """``readings`` scored the way a front door scores them, in batches of 250, then the shadow's thread drained."""
    simulator = GridSimulator(anomaly_rate=anomaly_rate, seed=seed)
    for _ in range(readings // 250):
        X = simulator.batch(250).features()
        detector = model.holder.get().detector
        flags, _ = detector.predict_batch(X)
        model.shadow.submit(X, flags, detector.version)
    assert model.shadow.drain(60)


def outcomes() -> dict[str, float]:
    return {name: PROMOTION_CHECKS.labels(name)._value.get() for name in ("held", "rolled_back", "superseded")}


def test_a_promotion_that_flags_far_more_is_rolled_back_and_the_rollback_is_not_judged(
    store: ModelStore, versions: dict[str, str], worker: ServedModel
):
    before = outcomes()
    store.promote(versions["bad"])
    assert worker.watcher.check().serving == versions["bad"]
    assert worker.shadow.guard is not None
    assert worker.shadow.guard.watching == versions["bad"]
    traffic(worker, READINGS)
    assert store.active_version() == versions["active"], "rolled back to exactly the version it was judged against"
    (verdict,) = worker.shadow.guard.verdicts
    assert verdict.outcome == "rolled_back"
    assert verdict.readings == READINGS
    assert verdict.promoted_rate > 3 * verdict.replaced_rate
    assert outcomes()["rolled_back"] == before["rolled_back"] + 1
    assert worker.shadow.guard.watching is None, "the replaced model's memory is let go"
    assert worker.watcher.check().serving == versions["active"], "the worker follows the rollback"
    assert worker.shadow.guard.watching is None, "a rollback's swap is never judged: no undoing of the undoing"
    assert store.pointer()["previous"][:1] == [versions["older"]]


def test_a_sound_promotion_holds_even_while_the_grid_is_in_trouble(
    store: ModelStore, versions: dict[str, str], worker: ServedModel
):
    """A fifth of the readings are faults: both versions flag far more than usual, alike, so the promotion holds
    (comparing with the anomaly rate before the promotion would have rolled it back)."""
    store.promote(versions["sound"])
    worker.watcher.check()
    traffic(worker, READINGS, anomaly_rate=0.2)
    assert worker.shadow.guard is not None
    (verdict,) = worker.shadow.guard.verdicts
    assert verdict.outcome == "held"
    assert verdict.promoted_rate > 0.1, "the grid's trouble is flagged"
    assert store.active_version() == versions["sound"]


def test_many_workers_judging_one_bad_promotion_undo_it_once(store: ModelStore, versions: dict[str, str]):
    workers = [next(served(store)) for _ in range(3)]
    try:
        store.promote(versions["bad"])
        for model in workers:
            model.watcher.check()
        threads = [
            threading.Thread(target=traffic, args=(model, READINGS), kwargs={"seed": n})
            for n, model in enumerate(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        verdicts = sorted(v.outcome for model in workers for v in model.shadow.guard.verdicts)  # type: ignore[union-attr]
        assert verdicts == ["rolled_back", "superseded", "superseded"]
        assert store.active_version() == versions["active"], "never further back than the version compared with"
    finally:
        for model in workers:
            model.close()


def test_the_rollback_is_conditional_on_the_promotion_still_being_the_last_step(
    store: ModelStore, versions: dict[str, str]
):
    store.promote(versions["bad"])
    store.promote(versions["sound"])  # an operator moved on meanwhile
    assert not store.rollback_promotion(versions["bad"], versions["active"])
    assert store.active_version() == versions["sound"]
    assert not store.rollback_promotion(versions["sound"], versions["active"]), "sound replaced bad, not active"
    assert store.rollback_promotion(versions["sound"], versions["bad"])
    assert store.active_version() == versions["bad"]


class Blind:
    """A version that flags nothing: the other side of the band."""

    version = "b1d0000000"

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(X.shape[0], dtype=bool), np.zeros(X.shape[0])


def test_a_promoted_version_gone_blind_is_rolled_back_once_the_replaced_one_flagged_enough(worker: ServedModel):
    rolled: list[tuple[str, str]] = []
    guard = PromotionGuard(readings=READINGS, ratio=3.0, rollback=lambda *pair: rolled.append(pair) or True)
    replaced = worker.holder.get().detector
    guard.watch(Blind.version, replaced)
    X = GridSimulator(anomaly_rate=0.2, seed=5).batch(READINGS).features()
    guard.observe(X, np.zeros(READINGS, dtype=bool), Blind.version)
    assert rolled == [(Blind.version, replaced.version)]
    assert guard.verdicts[-1].outcome == "rolled_back"


def test_batches_scored_by_another_version_are_not_counted_and_a_silent_watch_expires(worker: ServedModel):
    clock = [0.0]
    guard = PromotionGuard(readings=READINGS, ratio=3.0, rollback=lambda *_: True, clock=lambda: clock[0])
    guard.watch("promoted0000", worker.holder.get().detector)
    X = GridSimulator(seed=2).batch(READINGS).features()
    guard.observe(X, np.ones(READINGS, dtype=bool), "queued-before-the-swap")
    assert guard.watching == "promoted0000"
    assert not guard.verdicts
    clock[0] = WATCH_MAX_S + 1
    assert guard.expire()
    assert guard.watching is None
    assert guard.verdicts[-1].outcome == "undecided"


def test_off_by_default_and_nothing_scores_twice_without_it(store: ModelStore, versions: dict[str, str]):
    model = ServedModel.of(ScoringSettings(model_dir=store.root, train_if_missing=False, model_poll_interval=0))
    try:
        model.holder.load()
        assert model.shadow.guard is None
        store.promote(versions["bad"])
        model.watcher.check()
        traffic(model, 500)
        assert store.active_version() == versions["bad"], "promotions are rolled back by hand unless asked"
        assert model.shadow._thread is None, "no challenger, no guard: the shadow's thread never started"
    finally:
        model.close()


def test_the_http_service_hands_its_batches_to_the_guard(store: ModelStore, versions: dict[str, str]):
    """Through /predict: the answers come from the promoted version until the guard rolls it back."""
    settings = Settings(model_dir=store.root, **GUARDED)
    simulator = GridSimulator(seed=3)
    with TestClient(create_app(settings)) as client:
        # the app loads its model on a thread of its own
        wait_for(lambda: client.get("/health").status_code == 200, "the model did not load")
        store.promote(versions["bad"])
        assert client.post("/model/reload").json()["model_version"] == versions["bad"]
        for _ in range(READINGS // 500):
            batch = simulator.batch(500)
            readings = [
                {"voltage": v, "current": c, "frequency": f}
                for v, c, f in zip(
                    batch.voltage.tolist(), batch.current.tolist(), batch.frequency.tolist(), strict=True
                )
            ]
            answer = client.post("/predict", json={"readings": readings})
            assert answer.json()["model_version"] == versions["bad"]
        # the guard decides on the shadow's thread, after the last answer
        wait_for(lambda: store.active_version() == versions["active"], "the bad promotion was not rolled back")
        assert client.post("/model/reload").json()["model_version"] == versions["active"]
