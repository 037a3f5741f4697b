"""Model versions in MODEL_DIR: immutable versions named by their hash, one pointer moved atomically, promotion,
rollback, the migration of a folder from before versions, and writers that cannot interleave."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from app.detector.artifact import forest_path, load_forest, metadata_path
from app.detector.errors import ModelUnavailableError
from app.detector.estimator import ensure_model
from app.detector.model import ModelConfig
from app.detector.registry import POINTER, ModelStore, RegistryError
from app.detector.training import train_model, train_version

SMALL = ModelConfig(n_estimators=5, max_samples=256, train_samples=1_000)


def two_versions(store: ModelStore) -> tuple[str, str]:
    first, _ = train_version(store, SMALL, promote=False)
    second, active = train_version(store, replace(SMALL, random_state=7), promote=False)
    assert not active, "a later version is not activated unless promoted"
    return first.version, second.version


def test_the_first_version_is_active_and_later_ones_wait_for_a_promotion(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, second = two_versions(store)
    assert first != second
    assert store.active_version() == first
    assert store.active_artifact() == tmp_path / "versions" / first / "iso_forest.joblib"
    for version in (first, second):
        artifact = store.artifact_of(version)
        assert [path.is_file() for path in (artifact, forest_path(artifact), metadata_path(artifact))] == [True] * 3
        assert load_forest(artifact).version == version, "a version's folder is named by its model's hash"
    assert [entry["version"] for entry in store.versions()] == [first, second]


def test_promote_then_rollback_walks_the_pointer_back(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, second = two_versions(store)
    assert store.promote(second) == first
    assert store.active_version() == second
    pointer = json.loads((tmp_path / POINTER).read_text())
    assert pointer["previous"] == [first]
    assert store.rollback() == first
    assert store.active_version() == first
    with pytest.raises(RegistryError, match="no earlier active version"):
        store.rollback()


def test_only_complete_versions_can_be_promoted(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, second = two_versions(store)
    with pytest.raises(RegistryError, match=r"no complete version 000000000000 .*versions: "):
        store.promote("000000000000")
    forest_path(store.artifact_of(second)).unlink()
    with pytest.raises(RegistryError, match=f"no complete version {second}"):
        store.promote(second)
    for name in ("../escape", ".staging-x", ""):
        with pytest.raises(RegistryError, match="not a version name"):
            store.promote(name)
    assert store.active_version() == first, "a refused promotion changes nothing"


def test_the_same_training_twice_is_one_version(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, _ = train_version(store, SMALL, promote=False)
    again, _ = train_version(store, SMALL, promote=True)
    assert again.version == first.version
    assert len(store.versions()) == 1


def test_a_damaged_active_version_is_never_replaced_by_training_and_a_retrain_repairs_it(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, _ = train_version(store, SMALL, promote=False)
    first.path.write_bytes(b"damaged")
    with pytest.raises(ModelUnavailableError, match=f"the active version {first.version} cannot be served"):
        ensure_model(store, train_if_missing=True, config=SMALL)
    assert store.version_names() == [first.version], "nothing was trained over the operator's version"
    again, _ = train_version(store, SMALL, promote=False)  # the same bytes: the same version
    assert again.version == first.version
    assert load_forest(store.active_artifact()).version == first.version
    assert ensure_model(store, train_if_missing=False, config=SMALL).version == first.version
    assert list((tmp_path / "versions").glob(f".damaged-{first.version}-*")), "the damaged copy is kept aside"


def test_a_folder_from_before_versions_is_read_as_one_version_then_moved_on_the_first_write(tmp_path: Path):
    legacy = tmp_path / "iso_forest.joblib"
    old = train_model(SMALL, legacy)
    store = ModelStore(tmp_path)
    assert store.active_version() is None
    assert store.active_artifact() == legacy, "served as it is until something is written"
    assert [entry.get("legacy") for entry in store.versions()] == [True]
    new, active = train_version(store, replace(SMALL, random_state=9), promote=False)
    assert not active
    assert store.active_version() == old.version, "the old model became the active version"
    assert not legacy.exists()
    assert load_forest(store.artifact_of(old.version)).version == old.version
    store.promote(new.version)
    assert store.rollback() == old.version


def test_a_killed_trainer_leaves_nothing_that_looks_like_a_version(tmp_path: Path):
    store = ModelStore(tmp_path)
    first, _ = train_version(store, SMALL, promote=False)
    leftover = tmp_path / "versions" / ".staging-deadbeef"
    leftover.mkdir()
    (leftover / "iso_forest.joblib").write_bytes(b"half")
    assert [entry["version"] for entry in store.versions()] == [first.version]
    train_version(store, replace(SMALL, random_state=3), promote=False)
    assert not leftover.exists(), "removed once the lock was taken"


def test_an_unreadable_pointer_is_named(tmp_path: Path):
    store = ModelStore(tmp_path)
    (tmp_path / POINTER).write_text("{not json")
    with pytest.raises(RegistryError, match=r"active\.json is unreadable"):
        store.active_version()


@pytest.mark.slow
def test_concurrent_trainers_and_promotions_leave_a_consistent_folder(tmp_path: Path):
    """Four `gridwatch train --promote` processes and promotions at once: every version complete, the pointer
    names one of them, and its history holds only real versions."""
    store = ModelStore(tmp_path)
    first, _ = train_version(store, SMALL, promote=False)

    def train(seed: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.tools.cli", "train", "--model-dir", str(tmp_path), "--promote",
             "--n-estimators", "5", "--max-samples", "256", "--train-samples", "1000", "--seed", str(seed)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(train, [11, 12, 13, 14]))
    assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
    versions = {entry["version"] for entry in store.versions()}
    assert len(versions) == 5
    pointer = store.pointer()
    assert pointer["version"] in versions - {first.version}
    assert set(pointer["previous"]) <= versions
    assert len(pointer["previous"]) == 4, "each promotion pushed the one before"
    for version in versions:
        assert load_forest(store.artifact_of(version)).version == version
    assert not list((tmp_path / "versions").glob(".staging-*"))
    shutil.rmtree(tmp_path / "versions" / first.version)
    assert first.version not in {entry["version"] for entry in store.versions()}
