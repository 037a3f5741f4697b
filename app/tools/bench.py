"""``gridwatch bench``: how fast GridWatch scores, measured on the machine it runs on.

Two parts, both against the same model artifact:

1. **Scorer**: median time per call of scikit-learn's ``decision_function`` and of the compiled forest (numba and
   NumPy paths) for several batch sizes, in the same process.
2. **HTTP**: the real service (``gridwatch serve``, one worker) and the plain baseline (``app.tools.baseline``:
   FastAPI + pydantic + scikit-learn), each started here on a free localhost port. Each server is pinned to the
   first CPU and the load to the others, so client and server do not compete. Measured: the most rows/s with 32
   connections sending batches of 64 back to back (``wrk`` if installed, else this package's load generator at an
   unreachable rate), and the latency at the workshop's load (150 requests/s of 64 readings, open loop,
   ``app.tools.loadgen``).

Results are printed and, with ``--write``, rendered as Markdown (docs/benchmarks.md) with the machine they came from.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.sim import GridSimulator
from app.tools.loadgen import LoadConfig, run_load
from app.tools.processes import free_port, wait_until_ready
from app.tools.request_profile import RequestProfile, profile_predict

SERVER_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class BenchConfig:
    sizes: Sequence[int] = (1, 64, 1024, 65536)
    min_seconds: float = 0.5
    """Each scorer measurement repeats until this much time has passed (at least 3 calls), then takes the median."""
    http: bool = True
    http_duration: float = 10.0
    connections: int = 32
    batch_size: int = 64
    fixed_rps: float = 150.0
    profile_requests: int = 2000
    """Requests of ``batch_size`` readings profiled in process (``app.tools.request_profile``); 0 skips the profile."""


@dataclass(frozen=True)
class ScorerRow:
    batch: int
    sklearn_ms: float
    numba_ms: float | None
    numpy_ms: float
    speedup_numba: float | None
    speedup_numpy: float

    @property
    def rows_per_s(self) -> dict[str, float]:
        times = {"sklearn": self.sklearn_ms, "numba": self.numba_ms, "numpy": self.numpy_ms}
        return {name: self.batch / (ms / 1000.0) for name, ms in times.items() if ms}


@dataclass(frozen=True)
class HttpRow:
    server: str
    tool: str
    max_rows_per_s: float
    max_requests_per_s: float
    max_p99_ms: float
    fixed_rps: float
    fixed_achieved_rps: float
    fixed_p50_ms: float
    fixed_p99_ms: float
    fixed_failed: int
    fixed_unsent: int


@dataclass
class BenchResult:
    machine: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    scorer: list[ScorerRow] = field(default_factory=list)
    http: list[HttpRow] = field(default_factory=list)
    request_path: RequestProfile | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    info: dict[str, Any] = {
        "date": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    if NUMBA_AVAILABLE:
        import numba  # noqa: PLC0415

        info["numba"] = numba.__version__
    return info


def _median_seconds(call: Callable[[], object], min_seconds: float) -> float:
    call()  # warm: caches, numba's dispatcher
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scorer_table(detector: Detector, config: BenchConfig) -> list[ScorerRow]:
    X = GridSimulator(anomaly_rate=0.02, seed=11, interval_s=13.0).batch(max(config.sizes)).features()
    forest, estimator = detector.forest, detector.estimator
    rows = []
    for size in config.sizes:
        batch = X[:size]
        sk = _median_seconds(lambda b=batch: estimator.decision_function(b), config.min_seconds)
        nb = (
            _median_seconds(lambda b=batch: forest.decision_function(b, Scorer.numba), config.min_seconds)
            if NUMBA_AVAILABLE
            else None
        )
        npy = _median_seconds(lambda b=batch: forest.decision_function(b, Scorer.numpy), config.min_seconds)
        rows.append(
            ScorerRow(
                batch=size,
                sklearn_ms=round(sk * 1000, 4),
                numba_ms=round(nb * 1000, 4) if nb is not None else None,
                numpy_ms=round(npy * 1000, 4),
                speedup_numba=round(sk / nb, 1) if nb else None,
                speedup_numpy=round(sk / npy, 1),
            )
        )
    return rows


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(server CPUs, load CPUs): the first CPU for the server, the rest for the load; None on one CPU."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


@contextmanager
def _server(name: str, command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
    try:
        split = _cpu_split()
        if split is not None:
            os.sched_setaffinity(process.pid, split[0])
        try:
            wait_until_ready(f"{url}/health", timeout=SERVER_START_TIMEOUT_S, process=process)
        except RuntimeError as error:
            raise RuntimeError(f"{name}: {error}; see {log}") from None
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _load_cpus() -> Iterator[None]:
    """Run the load generator (this process) on the CPUs the server does not use."""
    split = _cpu_split()
    if split is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, split[1])
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


_WRK_LATENCY = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def _max_throughput_wrk(wrk: str, url: str, body: Path, config: BenchConfig) -> tuple[float, float]:
    script = body.with_suffix(".lua")
    script.write_text(
        f'local f = io.open("{body}", "r")\nwrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    split = _cpu_split()
    prefix = ["taskset", "-c", ",".join(map(str, sorted(split[1])))] if split and shutil.which("taskset") else []
    command = [*prefix, wrk, "-t1", f"-c{config.connections}", f"-d{config.http_duration:.0f}s", "--latency"]
    output = subprocess.run(
        [*command, "-s", str(script), f"{url}/predict"], capture_output=True, text=True, check=True
    ).stdout
    if errors := _WRK_ERRORS.search(output):
        raise RuntimeError(f"{errors.group(1)} non-2xx answers during the throughput run:\n{output}")
    rate = float(_WRK_RATE.search(output).group(1))
    value, unit = _WRK_LATENCY.search(output).groups()
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rate, p99_ms


def _max_throughput_loadgen(url: str, config: BenchConfig) -> tuple[float, float]:
    """Without wrk: an open-loop schedule far above capacity; the achieved rate is the server's (or ours)."""
    report = run_load(
        LoadConfig(
            url=url,
            rps=20_000,
            duration=config.http_duration,
            batch_size=config.batch_size,
            workers=config.connections,
            timeout=30.0,
        )
    )
    return report.achieved_rps, report.latency_ms["p99"]


