"""Part 4 (``--stream``): readings end to end through a real NATS server and one ``gridwatch stream`` process.

The consumer runs at its defaults on the server CPU; the NATS server (JetStream on a temporary store) and this
process, which publishes and listens, on the others. Each reading is its own message, as a device publishes it.

* **Throughput**, at the default ``STREAM_BATCH`` and two others, twice. *Drain*: a backlog published before the
  consumer starts, which then scores it alone; readings per second between the first and the last result the
  results stream stored (the server's own timestamps), so the consumer's speed and nothing else. *Live*: readings
  published as fast as this process can while the consumer runs, timed from the first publish until the results
  stream holds a result for each; here the publisher shares its CPU with the server and can be the limit. Both next
  to the in-process scorer's own readings per second on batches of the same size (the ratio says what the broker,
  the JSON and one result message per reading cost).
* **Latency** at a fixed publish rate: each reading carries the time it was published; a plain subscriber of
  ``grid.scored.>`` takes the time each result arrives; p50 and p99 of the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nats
import numpy as np
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from app.detector.model import Detector
from app.sim import GridSimulator
from app.stream.settings import StreamSettings
from app.stream.topology import ensure_topology
from app.tools.bench.results import BenchConfig
from app.tools.bench.scorer import median_seconds
from app.tools.bench.servers import Placement, pinned, server_environment
from app.tools.nats_server import LocalNats
from app.tools.processes import free_port, wait_until_ready

DEFAULT_BATCH = 500
"""``STREAM_BATCH``'s default (``app.stream.settings``)."""
RESULTS_STREAM = "GRID_SCORED"


@dataclass(frozen=True)
class StreamRow:
    batch: int
    readings: int
    seconds: float
    readings_per_s: float
    """Live: published and scored at once."""
    drain_readings_per_s: float
    """The consumer alone on a backlog published before it started."""
    scorer_readings_per_s: float
    """The in-process scorer on batches of ``batch`` readings."""
    share_of_scorer: float
    """Drain over scorer."""


@dataclass(frozen=True)
class StreamLatency:
    rate: float
    """Readings per second published."""
    seconds: float
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class StreamResult:
    throughput: list[StreamRow]
    latency: StreamLatency | None


def stream_section(detector: Detector, model_dir: Path, config: BenchConfig) -> StreamResult:
    """Every stream figure: one consumer per batch size for the throughput, the default one for the latency."""
    placement = Placement.split()
    rows = []
    latency = None
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-stream-") as workdir, pinned(placement.load):
        for batch in config.stream_batches:
            with _Setup(Path(workdir) / f"batch-{batch}", model_dir, batch, placement) as setup:
                with _no_collector_pauses():
                    drain = asyncio.run(_drain(setup, config.stream_readings))
                    seconds = asyncio.run(_backlog(setup.local.nats_url, config.stream_readings))
                rows.append(_row(detector, batch, config.stream_readings, seconds, drain))
                if batch == DEFAULT_BATCH:
                    with _no_collector_pauses():
                        latency = asyncio.run(_latency(setup.local.nats_url, config.stream_rate, config.http_duration))
    return StreamResult(rows, latency)


def _row(detector: Detector, batch: int, readings: int, seconds: float, drain: float) -> StreamRow:
    X = GridSimulator(seed=21).batch(batch).features()
    scorer = batch / median_seconds(lambda: detector.predict_batch(X), 0.3)
    rate = readings / seconds
    return StreamRow(
        batch, readings, round(seconds, 3), round(rate, 1), round(drain, 1), round(scorer, 1), round(drain / scorer, 4)
    )


