"""The scikit-learn side of a saved model (``app.detector.estimator``): the estimator verified before it is
unpickled, and ``ensure_model``, which loads the active version or trains the first, never over the operator's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import pytest

from app.detector.artifact import metadata_path
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.estimator import ensure_model, load_model
from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_model
from tests.detector.support import rewrite_metadata

SMALL = ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000)
"""A quick model for lifecycle tests; the default model is trained once per session in conftest."""


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
