"""The registry never serves a wrong model and never loses the operator's: real servers and the real command line
sharing one MODEL_DIR, each case one way a model folder goes wrong in operation (issue 25)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx2
import numpy as np
import pytest

from app.detector.artifact import forest_path, metadata_path
from app.detector.model import ModelConfig
from app.detector.registry import POINTER, ModelStore
from app.detector.training import train_version
from tests.support import ServerProcess, status_kib

pytestmark = pytest.mark.slow

SMALL = ModelConfig(n_estimators=20, max_samples=1024, train_samples=5_000)
READING = {"voltage": 230.1, "current": 10.4, "frequency": 50.01}
DEADLINE_S = 60.0
"""Far above a poll interval of 0.2 s: what has not happened by then did not happen."""
CHART_MEMORY_LIMIT_KIB = 512 * 1024


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """Two versions, the first active, the second not."""
    store = ModelStore(tmp_path / "models")
    train_version(store, SMALL, promote=False)
    train_version(store, replace(SMALL, random_state=7), promote=False)
    return store


def versions_of(store: ModelStore) -> tuple[str, str]:
    active = store.active_version()
    (other,) = [path.name for path in (store.root / "versions").iterdir() if path.name != active]
    assert active is not None
    return active, other


def gridwatch(store: ModelStore, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line on the store's folder; never raises on a non-zero exit."""
    command = [sys.executable, "-m", "app.tools.cli", *args]
    environment = {**os.environ, "MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "1", **(env or {})}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=environment)


def server(store: ModelStore, **env: str) -> ServerProcess:
    """A server started as the chart starts it (TRAIN_IF_MISSING on), ready or not: it answers /livez."""
    settings = {"MODEL_DIR": str(store.root), "TRAIN_IF_MISSING": "1", "MODEL_POLL_INTERVAL": "0", **env}
    return ServerProcess(env={"LOG_LEVEL": "info", **settings}, ready_path="/livez")


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE_S:.0f}s"
        time.sleep(0.05)  # polling interval


def health(url: str) -> tuple[int, dict]:
    answer = httpx2.get(f"{url}/health")
    return answer.status_code, answer.json()


def unready_because(url: str, text: str) -> dict:
    """/health once it answers 503 naming ``text`` (the start-up load has failed at least once)."""
    found: dict = {}

    def refused() -> bool:
        status, body = health(url)
        found.update(body)
        return status == 503 and text in json.dumps(body)

    wait_for(refused, f"/health answering 503 with {text!r}")
    return found


def metric(url: str, sample: str) -> float:
    for line in httpx2.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{sample} "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} is not exported")


def predict_version(url: str) -> str:
    answer = httpx2.post(f"{url}/predict", json={"readings": [READING]})
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def folder_listing(store: ModelStore) -> list[str]:
    return sorted(str(path.relative_to(store.root)) for path in store.root.rglob("*") if ".lock" not in path.name)


def write_pointer(store: ModelStore, version: str) -> None:
    """What a hand edit, or another tool, does: point active.json at ``version`` without any check."""
    (store.root / POINTER).write_text(json.dumps({"version": version, "previous": []}))


def readings_file(path: Path, *, rows: int = 2_000, frequency: float | None = None, header: list[str] | None = None):
    rng = np.random.default_rng(1)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or ["voltage", "current", "frequency"])
        for _ in range(rows):
            hz = 50.0 + rng.normal(0, 0.02) if frequency is None else frequency
            writer.writerow([230 + rng.normal(0, 2), 10 + rng.normal(0, 1), hz, *([1.0] * (len(header or []) - 3))])
    return path


# 1. Nothing that does not load is committed or promoted; training never replaces an existing version.


def test_training_on_a_constant_column_is_refused_in_one_line_and_nothing_is_promoted(
    store: ModelStore, tmp_path: Path
):
    active, _ = versions_of(store)
    before = folder_listing(store)
    data = readings_file(tmp_path / "rounded.csv", frequency=50.0)
    result = gridwatch(store, "train", "--data", str(data), "--promote")
    assert result.returncode != 0
    assert "frequency holds the same value in every reading" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert store.active_version() == active
    assert folder_listing(store) == before


