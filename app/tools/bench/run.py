"""The whole benchmark: the model described, then the scorer, the in-process profile and both servers."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from app.detector.model import Detector
from app.tools.bench.http import http_table
from app.tools.bench.request_profile import profile_predict
from app.tools.bench.results import BenchConfig, BenchResult, machine_info
from app.tools.bench.scorer import scorer_table
from app.tools.bench.servers import Placement, pinned


def run_bench(detector: Detector, config: BenchConfig, model_dir: Path | None = None) -> BenchResult:
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
    with pinned(Placement.split().server):  # the CPU the servers get below, so the HTTP/scorer share is fair
        result.scorer = scorer_table(detector, config)
    if config.profile_requests:
        result.request_path = profile_predict(detector, rows=config.batch_size, requests=config.profile_requests)
    if config.http and detector.path is not None:
        with tempfile.TemporaryDirectory(prefix="gridwatch-bench-") as workdir:
            result.http, result.live_profile = http_table(detector.path, config, Path(workdir))
    if config.stream and model_dir is not None:
        from app.tools.bench.stream import stream_section  # noqa: PLC0415 - nats-py only when asked for

        result.stream = stream_section(detector, model_dir, config)
    return result
