"""`gridwatch bench` on a tiny configuration: every table comes out complete and consistent (no speed is asserted);
and the parts that read other programs' output (wrk's report, py-spy's stacks, /proc) on known inputs."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from app.detector.model import Detector
from app.scoring.batch import BatchScorer
from app.serving.edge.parsing import parse_readings
from app.tools.bench.live_profile import (
    EVENT_LOOP_STAGE,
    IDLE_STAGE,
    SERVER_STAGE,
    STAGE_ORDER,
    FunctionMatcher,
    parse_collapsed,
    profile_under_load,
    summarise,
)
from app.tools.bench.render import print_bench, render_markdown, scorer_share, sections
from app.tools.bench.results import BASELINE, GRIDWATCH, BenchConfig, BenchResult, HttpRow, ScorerRow
from app.tools.bench.server_probes import process_memory
from app.tools.bench.stream import StreamLatency, StreamResult, StreamRow
from app.tools.bench.wrk import parse_wrk
from tests.support import IN_CI, require_tool

HAS_PROC = Path("/proc/self/status").exists()


@pytest.mark.slow
def test_bench_measures_scorer_and_both_servers(model_dir: Path, tmp_path: Path):
    if IN_CI:  # .ci/run installs wrk (apt) and py-spy (the dev group): a missing one is a broken install there
        require_tool("wrk")
        require_tool("py-spy")
    markdown = tmp_path / "benchmarks.md"
    command = [
        sys.executable, "-m", "app.tools.cli", "bench", "--model-dir", str(model_dir), "--sizes", "1,9",
        "--min-seconds", "0.05", "--http-duration", "1", "--connections", "4", "--fixed-rps", "20",
        "--profile-requests", "50", "--ready-starts", "2",
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
    assert servers == [GRIDWATCH, BASELINE]
    for row in data["http"]:
        assert row["max_requests_per_s"] > 0
        assert row["max_rows_per_s"] == pytest.approx(row["max_requests_per_s"] * 64, rel=0.01)
        assert row["fixed_achieved_rps"] > 0
        assert row["fixed_failed"] == 0
        if IN_CI:  # .ci/run installs wrk; the fallback is for laptops without it
            assert row["tool"] == "wrk"
        _assert_defaults_figures(row)
    gridwatch, baseline = data["http"]
    assert len(gridwatch["fresh_ready_starts_s"]) == 2  # a fresh pod compiles numba's kernels
    assert gridwatch["fresh_ready_s"] == pytest.approx(statistics.median(gridwatch["fresh_ready_starts_s"]), abs=1e-3)
    assert gridwatch["fresh_ready_s"] > 0
    assert baseline["fresh_ready_s"] is None  # it compiles nothing
    assert data["model"]["trees"] == 100
    assert data["machine"]["cpus"] >= 1

    _assert_live_profile(data["live_profile"])

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
    assert "--ready-starts 2" in text
    assert "| score (compiled forest) | " in text
    assert f"| | {GRIDWATCH} | {BASELINE} |" in text  # both servers side by side
    for figure in ("| rows/s, 4 connections |", "| p99, one connection |", "| peak resident memory (VmHWM) |"):
        assert figure in text
    assert "| ready time, fresh pod (empty numba cache) |" in text
    assert "x the rows/s of the baseline" in text
    assert "## Where the live server spends its time (py-spy, under load)" in text
    if data["live_profile"]["available"]:
        assert f"| {IDLE_STAGE} | " in text
    else:
        assert data["live_profile"]["reason"] in text


def _assert_defaults_figures(row: dict[str, Any]) -> None:
    """The figures of one server at its defaults are present and consistent with each other."""
    assert row["max_p99_ms"] >= row["max_p50_ms"] > 0
    assert row["single_requests_per_s"] > 0
    assert row["single_p99_ms"] >= row["single_p50_ms"] > 0
    if HAS_PROC:
        assert row["rss_mb"] > 0
        assert row["peak_rss_mb"] >= row["rss_mb"]
    if len(os.sched_getaffinity(0)) > 1:  # the server on its own CPU, the load on the others
        assert row["server_cpus"]
        assert row["load_cpus"]
        assert not set(row["server_cpus"]) & set(row["load_cpus"])
    assert len(row["ready_starts_s"]) == 2
    assert all(seconds > 0 for seconds in row["ready_starts_s"])
    assert row["ready_s"] == pytest.approx(statistics.median(row["ready_starts_s"]), abs=1e-3)


def _assert_live_profile(live: dict[str, Any]) -> None:
    """Either a table whose shares add up to 1, or the reason there is none (never a missing tool in CI)."""
    if not live["available"]:
        assert live["reason"]
        assert not (IN_CI and "not installed" in live["reason"]), live["reason"]
        return
    stages = live["stages"]
    assert [stage["stage"] for stage in stages] == STAGE_ORDER
    assert sum(stage["samples"] for stage in stages) == live["rounds"] > 0
    assert sum(stage["share"] for stage in stages) == pytest.approx(1.0, abs=1e-3)
    assert live["busy_samples"] == live["rounds"] - stages[-1]["samples"]
    assert live["load_requests_per_s"] > 0
    assert live["hottest"]


WRK_REPORT = """Running 6s test @ http://127.0.0.1:18123/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    16.48ms    8.90ms 206.64ms   91.48%
    Req/Sec     2.01k   404.23     2.61k    62.30%
  Latency Distribution
     50%  830.00us
     75%   18.07ms
     90%   24.40ms
     99%    1.02s
  12179 requests in 6.10s, 37.12MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:   1996.39