class _Setup:
    """A NATS server on the load CPUs and one consumer pinned to the server CPU, both stopped on exit."""

    def __init__(self, workdir: Path, model_dir: Path, batch: int, placement: Placement) -> None:
        self.workdir = workdir
        self.local = LocalNats("127.0.0.1", free_port(), free_port(), free_port())
        self.model_dir = model_dir
        self.batch = batch
        self.placement = placement
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> _Setup:
        server = self.local.start(self.workdir, log=self.workdir.parent / f"{self.workdir.name}-nats.log")
        self.processes.append(server)
        wait_until_ready(self.local.health_url, timeout=60.0, process=server)
        return self

    def start_consumer(self) -> None:
        """``gridwatch stream`` on the server CPU, returning once it is ready."""
        port = free_port()
        env = {
            **server_environment(),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "NATS_URL": self.local.nats_url,
            "MODEL_DIR": str(self.model_dir),
            "TRAIN_IF_MISSING": "0",
            "STREAM_BATCH": str(self.batch),
        }
        log = (self.workdir / "consumer.log").open("wb")
        with pinned(self.placement.server):
            consumer = subprocess.Popen(
                [sys.executable, "-m", "app.tools.cli", "stream"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(consumer)
        wait_until_ready(f"http://127.0.0.1:{port}/health", timeout=120.0, process=consumer)

    def __exit__(self, *_exc: object) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _readings(n: int, run: str) -> list[bytes]:
    """``n`` single-reading messages; ``run`` in their sensor ids keeps two runs' readings (and result ids) apart."""
    records = GridSimulator(seed=17, anomaly_rate=0.01).batch(n).to_records(ground_truth=False)
    return [json.dumps({**record, "sensor_id": f"{run}-s{i % 20}"}).encode() for i, record in enumerate(records)]


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """Python's cyclic garbage collector off in this (measuring) process while it measures: with 100,000 publish
    futures alive, each full collection paused the publisher and the results' subscriber for 100-200 ms every few
    seconds, which showed up as the consumer's latency (p99 94 ms with it, 7 ms without, same consumer)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def _drain(setup: _Setup, readings: int) -> float:
    """Readings per second of the consumer alone: ``readings`` published before it starts (into the streams it
    would create), then the span between the first and the last result the results stream stored."""
    client = await nats.connect(setup.local.nats_url)
    js = client.jetstream()
    try:
        await ensure_topology(js, StreamSettings())
        pending = [await js.publish_async(_subject(i), p) for i, p in enumerate(_readings(readings, "drain"))]
        await asyncio.gather(*pending)
        await asyncio.to_thread(setup.start_consumer)
        while (await _scored(js)) < readings:
            await asyncio.sleep(0.05)  # polling the broker's count, not synchronising
        info = await js.stream_info(RESULTS_STREAM)
        first = await js.get_msg(RESULTS_STREAM, seq=info.state.first_seq)
        last = await js.get_msg(RESULTS_STREAM, seq=info.state.last_seq)
        span = _stored_at(last) - _stored_at(first)
        return readings / span if span > 0 else float("nan")
    finally:
        await client.close()


def _subject(i: int) -> str:
    return f"grid.readings.f{i % 4}.s{i % 20}"


def _stored_at(message: RawStreamMsg) -> float:
    """When the server stored a message, epoch seconds (nats-py gives the server's RFC 3339 time as text)."""
    stored = message.time
    if isinstance(stored, datetime):
        return stored.timestamp()
    return datetime.fromisoformat(str(stored).replace("Z", "+00:00")).timestamp()


async def _scored(js: JetStreamContext) -> int:
    """Results in the results stream (scored readings only: anomalies are a second message in the same stream)."""
    info = await js.stream_info(RESULTS_STREAM, subjects_filter="grid.scored.>")
    return sum((info.state.subjects or {}).values()) if info.state.subjects else info.state.messages


async def _backlog(url: str, readings: int) -> float:
    """Seconds from the first publish of ``readings`` single-reading messages until each has its result."""
    payloads = _readings(readings, "live")
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        before = await _scored(js)
        started = time.perf_counter()
        pending = [await js.publish_async(_subject(i), p) for i, p in enumerate(payloads)]
        await asyncio.gather(*pending)
        while (await _scored(js)) - before < readings:
            await asyncio.sleep(0.05)  # polling the broker's count, not synchronising
        return time.perf_counter() - started
    finally:
        await client.close()


async def _latency(url: str, rate: float, seconds: float) -> StreamLatency:
    """Publish ``rate`` readings a second for ``seconds``, each stamped with its publish time; the results'
    arrival at a subscriber minus that stamp."""
    client = await nats.connect(url)
    js = client.jetstream()
    delays: list[float] = []

    async def on_result(msg: Msg) -> None:
        sent = json.loads(msg.data)["timestamp"]
        delays.append(time.time() - float(sent))

    subscription = await client.subscribe("grid.scored.>", cb=on_result)
    total = int(rate * seconds)
    base = GridSimulator(seed=23).batch(1000).to_records(ground_truth=False)
    started = time.perf_counter()
    pending = []
    for i in range(total):
        due = started + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)  # pacing the publisher
        record = base[i % len(base)]
        body = {"voltage": record["voltage"], "current": record["current"], "frequency": record["frequency"],
                "timestamp": time.time(), "sensor_id": f"s{i % 20}"}  # fmt: skip
        pending.append(await js.publish_async(f"grid.readings.f0.s{i % 20}", json.dumps(body).encode()))
    await asyncio.gather(*pending)
    deadline = time.perf_counter() + 30.0
    while len(delays) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # waiting for the last results, bounded
    await subscription.unsubscribe()
    await client.close()
    milliseconds = np.array(delays) * 1000 if delays else np.array([float("nan")])
    return StreamLatency(
        rate,
        seconds,
        len(delays),
        round(float(np.percentile(milliseconds, 50)), 2),
        round(float(np.percentile(milliseconds, 99)), 2),
        round(float(milliseconds.max()), 2),
    )
