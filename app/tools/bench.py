"""``gridwatch bench``: how fast GridWatch scores and serves, measured on the machine it runs on.

Three parts, all against the same model artifact:

1. **Scorer**: median time per call of scikit-learn's ``decision_function`` and of the compiled forest (numba and
   NumPy paths) for several batch sizes, in the same process.
2. **HTTP**, side by side in one run: the real service exactly as a user starts it (``gridwatch serve``: default
   log level with the access log, tracing as configured by default, metrics on; one worker) and the plain baseline
   (``app.tools.baseline``: FastAPI + pydantic + scikit-learn), each started here on a free localhost port, pinned
   to the first CPU while the load, the probes and py-spy run on the others. Per server: the ready time (median of
   a few starts; for GridWatch also with an empty numba cache, as a fresh pod), the most rows/s with 32
   connections sending batches of 64 back to back and their p50/p99, one connection's p50/p99 (``wrk``, or this
   package's load generator without it), the resident memory after serving, and the latency at the workshop's
   load (150 requests/s, open loop, ``app.tools.loadgen``).
3. **Where the time goes**: the live GridWatch worker sampled with py-spy under the same load, stage by stage
   (``app.tools.live_profile``), and the application profiled in process with cProfile
   (``app.tools.request_profile``).

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
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import sklearn

from app.detector import forest_jit
from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from app.detector.model import Detector
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer
from app.serving.settings import Settings
from app.sim import GridSimulator
from app.tools.live_profile import LiveProfile, profile_under_load
from app.tools.loadgen import LoadConfig, LoadReport, run_load
from app.tools.processes import free_port
from app.tools.request_profile import RequestProfile, profile_predict
from app.tools.server_probes import READY_POLL_S, ServerStartError, process_memory, serving_pid, start_and_time, stop
from app.tools.wrk import ClosedLoopResult, find_wrk, post_script, run_wrk

SERVER_START_TIMEOUT_S = 180.0
GRIDWATCH = "gridwatch (compiled forest, msgspec)"
GRIDWATCH_SHADOW = "gridwatch, a challenger in the shadow"
BASELINE = "baseline (FastAPI + pydantic + scikit-learn)"


@dataclass(frozen=True)
class BenchConfig:
    sizes: Sequence[int] = (1, 64, 1024, 65536)
    min_seconds: float = 0.5
    """Each scorer measurement repeats until this much time has passed (at least 3 calls), then takes the median."""
    http: bool = True
    http_duration: float = 10.0
    """Seconds of each HTTP run: most throughput, one connection, fixed rate, live profile."""
    connections: int = 32
    batch_size: int = 64
    fixed_rps: float = 150.0
    profile_requests: int = 2000
    """Requests of ``batch_size`` readings profiled in process (``app.tools.request_profile``); 0 skips the profile."""
    ready_starts: int = 3
    """Starts timed per server (and per fresh-pod case); the median is reported."""
    profile_nonblocking: bool = False
    """py-spy ``--nonblocking``: slows the server less, but tears stacks (see ``app.tools.live_profile``)."""
    shadow: bool = False
    """Also measure GridWatch with a challenger scoring every batch in the shadow (``SHADOW_MODEL_VERSION``)."""


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
    """One server at its defaults; ``max_*`` at ``connections`` back to back, ``single_*`` with one connection."""

    server: str
    tool: str
    max_rows_per_s: float
    max_requests_per_s: float
    max_p50_ms: float
    max_p99_ms: float
    max_errors: int
    """Socket errors and timeouts of the throughput run (not in its latencies)."""
    single_requests_per_s: float
    single_p50_ms: float
    single_p99_ms: float
    rss_mb: float | None
    """Resident memory (VmRSS) of the serving process right after the throughput run; None without /proc."""
    peak_rss_mb: float | None
    """Its peak resident memory since start (VmHWM) at the same moment."""
    ready_s: float
    """Median wall time from start to the first /health 200, model trained and caches as left by earlier runs."""
    ready_starts_s: tuple[float, ...]
    fresh_ready_s: float | None
    """The same with an empty numba cache (a fresh pod compiles its kernels); None for a server that compiles none."""
    fresh_ready_starts_s: tuple[float, ...]
    fixed_rps: float
    fixed_achieved_rps: float
    fixed_p50_ms: float
    fixed_p99_ms: float
    fixed_failed: int
    fixed_unsent: int
    server_cpus: tuple[int, ...]
    """Where the serving process was allowed to run (read from it while it served)..."""
    load_cpus: tuple[int, ...]
    """...and the load (this process and its children, wrk and py-spy): disjoint on a machine with 2+ CPUs."""


@dataclass
class BenchResult:
    machine: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    scorer: list[ScorerRow] = field(default_factory=list)
    http: list[HttpRow] = field(default_factory=list)
    live_profile: LiveProfile | None = None
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
    info["kernels"] = forest_jit.KIND or "none (NumPy)"
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
    assert estimator is not None, "the benchmark loads the estimator (with_estimator=True)"
    rows = []
    for size in config.sizes:
        batch = X[:size]
        sk = _median_seconds(partial(estimator.decision_function, batch), config.min_seconds)
        nb = (
            _median_seconds(partial(forest.decision_function, batch, Scorer.numba), config.min_seconds)
            if NUMBA_AVAILABLE
            else None
        )
        npy = _median_seconds(partial(forest.decision_function, batch, Scorer.numpy), config.min_seconds)
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
def _pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this thread, and every process it starts meanwhile (they inherit it), on ``cpus`` (None: unchanged)."""
    if cpus is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def _affinity(pid: int) -> tuple[int, ...]:
    """The CPUs ``pid`` (0: this thread) may run on; () where the OS does not say (not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except (AttributeError, OSError):
        return ()


def server_environment() -> dict[str, str]:
    """This process's environment without any GridWatch setting (``Settings`` fields, e.g. LOG_LEVEL, OTEL_*), so a
    server started with it runs at the defaults a user gets, whatever the shell running the benchmark exports."""
    settings = {name.upper() for name in Settings.model_fields}
    return {name: value for name, value in os.environ.items() if name.upper() not in settings}


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: list[str]
    """``{port}`` in an argument is replaced by the port chosen for the start."""
    env: dict[str, str]
    compiles: bool
    """Compiles code at start (numba), so a start with an empty cache (a fresh pod) is timed too."""
    profiled: bool
    """Profiled live under load (py-spy), stage by stage."""


def shadow_spec(artifact: Path, workdir: Path) -> ServerSpec:
    """GridWatch at the same defaults, with the same version also scoring every batch as the shadow: exactly the
    cost of one more scoring per batch, which is what a challenger of the same size costs. The model's files are
    copied into a folder of versions (``active.json``), which the shadow is named in."""
    folder = workdir / "shadow-models"
    folder.mkdir(exist_ok=True)
    for path in (artifact, artifact.with_suffix(".npz"), artifact.with_suffix(".json")):
        shutil.copy2(path, folder / path.name)
    store = ModelStore(folder, artifact.name)
    version = json.loads(artifact.with_suffix(".json").read_text())["model_version"]
    store.promote(version)  # moves the copy into versions/ and points active.json at it
    env = {
        "HOST": "127.0.0.1",
        "WORKERS": "1",
        "MODEL_DIR": str(folder),
        "MODEL_NAME": artifact.name,
        "TRAIN_IF_MISSING": "0",
        "SHADOW_MODEL_VERSION": version,
    }
    return ServerSpec(GRIDWATCH_SHADOW, [sys.executable, "-m", "app.tools.cli", "serve"], env, False, False)


def server_specs(artifact: Path) -> list[ServerSpec]:
    """GridWatch exactly as ``gridwatch serve`` starts for a user (LOG_LEVEL info with the access log, tracing off
    unless configured, metrics on; one worker, this model, no training), and the baseline as it is written."""
    gridwatch_env = {
        "HOST": "127.0.0.1",
        "WORKERS": "1",
        "MODEL_DIR": str(artifact.parent),
        "MODEL_NAME": artifact.name,
        "TRAIN_IF_MISSING": "0",
    }
    baseline = [sys.executable, "-m", "app.tools.baseline", "--model", str(artifact), "--port", "{port}"]
    return [
        ServerSpec(GRIDWATCH, [sys.executable, "-m", "app.tools.cli", "serve"], gridwatch_env, True, True),
        ServerSpec(BASELINE, baseline, {}, False, False),
    ]


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    """The process serving (GridWatch's /health names it); its memory is read and it is profiled."""
    ready_s: float


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server gets and which the load (this process, wrk, py-spy); None: wherever the OS likes.

    Chosen once, before this process pins itself to the load CPUs: asked afterwards, its own affinity would be
    the load's only."""

    server: set[int] | None
    load: set[int] | None

    @classmethod
    def split(cls) -> Placement:
        split = _cpu_split()
        return cls(*split) if split else cls(None, None)


@contextmanager
def _started(
    spec: ServerSpec, workdir: Path, placement: Placement, extra_env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Start ``spec`` on a free port, pinned to the server CPUs, time it until ready, and stop it on exit."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    command = [part.replace("{port}", str(port)) for part in spec.command]
    env = {**server_environment(), **spec.env, "PORT": str(port), **(extra_env or {})}

    def launch() -> subprocess.Popen[bytes]:
        with log.open("wb") as sink, _pinned(placement.server):  # the child inherits the affinity from its start
            return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)

    try:
        ready = start_and_time(launch, port, timeout=SERVER_START_TIMEOUT_S)
    except ServerStartError as error:
        raise RuntimeError(f"{spec.name}: {error}; its log ends:\n{_tail(log)}") from None
    try:
        yield Running(f"http://127.0.0.1:{port}", serving_pid(ready.health, ready.process), ready.seconds)
    finally:
        stop(ready.process)


def _ready_times(
    spec: ServerSpec, workdir: Path, placement: Placement, starts: int, extra_env: Callable[[], dict[str, str]]
) -> list[float]:
    times = []
    for _ in range(starts):
        with _started(spec, workdir, placement, extra_env()) as running:
            times.append(round(running.ready_s, 3))
    return times


def _fresh_numba_cache(workdir: Path) -> dict[str, str]:
    """A new, empty numba cache folder: the start of a pod whose image holds no compiled kernels."""
    return {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-cache-", dir=workdir)}


def _closed_loop(url: str, body: Path, connections: int, duration: float, batch_size: int) -> ClosedLoopResult:
    """``connections`` clients sending back to back: wrk if installed; else (laptops) this package's generator at
    an unreachable rate, whose latency counts from the schedule, or one sequential client for one connection."""
    wrk = find_wrk()
    if wrk:
        return run_wrk(wrk, f"{url}/predict", post_script(body), connections=connections, duration=duration)
    if connections == 1:
        return _sequential(url, body.read_bytes(), duration)
    report = run_load(
        LoadConfig(url=url, rps=20_000, duration=duration, batch_size=batch_size, workers=connections, timeout=30.0)
    )
    return ClosedLoopResult(
        connections=connections,
        requests=report.succeeded,
        requests_per_s=report.achieved_rps,
        p50_ms=report.latency_ms["p50"],
        p99_ms=report.latency_ms["p99"],
        socket_errors=report.failed,
    )


def _sequential(url: str, body: bytes, duration: float) -> ClosedLoopResult:
    """One client, one request at a time, for ``duration`` seconds (the fallback of ``wrk -c1``)."""
    latencies: list[float] = []
    with httpx2.Client(timeout=30.0, headers={"content-type": "application/json"}) as client:
        begun = time.perf_counter()
        while (started := time.perf_counter()) < begun + duration:
            client.post(f"{url}/predict", content=body).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        elapsed = time.perf_counter() - begun
    p50, p99 = np.percentile(latencies, [50, 99])
    return ClosedLoopResult(1, len(latencies), round(len(latencies) / elapsed, 1), float(p50), float(p99), 0)


def _fixed_rate(url: str, config: BenchConfig) -> LoadReport:
    return run_load(
        LoadConfig(
            url=url,
            rps=config.fixed_rps,
            duration=config.http_duration,
            batch_size=config.batch_size,
            workers=config.connections,
            seed=5,
        )
    )


def _profile(running: Running, body: Path, config: BenchConfig, workdir: Path) -> LiveProfile:
    def load(seconds: float) -> float:
        return _closed_loop(running.url, body, config.connections, seconds, config.batch_size).requests_per_s

    return profile_under_load(running.pid, config.http_duration, load, workdir, nonblocking=config.profile_nonblocking)


def measure_server(
    spec: ServerSpec, body: Path, config: BenchConfig, workdir: Path, placement: Placement
) -> tuple[HttpRow, LiveProfile | None]:
    """Every figure of one server: ready times (the last start then serves), the closed-loop runs, memory after
    the first of them, the fixed-rate run, the live profile, then the fresh-pod starts."""
    ready = _ready_times(spec, workdir, placement, config.ready_starts - 1, dict)
    with _started(spec, workdir, placement) as running:
        ready.append(round(running.ready_s, 3))
        most = _closed_loop(running.url, body, config.connections, config.http_duration, config.batch_size)
        memory = process_memory(running.pid)  # after serving: what a worker holds once its caches are warm
        cpus = _affinity(running.pid), _affinity(0)
        single = _closed_loop(running.url, body, 1, config.http_duration, config.batch_size)
        fixed = _fixed_rate(running.url, config)
        profile = _profile(running, body, config, workdir) if spec.profiled else None
    fresh = (
        _ready_times(spec, workdir, placement, config.ready_starts, lambda: _fresh_numba_cache(workdir))
        if spec.compiles
        else []
    )
    row = HttpRow(
        server=spec.name,
        tool="wrk" if find_wrk() else "gridwatch load",
        **_closed_loop_fields(most, single, config.batch_size),
        rss_mb=memory.rss_mb if memory else None,
        peak_rss_mb=memory.peak_rss_mb if memory else None,
        ready_s=round(statistics.median(ready), 3),
        ready_starts_s=tuple(ready),
        fresh_ready_s=round(statistics.median(fresh), 3) if fresh else None,
        fresh_ready_starts_s=tuple(fresh),
        **_fixed_rate_fields(fixed, config),
        server_cpus=cpus[0],
        load_cpus=cpus[1],
    )
    return row, profile


def _closed_loop_fields(most: ClosedLoopResult, single: ClosedLoopResult, batch_size: int) -> dict[str, Any]:
    return {
        "max_rows_per_s": round(most.requests_per_s * batch_size, 1),
        "max_requests_per_s": round(most.requests_per_s, 1),
        "max_p50_ms": round(most.p50_ms, 2),
        "max_p99_ms": round(most.p99_ms, 2),
        "max_errors": most.socket_errors,
        "single_requests_per_s": round(single.requests_per_s, 1),
        "single_p50_ms": round(single.p50_ms, 2),
        "single_p99_ms": round(single.p99_ms, 2),
    }


def _fixed_rate_fields(fixed: LoadReport, config: BenchConfig) -> dict[str, Any]:
    return {
        "fixed_rps": config.fixed_rps,
        "fixed_achieved_rps": fixed.achieved_rps,
        "fixed_p50_ms": fixed.latency_ms["p50"],
        "fixed_p99_ms": fixed.latency_ms["p99"],
        "fixed_failed": fixed.failed,
        "fixed_unsent": fixed.unsent,
    }


def http_table(artifact: Path, config: BenchConfig, workdir: Path) -> tuple[list[HttpRow], LiveProfile | None]:
    """Both servers, one after the other, with this process (the load, the probes, py-spy) on the load CPUs."""
    body = workdir / "body.json"
    records = GridSimulator(anomaly_rate=0.01, seed=3).batch(config.batch_size).to_records(ground_truth=False)
    body.write_text(json.dumps({"readings": records}))
    rows, live = [], None
    placement = Placement.split()
    with _pinned(placement.load):
        specs = server_specs(artifact) + ([shadow_spec(artifact, workdir)] if config.shadow else [])
        for spec in specs:
            row, profile = measure_server(spec, body, config, workdir, placement)
            rows.append(row)
            live = profile or live
    return rows, live


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
            result.http, result.live_profile = http_table(detector.path, config, Path(workdir))
    return result


def render_markdown(result: BenchResult, command: str) -> str:
    """docs/benchmarks.md: the machine, the scorer, both servers side by side, the live profile, the in-process one."""
    lines = _header_markdown(result, command) + _scorer_markdown(result.scorer)
    if result.http:
        lines += _http_markdown(result.http, result.config)
    if result.live_profile:
        lines += _live_profile_markdown(result.live_profile, result.config)
    if result.request_path:
        lines += _request_path_markdown(result.request_path)
    return "\n".join(lines) + "\n"


def _header_markdown(result: BenchResult, command: str) -> list[str]:
    machine, model = result.machine, result.model
    return [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {machine['date']}. Re-run it to measure your own machine; the numbers below",
        "come from one run on the machine described here and are not asserted by any test.",
        "",
        f"* Machine: {machine['cpu']}, {machine['cpus']} CPUs, load average at start "
        f"{', '.join(map(str, machine['load_average_at_start']))}",
        f"* Software: Python {machine['python']}, NumPy {machine['numpy']}, scikit-learn {machine['scikit-learn']}"
        + (f", numba {machine['numba']}" if "numba" in machine else "")
        + f"; forest kernels: {machine.get('kernels', 'unknown')}",
        f"* Model {model['version']}: {model['trees']} trees, max_samples {model['max_samples']}, "
        f"{model['nodes']:,} nodes, depth {model['max_depth']}, artifact {model['artifact_mb']} MB",
    ]


def _scorer_markdown(rows: list[ScorerRow]) -> list[str]:
    lines = [
        "",
        "## Scorer (same process, median time per call)",
        "",
        "| batch | scikit-learn | compiled, numba | compiled, NumPy | numba speed-up | NumPy speed-up | numba rows/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        numba_ms = f"{row.numba_ms:.4f} ms" if row.numba_ms is not None else "n/a"
        speedup = f"{row.speedup_numba:,.1f}x" if row.speedup_numba is not None else "n/a"
        rate = f"{row.rows_per_s.get('numba', 0):,.0f}" if row.numba_ms else "n/a"
        lines.append(
            f"| {row.batch:,} | {row.sklearn_ms:.3f} ms | {numba_ms} | {row.numpy_ms:.3f} ms | {speedup} | "
            f"{row.speedup_numpy:,.1f}x | {rate} |"
        )
    return lines


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _mb(value: float | None) -> str:
    return f"{value:,.0f} MB" if value is not None else "n/a"


def _seconds(value: float | None, starts: Sequence[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} s ({', '.join(f'{start:.2f}' for start in starts)})"


def http_comparison(rows: list[HttpRow], config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(figure, one cell per server): the side-by-side table, shared by the Markdown and the terminal."""
    connections, batch = config["connections"], config["batch_size"]
    figures: list[tuple[str, Callable[[HttpRow], str]]] = [
        (f"rows/s, {connections} connections", lambda r: f"{r.max_rows_per_s:,.0f}"),
        (f"requests/s of {batch} readings, {connections} connections", lambda r: f"{r.max_requests_per_s:,.1f}"),
        (f"p50, {connections} connections", lambda r: _ms(r.max_p50_ms)),
        (f"p99, {connections} connections", lambda r: _ms(r.max_p99_ms)),
        ("p50, one connection", lambda r: _ms(r.single_p50_ms)),
        ("p99, one connection", lambda r: _ms(r.single_p99_ms)),
        ("resident memory after serving (VmRSS)", lambda r: _mb(r.rss_mb)),
        ("peak resident memory (VmHWM)", lambda r: _mb(r.peak_rss_mb)),
        ("ready time: median (each start)", lambda r: _seconds(r.ready_s, r.ready_starts_s)),
        ("ready time, fresh pod (empty numba cache)", lambda r: _seconds(r.fresh_ready_s, r.fresh_ready_starts_s)),
        (f"at {config['fixed_rps']:.0f} requests/s (open loop): achieved", lambda r: f"{r.fixed_achieved_rps:.1f}"),
        (f"at {config['fixed_rps']:.0f} requests/s: p50", lambda r: _ms(r.fixed_p50_ms)),
        (f"at {config['fixed_rps']:.0f} requests/s: p99", lambda r: _ms(r.fixed_p99_ms)),
        (
            f"at {config['fixed_rps']:.0f} requests/s: failed, never sent",
            lambda r: f"{r.fixed_failed}, {r.fixed_unsent}",
        ),
    ]
    return [(name, [cell(row) for row in rows]) for name, cell in figures]


def rows_ratio(rows: list[HttpRow]) -> str | None:
    """The one line comparing GridWatch's rows/s with the baseline's, or None if either is missing."""
    by_name = {row.server: row for row in rows}
    gridwatch, baseline = by_name.get(GRIDWATCH), by_name.get(BASELINE)
    if gridwatch is None or baseline is None or not baseline.max_rows_per_s:
        return None
    ratio = gridwatch.max_rows_per_s / baseline.max_rows_per_s
    return (
        f"GridWatch serves {ratio:.1f}x the rows/s of the baseline ({gridwatch.max_rows_per_s:,.0f} against "
        f"{baseline.max_rows_per_s:,.0f}, tool: {gridwatch.tool})."
    )


def _http_markdown(rows: list[HttpRow], config: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## HTTP at the defaults (one worker pinned to one CPU, the load on the other CPUs)",
        "",
        "GridWatch runs as `gridwatch serve` starts for a user: LOG_LEVEL info with its JSON access log (to a file "
        "here), tracing off, metrics on, one worker (WORKERS=1), the model above already trained. The baseline runs "
        "as `app/tools/baseline.py` is written (uvicorn at log level warning, so no access log). Closed loop: "
        f"{config['connections']} connections, then one, sending batches of {config['batch_size']} back to back for "
        f"{config['http_duration']:.0f} s each (wrk, or `gridwatch load` without it). Memory: `/proc/<pid>/status` "
        "of the serving process right after the throughput run. Ready time: from starting the process to its first "
        f"`/health` 200, probed every {READY_POLL_S * 1000:.0f} ms (the resolution); a fresh pod starts with an "
        "empty `NUMBA_CACHE_DIR`, so it compiles the kernels. Open loop: a fixed rate from `gridwatch load`, "
        "latency counted from the scheduled send time.",
        "",
        f"| | {' | '.join(row.server for row in rows)} |",
        f"| --- |{' ---: |' * len(rows)}",
    ]
    lines += [f"| {name} | {' | '.join(cells)} |" for name, cells in http_comparison(rows, config)]
    if ratio := rows_ratio(rows):
        lines += ["", ratio]
    return lines


def _live_profile_markdown(profile: LiveProfile, config: dict[str, Any]) -> list[str]:
    lines = ["", "## Where the live server spends its time (py-spy, under load)", ""]
    if not profile.available:
        return [*lines, f"No live profile on this run: {profile.reason}."]
    lines += [
        f"py-spy sampled the GridWatch worker's event-loop thread {profile.rate_hz} times a second for "
        f"{profile.seconds} s ({profile.mode} mode) while {config['connections']} connections kept it busy "
        f"({profile.load_requests_per_s:,.1f} requests/s meanwhile; py-spy pauses the process for each sample "
        f"in blocking mode). {profile.rounds:,} samples, {profile.errors} failed, {profile.incomplete_stacks} "
        "incomplete. Each sample goes to the innermost stage on its stack (`app/tools/live_profile.py`); "
        "idle is the share in which the thread was waiting in the selector.",
        "",
        "| stage | samples | share |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {stage.stage} | {stage.samples:,} | {stage.share:.1%} |" for stage in profile.stages]
    lines += ["", "Hottest functions (the thread was in them, not below them):", "", "| function | share |"]
    lines += ["| --- | ---: |"] + [f"| `{hot.stage}` | {hot.share:.1%} |" for hot in profile.hottest]
    return lines


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
