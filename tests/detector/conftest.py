"""Fixtures of the detector's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def artifact(model_dir: Path) -> Path:
    """``MODEL_DIR/MODEL_NAME`` of a private copy of the session's trained model, free to damage."""
    return model_dir / "iso_forest.joblib"
