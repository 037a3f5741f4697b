"""The promotion gate: a version replaces the active one only if it does not detect worse on the same labelled
readings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from app.detector.artifact import forest_path
from app.detector.dataset import RecordedReadings
from app.detector.model import ModelConfig
from app.detector.promotion import promotion_gate, train_and_promote
from app.detector.registry import ModelStore, VersionRefusedError
from app.detector.training import train_version
from app.sim import GridSimulator

SMALL = ModelConfig(n_estimators=20, max_samples=1024, train_samples=5_000)


START = datetime(2026, 6, 1, tzinfo=UTC)
"""A fixed start: the simulated load curve, so the readings, do not depend on the hour the test runs."""
CALM = replace(SMALL, contamination=0.01)
NOISY = replace(SMALL, contamination=0.25)
"""A threshold that flags a quarter of normal readings: far worse F1 on 2 % anomalies, whatever the trees."""


def labelled(anomaly_rate: float, n: int = 4_000) -> RecordedReadings:
    batch = GridSimulator(seed=5, anomaly_rate=anomaly_rate, start=START).batch(n)
    return RecordedReadings(X=batch.features(), is_anomaly=batch.is_anomaly, anomaly_kind=batch.anomaly_kind)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path)


def test_a_version_that_raises_false_alarms_is_not_promoted(store: ModelStore):
    active, _ = train_version(store, CALM, promote=False)
    noisy, _ = train_version(store, NOISY, promote=False)
    decision = promotion_gate(store, noisy.version, labelled(0.02))
    assert not decision.promote
    assert decision.active == active.version
    assert decision.candidate_report["f1"] < decision.active_report["f1"]
    assert decision.reason.endswith(": worse")


def test_a_version_as_good_or_better_is_promoted(store: ModelStore):
    noisy, _ = train_version(store, NOISY, promote=False)
    calm, _ = train_version(store, CALM, promote=False)
    decision = promotion_gate(store, calm.version, labelled(0.02))
    assert decision.promote
    assert decision.active == noisy.version
    assert decision.candidate_report["f1"] >= decision.active_report["f1"]


def test_without_labelled_anomalies_the_false_positive_rate_decides(store: ModelStore):
    train_version(store, CALM, promote=False)
    noisy, _ = train_version(store, NOISY, promote=False)
    decision = promotion_gate(store, noisy.version, labelled(0.0))
    assert not decision.promote
    assert "false-positive rate" in decision.reason
    assert decision.candidate_report["false_positive_rate"] > decision.active_report["false_positive_rate"]


def test_with_nothing_active_the_candidate_is_promoted(tmp_path: Path):
    store = ModelStore(tmp_path)
    readings = labelled(0.02, n=100)
    decision = promotion_gate(store, "a1b2c3d4e5f6", readings)
    assert decision.promote
    assert decision.reason == "no active version to compare with"
    assert np.isfinite(readings.X).all()


def test_a_candidate_that_does_not_load_is_refused_and_a_broken_active_version_is_replaced(store: ModelStore):
    active, _ = train_version(store, CALM, promote=False)
    candidate, _ = train_version(store, NOISY, promote=False)
    forest = forest_path(store.artifact_of(candidate.version))
    intact = forest.read_bytes()
    forest.write_bytes(intact[:1000])
    with pytest.raises(VersionRefusedError, match="truncated"):
        promotion_gate(store, candidate.version, labelled(0.02))
    forest.write_bytes(intact)
    forest_path(store.artifact_of(active.version)).write_bytes(b"damaged")
    decision = promotion_gate(store, candidate.version, labelled(0.02))
    assert decision.promote, "nothing to protect: however it detects, the candidate loads and the active one does not"
    assert decision.reason.startswith("the active version does not load")


# --- the policy the training Job runs: train -> gate -> promote, without argparse ------------------------------


def _recorded(anomaly_rate: float, n: int = 6_000) -> RecordedReadings:
    return labelled(anomaly_rate, n)


def test_the_first_trained_version_is_active_without_a_gate(store: ModelStore):
    trained = train_and_promote(store, CALM, readings=_recorded(0.02), if_better=True)
    assert trained.active
    assert trained.decision is None
    assert store.active_version() == trained.detector.version


def test_train_and_promote_keeps_the_active_version_when_the_new_one_is_worse(store: ModelStore):
    first = train_and_promote(store, CALM, readings=_recorded(0.02)).detector
    worse = train_and_promote(store, NOISY, readings=_recorded(0.02), if_better=True)
    assert worse.decision is not None
    assert not worse.decision.promote
    assert not worse.active
    assert store.active_version() == first.version != worse.detector.version


def test_train_and_promote_promotes_a_version_that_is_not_worse(store: ModelStore):
    train_and_promote(store, NOISY, readings=_recorded(0.02))
    better = train_and_promote(store, CALM, readings=_recorded(0.02), if_better=True)
    assert better.decision is not None
    assert better.decision.promote
    assert better.active
    assert store.active_version() == better.detector.version


def test_without_gate_a_new_version_waits_unless_promoted(store: ModelStore):
    first = train_and_promote(store, CALM).detector
    waiting = train_and_promote(store, replace(CALM, random_state=7))
    assert not waiting.active
    assert store.active_version() == first.version
    promoted = train_and_promote(store, replace(CALM, random_state=8), promote=True)
    assert promoted.active
    assert store.active_version() == promoted.detector.version


def test_gating_without_labelled_held_out_rows_is_refused_not_promoted_blindly(store: ModelStore):
    with pytest.raises(ValueError, match="none were given"):
        train_and_promote(store, CALM, if_better=True)
    unlabelled = RecordedReadings(X=_recorded(0.02).X, is_anomaly=None, anomaly_kind=None)
    with pytest.raises(ValueError, match="is_anomaly column and --holdout above 0"):
        train_and_promote(store, CALM, readings=unlabelled, if_better=True)
    assert store.version_names() == []
