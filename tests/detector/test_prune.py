"""Pruning the model store: what it keeps (active, previous, shadow, the newest N), that it never removes a
version in use, that it cannot race training or promotion, and what the store reports about its size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from app.detector.artifact import forest_path, load_forest
from app.detector.registry import POINTER, ModelStore, RegistryError
from app.detector.training import train_version
from tests.detector.test_registry import SMALL


def versions_of(store: ModelStore, count: int) -> list[str]:
    """``count`` versions trained one after the other (oldest first), the first one active."""
    names = []
    for seed in range(count):
        detector, _ = train_version(store, replace(SMALL, random_state=100 + seed), promote=False)
        names.append(detector.version)
    assert len(set(names)) == count
    return names


def stored(store: ModelStore) -> set[str]:
    return {entry["version"] for entry in store.versions()}


def test_prune_keeps_the_active_previous_shadow_and_newest_versions(tmp_path: Path):
    store = ModelStore(tmp_path)
    v = versions_of(store, 6)  # v[0] active
    store.promote(v[1])
    store.promote(v[3])  # active v3, previous v1 (then v0)
    store.set_shadow(v[0])
    assert store.prune(1, dry_run=True).removed == [v[2], v[4]]
    assert stored(store) == set(v), "a dry run removes nothing"

    pruned = store.prune(1)
    assert pruned.removed == [v[2], v[4]]
    assert set(pruned.kept) == {v[3], v[1], v[0], v[5]}, "active, previous, shadow, and the newest one"
    assert pruned.freed_bytes > 0
    assert stored(store) == {v[0], v[1], v[3], v[5]}
    assert not [p.name for p in (tmp_path / "versions").iterdir() if p.name.startswith(".")], "nothing left aside"
    for version in stored(store):
        assert load_forest(store.artifact_of(version)).version == version, "what is kept is whole"
    assert store.prune(1).removed == [], "pruning again finds nothing more"


def test_rollback_goes_back_to_the_newest_earlier_version_still_stored(tmp_path: Path):
    store = ModelStore(tmp_path)
    v = versions_of(store, 4)
    for version in v[1:]:
        store.promote(version)  # active v3, previous v2, v1, v0
    assert store.prune(1).removed == [v[0], v[1]]
    assert store.rollback() == v[2]
    with pytest.raises(RegistryError, match="no earlier active version"):
        store.rollback()  # v1 and v0 are gone: said plainly, never a half-loaded version


def test_versions_a_refusing_worker_may_still_serve_are_kept(tmp_path: Path):
    """When the previous version no longer loads, workers that refused the newer ones still serve an earlier one:
    pruning keeps the earlier active versions back to the first that loads."""
    store = ModelStore(tmp_path)
    v = versions_of(store, 6)
    for version in (v[3], v[4], v[5]):
        store.promote(version)  # active v5, previous v4, v3, v0
    forest = forest_path(store.artifact_of(v[4]))
    forest.write_bytes(forest.read_bytes()[:100])  # v4 damaged after its promotion
    assert store.prune(1).removed == [v[0], v[1], v[2]]
    assert stored(store) == {v[3], v[4], v[5]}


def test_an_unreadable_pointer_stops_pruning(tmp_path: Path):
    store = ModelStore(tmp_path)
    v = versions_of(store, 3)
    (tmp_path / POINTER).write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        store.prune(1)
    assert stored(store) == set(v), "without knowing what is served, nothing is removed"
    with pytest.raises(ValueError, match="at least one"):
        store.prune(0)


def gridwatch(model_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args, "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **env},
    )


SMALL_ARGS = ("--n-estimators", "5", "--max-samples", "256", "--train-samples", "1000")


def test_training_prunes_to_model_keep_versions(tmp_path: Path):
    for seed in range(4):
        result = gridwatch(tmp_path, "train", *SMALL_ARGS, "--seed", str(seed), MODEL_KEEP_VERSIONS="2")
        assert result.returncode == 0, result.stderr
    store = ModelStore(tmp_path)
    assert "pruning removed 1 version(s)" in result.stderr
    assert len(stored(store)) == 3, "the active (first) version and the two newest"
    assert store.active_version() in stored(store)


def test_models_prune_command(tmp_path: Path):
    store = ModelStore(tmp_path)
    v = versions_of(store, 4)
    dry = gridwatch(tmp_path, "models", "prune", "--keep", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["removed"] == [v[1], v[2]]
    assert report["dry_run"] is True
    assert stored(store) == set(v)
    off = gridwatch(tmp_path, "models", "prune", MODEL_KEEP_VERSIONS="0")
    assert off.returncode == 0
    assert "every version is kept" in off.stderr
    assert stored(store) == set(v)
    done = gridwatch(tmp_path, "models", "prune", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert "pruning removed 2 version(s)" in done.stderr
    assert stored(store) == {v[0], v[3]}


def test_pruning_concurrent_with_training_and_promotion_leaves_a_consistent_store(tmp_path: Path):
    """Trainers that promote and prune (MODEL_KEEP_VERSIONS=1) and separate prunes, all at once: every writer holds
    the training lock, so the active version and the one before it are always whole, nothing is left half-removed."""
    store = ModelStore(tmp_path)
    versions_of(store, 1)

    def run(job: int) -> subprocess.CompletedProcess[str]:
        if job % 2:
            return gridwatch(tmp_path, "models", "prune", "--keep", "1")
        return gridwatch(tmp_path, "train", *SMALL_ARGS, "--promote", "--seed", str(job), MODEL_KEEP_VERSIONS="1")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(8)))
    assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
    pointer = store.pointer()
    assert pointer is not None
    previous = pointer["previous"][0]
    for version in (pointer["version"], previous):
        assert load_forest(store.artifact_of(version)).version == version
    assert len(stored(store)) <= 3, "active, previous, newest"
    assert not [p.name for p in (tmp_path / "versions").iterdir() if p.name.startswith(".")]


def test_usage_counts_the_versions_their_bytes_and_the_room_left(tmp_path: Path):
    store = ModelStore(tmp_path)
    assert store.usage().versions == 0
    v = versions_of(store, 2)
    usage = store.usage()
    files = [path for version in v for path in (tmp_path / "versions" / version).iterdir()]
    assert usage.versions == 2
    assert usage.bytes == sum(path.stat().st_size for path in files)
    assert 0 < usage.newest_bytes < usage.bytes
    assert 0 < usage.filesystem_avail_bytes <= usage.filesystem_size_bytes
