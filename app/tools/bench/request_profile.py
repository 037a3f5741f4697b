"""Where one ``POST /predict`` spends its time, stage by stage, measured with cProfile.

The application is driven as a plain ASGI callable in this thread (no sockets, no uvicorn, no client library), so
the profile holds only the service's own path: middleware, routing, reading the body, parsing and validation,
scoring, recording metrics and drift, and serialising the answer. The stages are the inclusive times of the
functions that do each job; whatever is left is the framework (Starlette/FastAPI routing and the middleware
chain). cProfile slows Python code more than native code, so the shares are the useful figure; the time per
request without the profiler is measured separately and given beside them.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI

from app.detector.model import Detector
from app.scoring.batch import BatchScorer, ScoredBatch
from app.scoring.rounds import ScoringRound
from app.serving.app import create_app
from app.serving.edge.admission import read_body
from app.serving.edge.http_errors import JSONResponse
from app.serving.edge.parsing import parse_readings
from app.serving.settings import Settings
from app.sim import GridSimulator

STAGES: dict[str, list[Callable[..., Any]]] = {
    "read body": [read_body],
    "parse + validate": [parse_readings],
    "score (compiled forest)": [Detector.predict_batch],
    "serialise answer": [JSONResponse.render, ScoredBatch.predictions],
}
"""Stage name -> the functions whose inclusive time is the stage's: named by the functions themselves, so a rename
breaks the import here rather than silently emptying a stage."""
RECORD_STAGE = "record metrics, drift"
"""``BatchScorer.score`` minus the scoring inside it: histograms, counters and the drift window of one batch."""
FRAMEWORK_STAGE = "framework, middleware, response"


@dataclass(frozen=True)
class StageTime:
    stage: str
    us_per_request: float
    share: float


@dataclass(frozen=True)
class RequestProfile:
    rows: int
    requests: int
    unprofiled_us_per_request: float
    profiled_us_per_request: float
    stages: list[StageTime]


def _scope(body: bytes) -> dict[str, object]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _predict_once(app: FastAPI, body: bytes) -> int:
    """One complete ASGI request/response cycle of ``POST /predict``; returns the status code."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(str(message["status"]))

    await app(_scope(body), receive, send)
    return status


def _drive(app: FastAPI, body: bytes, requests: int) -> float:
    """Seconds per request over ``requests`` sequential requests, all on one event loop (as in uvicorn)."""

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            if (status := await _predict_once(app, body)) != 200:
                raise RuntimeError(f"/predict answered {status} while profiling")
        return (time.perf_counter() - started) / requests

    return asyncio.run(run())


def _profile_key(function: Callable[..., Any]) -> tuple[str, int, str]:
    """cProfile's key of a Python function: (file, first line, name)."""
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def _inclusive_seconds(stats: pstats.Stats, functions: list[Callable[..., Any]]) -> float:
    table = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    return sum(table[key][3] for key in map(_profile_key, functions) if key in table)


def profile_predict(detector: Detector, *, rows: int = 64, requests: int = 2000) -> RequestProfile:
    """Profile ``requests`` calls of ``POST /predict`` with ``rows`` readings each against ``detector``."""
    settings = Settings(model_dir=detector.path.parent if detector.path else ".", train_if_missing=False)
    app = create_app(settings, detector=detector)
    readings = GridSimulator(anomaly_rate=0.01, seed=3).batch(rows).to_records(ground_truth=False)
    body = orjson.dumps({"readings": readings})
    _drive(app, body, max(requests // 10, 10))  # warm: numba, caches, the middleware stack
    unprofiled = _drive(app, body, requests)

    profiler = cProfile.Profile()
    profiler.enable()
    profiled = _drive(app, body, requests)
    profiler.disable()
    stats = pstats.Stats(profiler)

    # A request's batch is scored in its round's loop callback, outside the request's own calls (app.scoring.rounds).
    total = _inclusive_seconds(stats, [_predict_once, ScoringRound._score])
    measured = {name: _inclusive_seconds(stats, points) for name, points in STAGES.items()}
    inference = _inclusive_seconds(stats, [BatchScorer.score])
    measured[RECORD_STAGE] = max(inference - measured["score (compiled forest)"], 0.0)
    measured[FRAMEWORK_STAGE] = max(total - sum(measured.values()), 0.0)
    stages = [
        StageTime(name, seconds / requests * 1e6, seconds / total if total else 0.0)
        for name, seconds in measured.items()
    ]
    return RequestProfile(rows, requests, unprofiled * 1e6, profiled * 1e6, stages)