Transfer/sec:      6.08MB
"""


def test_wrk_report_is_read_in_milliseconds():
    result = parse_wrk(WRK_REPORT, connections=32)
    assert result.requests == 12179
    assert result.requests_per_s == pytest.approx(1996.39)
    assert result.p50_ms == pytest.approx(0.83)
    assert result.p99_ms == pytest.approx(1020.0)
    assert result.socket_errors == 3


def test_wrk_error_answers_are_not_a_throughput():
    with pytest.raises(RuntimeError, match="12 non-2xx"):
        parse_wrk(WRK_REPORT + "  Non-2xx or 3xx responses: 12\n", connections=32)


def _frame(function: Callable[..., Any], *, offset: int = 1) -> str:
    """How py-spy writes a frame of ``function``: qualified name, path under its sys.path entry, a line inside it."""
    code = function.__code__
    path = Path(code.co_filename).resolve()
    entries = sorted((Path(entry).resolve() for entry in sys.path if entry), key=lambda p: len(p.parts), reverse=True)
    shown = next((path.relative_to(entry) for entry in entries if path.is_relative_to(entry)), path)
    return f"{code.co_qualname} ({shown}:{code.co_firstlineno + offset})"


def test_live_samples_go_to_the_innermost_stage_and_idle_fills_the_rounds():
    root = f"thread (4242): MainThread;_run_module_as_main (<frozen runpy>:198);{_frame(asyncio.Runner.run)}"
    score = _frame(BatchScorer.score)
    stacks = {
        f"{root};{_frame(parse_readings)}": 3,
        f"{root};{score};{_frame(Detector.predict_batch)};path_length_sums (app/detector/forest_jit.py:138)": 5,
        f"{root};{score};DriftMonitor.update (app/detector/drift.py:113)": 2,
        f"{root};{_frame(RequestResponseCycle.send)}": 4,
        root: 1,
        "thread (4243): Thread-1;worker (anyio/_backends/_asyncio.py:900)": 7,
    }
    collapsed = "".join(f"{stack} {count}\n" for stack, count in stacks.items())
    summary = summarise(parse_collapsed(collapsed), pid=4242, rounds=20)
    shares = {stage.stage: stage for stage in summary["stages"]}
    assert [stage.stage for stage in summary["stages"]] == STAGE_ORDER
    assert shares["parse + validate"].samples == 3
    assert shares["score (compiled forest)"].samples == 5
    assert shares["record metrics, drift"].samples == 2  # BatchScorer.score minus the scoring inside it
    assert shares[SERVER_STAGE].samples == 4
    assert shares[EVENT_LOOP_STAGE].samples == 1
    assert shares[IDLE_STAGE].samples == 20 - 15
    assert summary["other_thread_samples"] == 7
    assert summary["busy_samples"] == 15
    assert summary["incomplete_stacks"] == 0
    assert sum(stage.share for stage in summary["stages"]) == pytest.approx(1.0)
    assert summary["hottest"][0].stage == "path_length_sums (app/detector/forest_jit.py)"


def test_a_function_is_recognised_by_name_file_and_line():
    matcher = FunctionMatcher.of(parse_readings)
    (sample,) = parse_collapsed(f"{_frame(parse_readings)} 1\n")
    (elsewhere,) = parse_collapsed("parse_readings (other/parsing.py:45) 1\n")
    (outside,) = parse_collapsed(f"{_frame(parse_readings, offset=10_000)} 1\n")
    assert matcher.matches(sample.frames[0])
    assert not matcher.matches(elsewhere.frames[0])
    assert not matcher.matches(outside.frames[0])


def test_a_profile_that_cannot_attach_says_why_instead_of_failing(tmp_path: Path):
    require_tool("py-spy")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process: py-spy cannot attach, as when ptrace is refused
    loads: list[float] = []

    def load(seconds: float) -> float:
        loads.append(seconds)
        return 0.0

    profile = profile_under_load(gone.pid, 1, load, tmp_path)
    assert not profile.available
    assert f"py-spy could not sample pid {gone.pid}" in (profile.reason or "")
    assert loads  # the load ran (and was waited for) all the same


@pytest.mark.skipif(not HAS_PROC, reason="/proc is Linux's")
def test_memory_of_a_process_comes_from_proc():
    memory = process_memory(os.getpid())
    assert memory is not None
    assert memory.peak_rss_mb >= memory.rss_mb > 0


def test_the_shadow_server_serves_the_model_as_its_own_challenger(tmp_path: Path, trained_artifact: Path):
    """`gridwatch bench --shadow`: the same version active and in the shadow, so the extra cost is one scoring."""
    from app.detector.registry import ModelStore
    from app.tools.bench.results import GRIDWATCH_SHADOW
    from app.tools.bench.servers import shadow_spec

    spec = shadow_spec(trained_artifact, tmp_path)
    version = json.loads(trained_artifact.with_suffix(".json").read_text())["model_version"]
    assert spec.name == GRIDWATCH_SHADOW
    assert spec.env["SHADOW_MODEL_VERSION"] == version
    store = ModelStore(Path(spec.env["MODEL_DIR"]))
    assert store.active_version() == version
    assert store.artifact_of(version).is_file()
    assert trained_artifact.is_file(), "the benchmarked model itself is left where it was"


def _http_row(server: str, rows_per_s: float) -> HttpRow:
    return HttpRow(
        server=server, tool="wrk", max_rows_per_s=rows_per_s, max_requests_per_s=rows_per_s / 64, max_p50_ms=3.25,
        max_p99_ms=9.5, max_errors=0, single_requests_per_s=812.4, single_p50_ms=1.1, single_p99_ms=2.3,
        rss_mb=86.6, peak_rss_mb=91.4, ready_s=0.73, ready_starts_s=(0.7, 0.73, 0.8), fresh_ready_s=None,
        fresh_ready_starts_s=(), fixed_rps=150.0, fixed_achieved_rps=149.9, fixed_p50_ms=1.4, fixed_p99_ms=4.2,
        fixed_failed=0, fixed_unsent=0, server_cpus=(0,), load_cpus=(1,),
    )  # fmt: skip


def test_the_share_of_the_scorer_needs_the_scorer_measured_at_the_http_batch_size():
    http = [_http_row(GRIDWATCH, 100_000.0)]
    at_64 = [ScorerRow(64, 3.7, 0.128, 0.5, 28.9, 7.4)]  # 500,000 readings/s in process
    assert scorer_share(http, at_64, 64) is not None
    assert "20.0% of its own scorer's rows/s" in (scorer_share(http, at_64, 64) or "")
    assert scorer_share(http, at_64, 1_000) is None  # no scorer figure at that batch size: no share
    assert scorer_share(http, [ScorerRow(64, 3.7, None, 0.5, None, 7.4)], 64) is None  # no compiled scorer


def test_the_terminal_and_the_markdown_are_one_rendering():
    """docs/benchmarks.md and the terminal once rendered the results two ways; now both lay out ``sections``."""
    result = BenchResult(
        machine={"date": "2026-12-03T23:00:00+00:00", "cpu": "x", "cpus": 2, "load_average_at_start": [0.1],
                 "python": "3.11", "numpy": "2", "scikit-learn": "1.8", "kernels": "ahead-of-time"},
        model={"version": "abc", "trees": 100, "max_samples": 16384, "nodes": 340_000, "max_depth": 14,
               "artifact_mb": 3.1},
        config=asdict(BenchConfig()),
        scorer=[ScorerRow(64, 9.8, 0.021, 0.4, 466.7, 24.5), ScorerRow(1_024, 12.0, None, 2.5, None, 4.8)],
        http=[_http_row(GRIDWATCH, 70_120.0), _http_row(BASELINE, 4_100.0)],
        stream=StreamResult(
            [StreamRow(500, 50_000, 5.03, 9_938.0, 22_140.0, 694_689.5, 0.0319)],
            StreamLatency(10_000.0, 10.0, 100_000, 65.38, 1_171.47, 1_221.99),
        ),
    )  # fmt: skip
    markdown = render_markdown(result, "gridwatch bench")
    console = Console(record=True, width=500, highlight=False)
    print_bench(result, console)
    terminal = console.export_text()
    cells = [cell for section in sections(result) for table in section.tables for row in table.rows for cell in row]
    assert "466.7x" in cells
    assert "3.2%" in cells  # the consumer's share of the scorer
    assert "22,140" in cells  # drain
    assert "9,938" in cells  # live
    assert "p99 1,171.5 ms" in markdown
    assert "p99 1,171.5 ms" in terminal
    assert "17.1x the rows/s of the baseline" in markdown
    assert "17.1x the rows/s of the baseline" in terminal
    share = "serves 2.3% of its own scorer's rows/s (70,120 against 3,047,619 scored in process, batches of 64"
    assert share in markdown
    assert share in terminal
    for cell in cells:
        assert cell in markdown, cell
        assert cell in terminal, cell
