"""Part 2: each server measured at its defaults over HTTP: throughput and latency with many connections and with one
(wrk, or ``gridwatch load`` without it), memory after serving, latency at a fixed request rate, the live profile,
and the ready times of fresh starts."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx2
import numpy as np

from app.sim import GridSimulator
from app.tools.bench.live_profile import LiveProfile, profile_under_load
from app.tools.bench.results import WARM_UP_SHARE, BenchConfig, HttpRow
from app.tools.bench.server_probes import process_memory
from app.tools.bench.servers import (
    Placement,
    Running,
    ServerSpec,
    affinity,
    fresh_numba_cache,
    pinned,
    ready_times,
    server_specs,
    shadow_spec,
    started,
)
from app.tools.bench.wrk import ClosedLoopResult, find_wrk, post_script, run_wrk
from app.tools.loadgen import LoadConfig, LoadReport, run_load


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
    ready = ready_times(spec, workdir, placement, config.ready_starts - 1, dict)
    with started(spec, workdir, placement) as running:
        ready.append(round(running.ready_s, 3))
        _closed_loop(running.url, body, config.connections, config.http_duration * WARM_UP_SHARE, config.batch_size)
        most = _closed_loop(running.url, body, config.connections, config.http_duration, config.batch_size)
        memory = process_memory(running.pid)  # after serving: what a worker holds once its caches are warm
        cpus = affinity(running.pid), affinity(0)
        single = _closed_loop(running.url, body, 1, config.http_duration, config.batch_size)
        fixed = _fixed_rate(running.url, config)
        profile = _profile(running, body, config, workdir) if spec.profiled else None
    fresh = (
        ready_times(spec, workdir, placement, config.ready_starts, lambda: fresh_numba_cache(workdir))
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
    with pinned(placement.load):
        specs = server_specs(artifact) + ([shadow_spec(artifact, workdir)] if config.shadow else [])
        for spec in specs:
            row, profile = measure_server(spec, body, config, workdir, placement)
            rows.append(row)
            live = profile or live
    return rows, live
