"""Model lifecycle: train, save atomically, load with verification, and never use a bad artifact."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn

from app import FEATURES
from app.detector.artifact import atomic_write_bytes, metadata_path
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.estimator import ensure_model, load_model
from app.detector.model import Detector, ModelConfig
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer
from app.detector.training import train_model
from app.sim import GridSimulator

SMALL = ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000)
"""A quick model for lifecycle tests; the default model is trained once per session in conftest."""


def rewrite_metadata(model_file: Path, **changes: object) -> None:
    meta_file = metadata_path(model_file)
    metadata = json.loads(meta_file.read_text())
    metadata.update(changes)
    meta_file.write_text(json.dumps(metadata))


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


def test_truncated_artifact_is_detected_and_names_the_file(model_dir: Path):
    artifact = model_dir / "iso_forest.joblib"
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelArtifactError, match=r"iso_forest.joblib holds \d+ bytes, iso_forest.json records \d+: truncated"
    ) as caught:
        load_model(artifact)
    assert str(artifact) in str(caught.value)
    with pytest.raises(ModelArtifactError):
        ensure_model(ModelStore.of(artifact), train_if_missing=False)


def test_unusable_artifact_is_retrained_when_allowed_and_kept_aside(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    original = train_model(SMALL, artifact)
    artifact.write_bytes(b"garbage")
    detector = ensure_model(ModelStore.of(artifact), train_if_missing=True, config=SMALL)
    assert detector.trained_now
    assert detector.version == original.version  # same config, same deterministic model
    assert load_model(ModelStore.of(artifact).active_artifact()).version == original.version
    assert detector.path == tmp_path / "versions" / original.version / "model.joblib"
    assert (tmp_path / "model.joblib.rejected").read_bytes() == b"garbage"


def test_artifact_with_matching_hash_but_no_pickle_is_refused(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    train_model(SMALL, artifact)
    artifact.write_bytes(b"not a pickle at all")
    rewrite_metadata(artifact, artifact={"sha256": hashlib.sha256(b"not a pickle at all").hexdigest(), "bytes": 19})
    with pytest.raises(ModelArtifactError, match="cannot be unpickled"):
        load_model(artifact)


def test_artifact_holding_another_object_is_refused(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    train_model(SMALL, artifact)
    joblib.dump({"not": "a forest"}, artifact)
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    rewrite_metadata(artifact, artifact={"sha256": digest, "bytes": artifact.stat().st_size})
    with pytest.raises(ModelArtifactError, match="holds a dict, not an IsolationForest"):
        load_model(artifact)


def test_artifact_from_another_scikit_learn_version_is_refused(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    train_model(SMALL, artifact)
    rewrite_metadata(artifact, versions={"sklearn": "0.24.2"})
    with pytest.raises(ModelArtifactError, match=r"trained with scikit-learn 0\.24\.2"):
        load_model(artifact)
    assert ensure_model(ModelStore.of(artifact), train_if_missing=True, config=SMALL).trained_now


def test_missing_or_broken_metadata_is_refused(tmp_path: Path):
    artifact = tmp_path / "model.joblib"
    train_model(SMALL, artifact)
    metadata_path(artifact).write_text("{not json")
    with pytest.raises(ModelArtifactError, match=r"metadata .* is unreadable"):
        load_model(artifact)
    metadata_path(artifact).unlink()
    with pytest.raises(ModelArtifactError, match=r"metadata file .* not found"):
        load_model(artifact)


def test_missing_model_without_training_explains_what_to_do(tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="gridwatch train"):
        ensure_model(ModelStore.of(tmp_path / "none.joblib"), train_if_missing=False)


def test_missing_model_is_trained_when_allowed(tmp_path: Path):
    artifact = tmp_path / "sub" / "model.joblib"
    detector = ensure_model(ModelStore.of(artifact), train_if_missing=True, config=SMALL)
    assert detector.trained_now
    active = ModelStore.of(artifact).active_artifact()
    assert active == artifact.parent / "versions" / detector.version / "model.joblib"
    assert active.is_file()
    assert metadata_path(active).is_file()
    assert not ensure_model(
        ModelStore.of(artifact), train_if_missing=True, config=SMALL
    ).trained_now  # second start loads


def test_unwritable_model_folder_gives_a_clear_error():
    """/sys refuses new entries even to root, like a read-only volume."""
    with pytest.raises(ModelUnavailableError, match=r"is not writable .* holds no usable model"):
        ensure_model(ModelStore.of(Path("/sys/gridwatch-models/model.joblib")), train_if_missing=True, config=SMALL)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"contamination": 0.0}, "contamination"), ({"max_samples": 5_000, "train_samples": 1_000}, "max_samples")],
)
def test_invalid_model_config_is_refused(changes: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)
