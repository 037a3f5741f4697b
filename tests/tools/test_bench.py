"""`gridwatch bench` on a tiny configuration: both tables come out complete and consistent (no speed is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from tests.support import IN_CI

pytestmark = pytest.mark.slow


def test_bench_measures_scorer_and_both_servers(model_dir: Path, tmp_path: Path):
    markdown = tmp_path / "benchmarks.md"
    command = [
        sys.executable, "-m", "app.tools.cli", "bench", "--model-dir", str(model_dir), "--sizes", "1,9",
        "--min-seconds", "0.05", "--http-duration", "1", "--connections", "4", "--fixed-rps", "20",
        "--profile-requests", "50",
        "--write", str(markdown), "--json",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "TRAIN_IF_MISSING": "0"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)

    assert [row["batch"] for row in data["scorer"]] == [1, 9]
    for row in data["scorer"]:
        assert row["sklearn_ms"] > 0
        assert row["numpy_ms"] > 0
        assert row["speedup_numpy"] == pytest.approx(row["sklearn_ms"] / row["numpy_ms"], rel=0.01)
        if NUMBA_AVAILABLE:
            assert row["speedup_numba"] == pytest.approx(row["sklearn_ms"] / row["numba_ms"], rel=0.01)

    servers = [row["server"] for row in data["http"]]
    assert servers == ["gridwatch (compiled forest, orjson)", "baseline (FastAPI + pydantic + scikit-learn)"]
    for row in data["http"]:
        assert row["max_requests_per_s"] > 0
        assert row["max_rows_per_s"] == pytest.approx(row["max_requests_per_s"] * 64, rel=0.01)
        assert row["fixed_achieved_rps"] > 0
        assert row["fixed_failed"] == 0
        if IN_CI:  # .ci/run installs wrk; the fallback is for laptops without it
            assert row["tool"] == "wrk"
    assert data["model"]["trees"] == 100
    assert data["machine"]["cpus"] >= 1

    profile = data["request_path"]
    assert profile["rows"] == 64
    assert profile["requests"] == 50
    stages = {stage["stage"]: stage for stage in profile["stages"]}
    assert list(stages) == [
        "read body",
        "parse + validate",
        "score (compiled forest)",
        "serialise answer",
        "record metrics, drift",
        "framework, middleware, response",
    ]
    for stage in stages.values():
        assert stage["us_per_request"] > 0, stage  # every stage was found in the profile
    assert sum(stage["share"] for stage in stages.values()) == pytest.approx(1.0, abs=0.01)
    assert profile["unprofiled_us_per_request"] > 0

    text = markdown.read_text()
    assert text.startswith("# Benchmarks")
    assert "| 1 | " in text
    assert "| 9 | " in text
    assert "baseline (FastAPI + pydantic + scikit-learn)" in text
    assert "gridwatch bench --model-dir" in text  # the command that produced the figures
    assert "| score (compiled forest) | " in text