def http_row(name: str, url: str, body: Path, config: BenchConfig) -> HttpRow:
    with _load_cpus():
        wrk = shutil.which("wrk")
        rate, p99 = _max_throughput_wrk(wrk, url, body, config) if wrk else _max_throughput_loadgen(url, config)
        fixed = run_load(
            LoadConfig(
                url=url,
                rps=config.fixed_rps,
                duration=config.http_duration,
                batch_size=config.batch_size,
                workers=config.connections,
                seed=5,
            )
        )
    return HttpRow(
        server=name,
        tool="wrk" if wrk else "gridwatch load",
        max_rows_per_s=round(rate * config.batch_size, 1),
        max_requests_per_s=round(rate, 1),
        max_p99_ms=round(p99, 2),
        fixed_rps=config.fixed_rps,
        fixed_achieved_rps=fixed.achieved_rps,
        fixed_p50_ms=fixed.latency_ms["p50"],
        fixed_p99_ms=fixed.latency_ms["p99"],
        fixed_failed=fixed.failed,
        fixed_unsent=fixed.unsent,
    )


def http_table(artifact: Path, config: BenchConfig, workdir: Path) -> list[HttpRow]:
    body = workdir / "body.json"
    records = GridSimulator(anomaly_rate=0.01, seed=3).batch(config.batch_size).to_records(ground_truth=False)
    body.write_text(json.dumps({"readings": records}))
    servers = {
        "gridwatch (compiled forest, orjson)": [sys.executable, "-m", "app.tools.cli", "serve"],
        "baseline (FastAPI + pydantic + scikit-learn)": [
            sys.executable,
            "-m",
            "app.tools.baseline",
            "--model",
            str(artifact),
            "--port",
            "{port}",
        ],
    }
    rows = []
    for name, template in servers.items():
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in template]
        env = {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WORKERS": "1",
            "MODEL_DIR": str(artifact.parent),
            "MODEL_NAME": artifact.name,
            "TRAIN_IF_MISSING": "0",
            "LOG_LEVEL": "warning",
        }
        with _server(name, command, env, port, workdir / f"server-{port}.log") as url:
            rows.append(http_row(name, url, body, config))
    return rows


