"""Fixtures of the UI's tests: one real backend per test module, with a model folder of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, copy_model


@pytest.fixture(scope="module")
def backend(trained_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `gridwatch serve` on a free port with a copy of the session's model, ready when yielded."""
    env = {
        "MODEL_DIR": str(copy_model(trained_artifact, tmp_path_factory.mktemp("ui-models"))),
        "TRAIN_IF_MISSING": "0",
    }
    with ServerProcess(env=env) as server:
        yield server
