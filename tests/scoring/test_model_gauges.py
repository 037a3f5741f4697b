"""The model's life in the gauges of a real `gridwatch serve`, as the alerts read them: the store's versions, bytes
and room (GridWatchModelStoreFilling), when the serving model was trained and MODEL_MAX_AGE (GridWatchModelStale)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.detector.registry import ModelStore
from app.detector.training import train_version
from tests.detector.test_registry import SMALL
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0


def store_gauges(url: str) -> dict[str, float]:
    text = httpx2.get(f"{url}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("model_store_", "model_trained_", "model_max_age"))
    }


def test_the_served_store_reports_its_versions_bytes_and_room(tmp_path: Path):
    store = ModelStore(tmp_path / "models")
    for seed in range(3):
        train_version(store, replace(SMALL, random_state=seed), promote=False)
    usage = store.usage()
    env = {"MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "0", "MODEL_MAX_AGE": "86400"}
    with ServerProcess(env=env) as server:
        deadline = time.monotonic() + DEADLINE_S
        gauges = store_gauges(server.url)
        while gauges.get("model_store_versions") != 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval: the watcher measures once the model is loaded
            gauges = store_gauges(server.url)
    assert gauges["model_store_versions"] == 3
    assert gauges["model_store_bytes"] == usage.bytes
    assert gauges["model_store_newest_version_bytes"] == usage.newest_bytes
    assert 0 < gauges["model_store_filesystem_avail_bytes"] <= gauges["model_store_filesystem_size_bytes"]
    trained_at = store.versions()[0]["trained_at"]  # the first version is the active one
    assert gauges["model_trained_timestamp_seconds"] == datetime.fromisoformat(trained_at).timestamp()
    assert gauges["model_max_age_seconds"] == 86400
