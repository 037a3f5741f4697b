"""The serving form of a model: the compiled forest on disk, verified before use, loaded without scikit-learn."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.detector import forest_jit
from app.detector.artifact import forest_path, load_forest, metadata_path
from app.detector.errors import ModelArtifactError
from app.detector.forest import CompiledForest
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.sim import GridSimulator
from tests.detector.support import rewrite_metadata
from tests.support import IN_CI, ROOT, require_tool


def hard_rows(n: int = 20_000) -> np.ndarray:
    return GridSimulator(anomaly_rate=0.3, seed=17, interval_s=7.0).batch(n).features()


def test_the_serving_form_scores_exactly_like_scikit_learn(artifact: Path, detector: Detector):
    served = load_forest(artifact)
    assert served.estimator is None
    assert served.version == detector.version
    X = hard_rows()
    reference = Detector.from_estimator(detector.estimator, detector.metadata, scorer=Scorer.sklearn)
    for scorer in (Scorer.numpy, *([Scorer.numba] if forest_jit.AVAILABLE else [])):
        served.use(scorer)
        for got, expected in zip(served.predict_batch(X), reference.predict_batch(X), strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "features", [["current", "voltage", "frequency"], ["voltage", "voltage", "voltage"], ["voltage", "current"]]
)
def test_metadata_cannot_reorder_or_repeat_the_columns_the_forest_was_trained_on(artifact: Path, features):
    metadata = json.loads(metadata_path(artifact).read_text())
    metadata["config"]["features"] = features
    metadata_path(artifact).write_text(json.dumps(metadata))
    with pytest.raises(
        ModelArtifactError,
        match=r"the metadata lists features .* the forest was trained on|features name voltage more than once",
    ):
        load_forest(artifact)


def test_a_truncated_or_altered_forest_file_is_refused_before_use(artifact: Path):
    data = forest_path(artifact).read_bytes()
    forest_path(artifact).write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelArtifactError,
        match=r"iso_forest.npz holds \d+ bytes, iso_forest.json records \d+: truncated, modified or half-written",
    ):
        load_forest(artifact)


def test_metadata_that_names_no_forest_or_a_path_outside_the_folder_is_refused(artifact: Path):
    rewrite_metadata(artifact, forest={"file": "../elsewhere.npz", "sha256": "0" * 64})
    with pytest.raises(ModelArtifactError, match="names no compiled forest"):
        load_forest(artifact)
    rewrite_metadata(artifact, forest=None)
    with pytest.raises(ModelArtifactError, match="names no compiled forest"):
        load_forest(artifact)


def arrays_of(forest: CompiledForest) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(forest.to_npz()), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(format_version=np.array(99)), "forest format 99"),
        (lambda a: a.update(meta=a["meta"].astype(np.int64)), "meta is int64"),
        (lambda a: a.update(threshold=a["threshold"][:-1]), "differ in length"),
        (lambda a: a["meta"].__setitem__(0, np.int32(2**30)), "points outside the forest"),
        (lambda a: a.update(roots=np.array([-1], dtype=np.int32)), "root lies outside"),
        (lambda a: a.pop("leaf_value"), "leaf_value"),
    ],
)
def test_a_forest_file_the_kernels_would_misread_is_refused(detector: Detector, change, message: str):
    """Even with a matching hash (the metadata rewritten too), arrays that would send a kernel out of bounds or
    score garbage never load: from_npz checks types, shapes and every node's children."""
    arrays = arrays_of(detector.forest)
    change(arrays)
    with pytest.raises((ValueError, KeyError), match=message):
        CompiledForest.from_npz(npz(arrays))


def test_kernel_unrolling_is_the_same_constant_on_both_paths():
    from app.detector import forest_kernels

    assert forest_jit.CHAINS == forest_kernels.CHAINS


def aot_kernels_or_skip():
    try:
        from app.detector import _forest_aot
    except ImportError:
        if IN_CI:  # `make sync` builds them; without them CI would test only the just-in-time path
            pytest.fail("app/detector/_forest_aot*.so is missing: `make sync` builds it")
        pytest.skip("ahead-of-time kernels not built (python -m app.detector.forest_aot)")
    return _forest_aot


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 300, 1_000])
def test_ahead_of_time_and_just_in_time_kernels_sum_identically(detector: Detector, rows: int):
    aot = aot_kernels_or_skip()
    from numba import njit

    from app.detector import forest_kernels

    forest = detector.forest
    X = np.ascontiguousarray(hard_rows(rows), dtype=np.float32)
    args = (X, forest.threshold, forest.meta, forest.leaf_value, forest.roots, forest.max_depth, forest.feature_bits)
    mask = (1 << forest.feature_bits) - 1
    for name in forest_kernels.KERNELS:
        jitted = njit(nogil=True)(getattr(forest_kernels, name))(*args, mask)
        np.testing.assert_array_equal(getattr(aot, name)(*args, mask), jitted)
    np.testing.assert_array_equal(
        forest_jit.path_length_sums(*args), np.asarray(forest.path_length_sums(X.astype(np.float64), Scorer.numpy))
    )


@pytest.mark.slow
def test_the_ahead_of_time_build_produces_an_importable_module(tmp_path: Path, detector: Detector):
    """What the image's builder stage and `make sync` run, into a scratch folder, imported from there."""
    require_tool("gcc")
    package = tmp_path / "app" / "detector"
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("_forest_aot*", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "app.detector.forest_aot"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (built,) = package.glob("_forest_aot.*")
    check = (
        "import sys; from app.detector import forest_jit; "
        "print(forest_jit.KIND, 'numba' in sys.modules, 'llvmlite' in sys.modules)"
    )
    probe = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["ahead-of-time", "False", "False"], built
