"""Loading for serving (``app.detector.loading``): one loader for start-up and hot swap, the preparation child, and
its errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app.detector import loading as loading_module
from app.detector.artifact import forest_path
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.loading import load_detector
from app.detector.registry import ModelStore
from tests.detector.support import rewrite_metadata


def test_no_model_and_no_training_is_unavailable_at_once(tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="TRAIN_IF_MISSING is off"):
        load_detector(ModelStore.of(tmp_path / "iso_forest.joblib"), train_if_missing=False)


def test_a_damaged_model_without_training_fails_in_the_child_with_the_same_error(artifact: Path):
    forest_path(artifact).unlink()
    artifact.write_bytes(b"not a pickle")
    with pytest.raises(ModelArtifactError, match=r"iso_forest\.joblib holds 12 bytes"):
        load_detector(ModelStore.of(artifact), train_if_missing=False)


def test_an_old_model_in_a_folder_the_child_cannot_write_is_compiled_in_memory(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """What a read-only MODEL_DIR holding a model saved before the compiled forest existed gets: it is served,
    by compiling the forest in this process, and the log says what that costs."""
    forest_path(artifact).unlink()
    rewrite_metadata(artifact, forest=None)
    monkeypatch.setattr(loading_module, "prepare_in_child", lambda *_args, **_kwargs: None)  # wrote nothing
    with caplog.at_level(logging.WARNING):
        detector = load_detector(ModelStore.of(artifact), train_if_missing=False)
    assert detector.estimator is not None
    assert "compiling the forest in this process" in caplog.text