def test_a_data_file_naming_a_column_twice_is_refused_in_one_line(store: ModelStore, tmp_path: Path):
    data = readings_file(tmp_path / "twice.csv", header=["voltage", "current", "frequency", "voltage"])
    result = gridwatch(store, "train", "--data", str(data), "--promote")
    assert result.returncode != 0
    assert "names voltage more than once" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_evaluate_never_writes_even_with_train_if_missing(store: ModelStore):
    active, _ = versions_of(store)
    forest_path(store.artifact_of(active)).write_bytes(b"damaged")
    before = folder_listing(store)
    result = gridwatch(store, "evaluate", "--readings", "2000")
    assert result.returncode != 0
    assert f"the active version {active} cannot be served" in result.stderr
    assert folder_listing(store) == before, "a read-only command wrote into MODEL_DIR"
    empty = ModelStore(store.root.parent / "empty")
    assert gridwatch(empty, "evaluate", "--readings", "2000").returncode != 0
    assert not empty.root.exists() or folder_listing(empty) == []


@pytest.mark.parametrize("damage", ["forest", "pointer"])
def test_a_restart_with_train_if_missing_never_trains_over_the_operators_model(store: ModelStore, damage: str):
    active, _ = versions_of(store)
    if damage == "forest":
        forest_path(store.artifact_of(active)).write_bytes(b"damaged")
        reason = f"the active version {active} cannot be served"
    else:
        write_pointer(store, active[:-1])  # a hand edit with a typo in the version
        reason = f"the active version {active[:-1]} cannot be served"
    before = folder_listing(store)
    with server(store) as running:
        unready_because(running.url, reason)
        wait_for(lambda: running.log().count("model unavailable") >= 2, "a second load attempt")
        assert folder_listing(store) == before, "nothing was trained, nothing was rewritten"
        assert "preparing it in a child process" not in running.log(), "no training child was started"


def test_an_empty_folder_is_still_trained_into_on_first_start(tmp_path: Path):
    empty = ModelStore(tmp_path / "models")
    with server(empty) as running:
        wait_for(lambda: health(running.url)[0] == 200, "the first model trained")
        assert [path.name for path in (empty.root / "versions").iterdir()] == [empty.active_version()]


# 2. The column order comes only from what a hash covers.


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        (["current", "voltage", "frequency"], "the forest was trained on"),
        (["voltage", "voltage", "frequency"], "more than once"),
    ],
)
def test_an_edited_feature_list_is_refused_at_start_up(store: ModelStore, features: list[str], reason: str):
    active, _ = versions_of(store)
    meta = metadata_path(store.artifact_of(active))
    metadata = json.loads(meta.read_text())
    metadata["config"]["features"] = features
    meta.write_text(json.dumps(metadata))
    with server(store, SCORER="sklearn" if reason == "more than once" else "auto") as running:
        unready_because(running.url, reason)
        assert httpx2.post(f"{running.url}/predict", json={"readings": [READING]}).status_code == 503


# 3. and 4. Verified at promote; a refused version is read again once repaired; skew is visible.


def test_promote_refuses_a_truncated_forest_and_a_renamed_copy(store: ModelStore):
    active, other = versions_of(store)
    forest = forest_path(store.artifact_of(other))
    good = forest.read_bytes()
    forest.write_bytes(good[:1000])
    result = gridwatch(store, "models", "promote", other)
    assert result.returncode != 0
    assert "truncated" in result.stderr
    listing = json.loads(gridwatch(store, "models", "list", "--json").stdout)
    problems = {entry["version"]: entry["problem"] for entry in listing["versions"]}
    assert problems[active] is None
    assert "truncated" in problems[other], "the listing says which version does not load"
    forest.write_bytes(good)
    shutil.copytree(store.artifact_of(active).parent, store.root / "versions" / "renamed")
    result = gridwatch(store, "models", "promote", "renamed")
    assert result.returncode != 0
    assert "its folder is 'renamed'" in result.stderr
    assert store.active_version() == active