def run_bench(detector: Detector, config: BenchConfig) -> BenchResult:
    meta = detector.metadata
    result = BenchResult(
        machine=machine_info(),
        model={
            "version": detector.version,
            "trees": detector.forest.n_trees,
            "max_samples": detector.config.max_samples,
            "nodes": detector.forest.n_nodes,
            "max_depth": detector.forest.max_depth,
            "artifact_mb": round(meta["artifact"]["bytes"] / 1e6, 1),
        },
        config=asdict(config),
    )
    result.scorer = scorer_table(detector, config)
    if config.profile_requests:
        result.request_path = profile_predict(detector, rows=config.batch_size, requests=config.profile_requests)
    if config.http and detector.path is not None:
        with tempfile.TemporaryDirectory(prefix="gridwatch-bench-") as workdir:
            result.http = http_table(detector.path, config, Path(workdir))
    return result


def render_markdown(result: BenchResult, command: str) -> str:
    machine, model = result.machine, result.model
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {machine['date']}. Re-run it to measure your own machine; the numbers below",
        "come from one run on the machine described here and are not asserted by any test.",
        "",
        f"* Machine: {machine['cpu']}, {machine['cpus']} CPUs, load average at start "
        f"{', '.join(map(str, machine['load_average_at_start']))}",
        f"* Software: Python {machine['python']}, NumPy {machine['numpy']}, scikit-learn {machine['scikit-learn']}"
        + (f", numba {machine['numba']}" if "numba" in machine else ""),
        f"* Model {model['version']}: {model['trees']} trees, max_samples {model['max_samples']}, "
        f"{model['nodes']:,} nodes, depth {model['max_depth']}, artifact {model['artifact_mb']} MB",
        "",
        "## Scorer (same process, median time per call)",
        "",
        "| batch | scikit-learn | compiled, numba | compiled, NumPy | numba speed-up | NumPy speed-up | numba rows/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result.scorer:
        numba_ms = f"{row.numba_ms:.4f} ms" if row.numba_ms is not None else "n/a"
        speedup = f"{row.speedup_numba:,.1f}x" if row.speedup_numba is not None else "n/a"
        rate = f"{row.rows_per_s.get('numba', 0):,.0f}" if row.numba_ms else "n/a"
        lines.append(
            f"| {row.batch:,} | {row.sklearn_ms:.3f} ms | {numba_ms} | {row.numpy_ms:.3f} ms | {speedup} | "
            f"{row.speedup_numpy:,.1f}x | {rate} |"
        )
    if result.http:
        config = result.config
        lines += [
            "",
            "## HTTP (one worker pinned to one CPU, the load on the other CPUs)",
            "",
            f"Throughput: {config['connections']} connections sending batches of {config['batch_size']} back to "
            f"back for {config['http_duration']:.0f} s. Fixed load: {config['fixed_rps']:.0f} requests/s of "
            f"{config['batch_size']} readings, open loop (latency from the scheduled send time).",
            "",
            "| server | most rows/s | requests/s | p99 at most | at fixed load: achieved req/s | p50 | p99 | "
            "failed | never sent |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in result.http:
            lines.append(
                f"| {row.server} | {row.max_rows_per_s:,.0f} | {row.max_requests_per_s:,.1f} | {row.max_p99_ms:.1f} ms "
                f"| {row.fixed_achieved_rps:.1f} | {row.fixed_p50_ms:.1f} ms | {row.fixed_p99_ms:.1f} ms | "
                f"{row.fixed_failed} | {row.fixed_unsent} |"
            )
        if len(result.http) == 2 and result.http[1].max_rows_per_s:
            ratio = result.http[0].max_rows_per_s / result.http[1].max_rows_per_s
            lines += ["", f"GridWatch serves {ratio:.1f}x the rows/s of the baseline (tool: {result.http[0].tool})."]
    if result.request_path:
        lines += _request_path_markdown(result.request_path)
    return "\n".join(lines) + "\n"


def _request_path_markdown(profile: RequestProfile) -> list[str]:
    lines = [
        "",
        f"## Where one /predict of {profile.rows} readings spends its time (cProfile, in process)",
        "",
        f"{profile.requests:,} requests driven through the ASGI application in one thread, without sockets or "
        f"uvicorn (`app.tools.request_profile`): {profile.unprofiled_us_per_request:,.0f} us per request without the "
        f"profiler, {profile.profiled_us_per_request:,.0f} us with it. cProfile slows Python code more than the "
        "compiled scorer, so read the shares, not the absolute times.",
        "",
        "| stage | us per request (profiled) | share |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {stage.stage} | {stage.us_per_request:,.1f} | {stage.share:.0%} |" for stage in profile.stages]
    return lines
