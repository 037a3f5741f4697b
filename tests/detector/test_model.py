"""Model lifecycle: train, save atomically, load with verification, and never use a bad artifact."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import sklearn

from app import FEATURES
from app.detector.artifact import atomic_write_bytes, metadata_path
from app.detector.estimator import load_model
from app.detector.model import Detector, ModelConfig
from app.detector.scorer import Scorer
from app.detector.training import train_model
from app.sim import GridSimulator

SMALL = ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000)
"""A quick model for lifecycle tests; the default model is trained once per session in conftest."""


def test_round_trip_keeps_scores_and_metadata(trained_artifact: Path, detector: Detector):
    X = GridSimulator(anomaly_rate=0.1, seed=3).batch(500).features()
    reloaded = load_model(trained_artifact)
    flags, scores = reloaded.predict_batch(X)
    np.testing.assert_array_equal(scores, detector.predict_batch(X)[1])
    np.testing.assert_array_equal(flags, scores > 0)

    meta = reloaded.metadata
    digest = hashlib.sha256(trained_artifact.read_bytes()).hexdigest()
    assert meta["artifact"]["sha256"] == digest
    assert meta["model_version"] == digest[:12] == reloaded.version
    assert meta["versions"]["sklearn"] == sklearn.__version__
    assert meta["config"] == ModelConfig().to_dict()
    assert meta["training"]["samples"] == ModelConfig().train_samples
    assert set(meta["feature_stats"]) == set(FEATURES)
    assert meta["feature_stats"]["voltage"]["mean"] == pytest.approx(230.0, abs=1.0)
    assert meta["evaluation"]["recall"] > 0.9
    assert reloaded.features == FEATURES


def test_flags_agree_with_scikit_learn_predict(detector: Detector):
    """score > 0 flags exactly what scikit-learn's own predict() calls an outlier."""
    X = GridSimulator(anomaly_rate=0.2, seed=4).batch(2_000).features()
    reference = Detector.from_estimator(detector.estimator, detector.metadata, scorer=Scorer.sklearn)
    flags, scores = reference.predict_batch(X)
    np.testing.assert_array_equal(flags, detector.estimator.predict(X) == -1)
    np.testing.assert_allclose(scores, -detector.estimator.decision_function(X))
    assert flags.any()
    assert not flags.all()


def test_artifact_files_are_world_readable(trained_artifact: Path):
    for path in (trained_artifact, metadata_path(trained_artifact)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_training_is_deterministic(tmp_path: Path):
    first = train_model(SMALL, tmp_path / "a.joblib")
    second = train_model(SMALL, tmp_path / "b.joblib")
    assert first.version == second.version
    other = train_model(
        ModelConfig(**{**SMALL.to_dict(), "features": FEATURES, "random_state": 7}), tmp_path / "c.joblib"
    )
    assert other.version != first.version


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "artifact.joblib"
    target.write_bytes(b"old and valid")

    def crash(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old and valid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact.joblib"]  # no temp file left behind


def test_save_replaces_the_artifact_in_one_step(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    first = train_model(SMALL, artifact)
    inode_before = artifact.stat().st_ino
    second = train_model(ModelConfig(**{**SMALL.to_dict(), "features": FEATURES, "random_state": 3}), artifact)
    assert artifact.stat().st_ino != inode_before  # a rename of a new file, not a rewrite in place
    assert load_model(artifact).version == second.version != first.version


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"contamination": 0.0}, "contamination"), ({"max_samples": 5_000, "train_samples": 1_000}, "max_samples")],
)
def test_invalid_model_config_is_refused(changes: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)