def test_two_servers_converge_once_a_refused_version_is_repaired(store: ModelStore):
    first, second = versions_of(store)
    forest = forest_path(store.artifact_of(second))
    good = forest.read_bytes()
    with server(store, MODEL_POLL_INTERVAL="0.2") as a:
        wait_for(lambda: health(a.url)[0] == 200, "server A ready")
        forest.write_bytes(good[:1000])
        write_pointer(store, second)  # pointed at by hand: the watcher must refuse it
        wait_for(lambda: metric(a.url, "model_refusing_active") == 1.0, "A refusing the damaged version")
        assert predict_version(a.url) == first
        assert metric(a.url, 'model_swaps_total{result="failed"}') == 1.0, "refused once, not at every poll"
        forest.write_bytes(good)  # repaired: new inode or mtime, so the watcher reads it again
        wait_for(lambda: predict_version(a.url) == second, "A swapping to the repaired version")
        assert metric(a.url, "model_refusing_active") == 0.0
        with server(store) as b:
            wait_for(lambda: health(b.url)[0] == 200, "server B ready")
            assert predict_version(b.url) == predict_version(a.url) == second


def test_a_renamed_version_is_refused_once_and_health_never_names_it(store: ModelStore):
    active, _ = versions_of(store)
    shutil.copytree(store.artifact_of(active).parent, store.root / "versions" / "renamed")
    with server(store) as running:
        wait_for(lambda: health(running.url)[0] == 200, "ready")
        write_pointer(store, "renamed")
        for _ in range(5):
            refused = httpx2.post(f"{running.url}/model/reload")
            assert refused.status_code == 409
            assert "its folder is 'renamed'" in refused.json()["detail"]
        assert metric(running.url, 'model_swaps_total{result="failed"}') == 1.0
        assert metric(running.url, 'model_swaps_total{result="swapped"}') == 0.0
        assert health(running.url)[1]["model_version"] == active
    with server(store) as restarted:
        unready_because(restarted.url, "its folder is 'renamed'")


# 5. Sizes are compared before anything is read.


def test_a_forest_file_far_larger_than_recorded_is_refused_without_reading_it(store: ModelStore):
    active, _ = versions_of(store)
    forest = forest_path(store.artifact_of(active))
    with forest.open("r+b") as handle:
        handle.truncate(3 * 1024**3)  # sparse: 3 GiB long, nothing on disk
    with server(store) as running:
        unready_because(running.url, "holds 3221225472 bytes")
        assert running.process is not None
        for pid in (running.process.pid, *children(running.process.pid)):
            assert status_kib(pid, "VmHWM") < CHART_MEMORY_LIMIT_KIB / 2, "the file was read"


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (uvicorn's worker processes)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *children(int(child))]
    return found


# 6. A damaged version does not make a server train again and again.


def test_unusable_metadata_does_not_start_a_training_child_at_every_retry(store: ModelStore):
    active, _ = versions_of(store)
    meta = metadata_path(store.artifact_of(active))
    metadata = json.loads(meta.read_text())
    metadata["feature_stats"]["frequency"]["std"] = 0.0
    meta.write_text(json.dumps(metadata))
    before = folder_listing(store)
    with server(store) as running:
        wait_for(lambda: running.log().count("model unavailable") >= 3, "three load attempts")
        assert "preparing it in a child process" not in running.log()
        assert folder_listing(store) == before


def test_a_retrain_of_a_damaged_version_sets_it_aside_and_repairs_it(store: ModelStore):
    active, _ = versions_of(store)
    meta = metadata_path(store.artifact_of(active))
    metadata = json.loads(meta.read_text())
    metadata["feature_stats"]["frequency"]["std"] = 0.0
    meta.write_text(json.dumps(metadata))
    assert store.why_unusable(active) is not None
    retrained, _ = train_version(store, SMALL, promote=False)  # the same bytes, so the same version
    assert retrained.version == active
    assert store.why_unusable(active) is None
    assert list((store.root / "versions").glob(f".damaged-{active}-*"))


# 8. A damaged pointer is repaired by the command its message recommends.


def test_promote_repairs_an_unreadable_pointer_and_keeps_the_bad_one_aside(store: ModelStore):
    active, other = versions_of(store)
    (store.root / POINTER).write_text("{not json")
    with server(store) as running:
        message = unready_because(running.url, "promote a version to rewrite it")
        assert "active.json" in json.dumps(message)
        listing = gridwatch(store, "models", "list", "--json")
        assert listing.returncode == 0, "the versions to choose from are still listed"
        assert {entry["version"] for entry in json.loads(listing.stdout)["versions"]} == {other, active}
        result = gridwatch(store, "models", "promote", other)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: health(running.url)[0] == 200, "ready once the pointer is repaired")
        assert predict_version(running.url) == other
    aside = list(store.root.glob(f"{POINTER}.damaged-*"))
    assert len(aside) == 1
    assert aside[0].read_text() == "{not json"


# 9. SCORER=sklearn swaps like every other scorer.


def test_the_sklearn_scorer_hot_swaps(store: ModelStore):
    first, second = versions_of(store)
    with server(store, SCORER="sklearn") as running:
        wait_for(lambda: health(running.url)[0] == 200, "ready")
        assert gridwatch(store, "models", "promote", second).returncode == 0
        swapped = httpx2.post(f"{running.url}/model/reload")
        assert swapped.status_code == 200, swapped.text
        assert swapped.json() == {"model_version": second, "previous": first, "swapped": True}
        assert predict_version(running.url) == second


# 10. A challenger that is gone stops scoring.


def test_a_challenger_whose_files_are_gone_stops_scoring(store: ModelStore):
    _, challenger = versions_of(store)
    assert gridwatch(store, "models", "shadow", challenger).returncode == 0
    scored = f'shadow_readings_scored_total{{shadow_version="{challenger}"}}'
    with server(store) as running:
        wait_for(lambda: health(running.url)[0] == 200, "ready")
        for _ in range(3):
            predict_version(running.url)
        wait_for(lambda: metric(running.url, scored) == 3.0, "the shadow scoring the three readings")
        shutil.rmtree(store.artifact_of(challenger).parent)
        assert httpx2.post(f"{running.url}/model/reload").status_code == 200
        for _ in range(3):
            predict_version(running.url)
        assert metric(running.url, scored) == 3.0, "a challenger that is gone scored on"
        assert f"not scoring in the shadow with model {challenger}" in running.log()


# 7. Reload: one check in flight; a refused version is not read again until its files change.


def test_concurrent_reload_calls_share_one_check():
    import asyncio
    import threading

    from app.scoring.hot_swap import SharedCheck, SwapOutcome

    started, release, calls = threading.Event(), threading.Event(), []

    def check() -> SwapOutcome:
        calls.append(1)
        started.set()
        release.wait(30)
        return SwapOutcome(serving="b", previous="a")

    async def many() -> list[SwapOutcome]:
        shared = SharedCheck(check)
        first = asyncio.ensure_future(shared())
        await asyncio.to_thread(started.wait, 30)  # the first check is in flight...
        others = [asyncio.ensure_future(shared()) for _ in range(63)]  # ...when 63 more callers arrive
        release.set()
        return await asyncio.gather(first, *others)

    outcomes = asyncio.run(many())
    assert len(calls) == 1
    assert {outcome.previous for outcome in outcomes} == {"a"}, "every caller got the one check's outcome"


def test_64_clients_reloading_a_refused_version_read_it_once(store: ModelStore):
    from concurrent.futures import ThreadPoolExecutor

    first, second = versions_of(store)
    forest = forest_path(store.artifact_of(second))
    forest.write_bytes(forest.read_bytes()[:1000])
    with server(store) as running:
        wait_for(lambda: health(running.url)[0] == 200, "ready")
        write_pointer(store, second)
        with ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(lambda _: httpx2.post(f"{running.url}/model/reload", timeout=60), range(64)))
        assert {answer.status_code for answer in answers} == {409}
        assert len({answer.json()["detail"] for answer in answers}) == 1
        assert metric(running.url, 'model_swaps_total{result="failed"}') == 1.0
        assert running.log().count(f"not swapping to model {second}") == 1, "read and logged once"
        assert predict_version(running.url) == first
