"""Part 4 (``--stream``): readings end to end through a real NATS server and one ``gridwatch stream`` process.

The consumer runs at its defaults on the server CPU; the NATS server (JetStream on a temporary store) and this
process, which publishes and listens, on the others. Each reading is its own message, as a device publishes it.

* **Throughput**, at the default ``STREAM_BATCH`` and two others: a backlog of readings published as fast as this
  process can, timed from the first publish until the results stream holds a result for each; readings per second,
  next to the in-process scorer's own readings per second on batches of the same size (the ratio says what the
  broker, the JSON and one result message per reading cost).
* **Latency** at a fixed publish rate: each reading carries the time it was published; a plain subscriber of
  ``grid.scored.>`` takes the time each result arrives; p50 and p99 of the difference.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import numpy as np
from nats.aio.msg import Msg

from app.detector.model import Detector
from app.sim import GridSimulator
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
    scorer_readings_per_s: float
    """The in-process scorer on batches of ``batch`` readings."""
    share_of_scorer: float


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
                seconds = asyncio.run(_backlog(setup.local.nats_url, config.stream_readings))
                rows.append(_row(detector, batch, config.stream_readings, seconds))
                if batch == DEFAULT_BATCH:
                    latency = asyncio.run(_latency(setup.local.nats_url, config.stream_rate, config.http_duration))
    return StreamResult(rows, latency)


def _row(detector: Detector, batch: int, readings: int, seconds: float) -> StreamRow:
    X = GridSimulator(seed=21).batch(batch).features()
    scorer = batch / median_seconds(lambda: detector.predict_batch(X), 0.3)
    rate = readings / seconds
    return StreamRow(batch, readings, round(seconds, 3), round(rate, 1), round(scorer, 1), round(rate / scorer, 4))


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
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _readings(n: int) -> list[bytes]:
    records = GridSimulator(seed=17, anomaly_rate=0.01).batch(n).to_records(ground_truth=False)
    return [json.dumps({**record, "sensor_id": f"s{i % 20}"}).encode() for i, record in enumerate(records)]


async def _backlog(url: str, readings: int) -> float:
    """Seconds from the first publish of ``readings`` single-reading messages until each has its result."""
    payloads = _readings(readings)
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        before = (await js.stream_info(RESULTS_STREAM)).state.messages
        started = time.perf_counter()
        pending = [await js.publish_async(f"grid.readings.f{i % 4}.s{i % 20}", p) for i, p in enumerate(payloads)]
        await asyncio.gather(*pending)
        while True:  # scored results only: anomalies are a second message in the same stream
            info = await js.stream_info(RESULTS_STREAM, subjects_filter="grid.scored.>")
            scored = sum((info.state.subjects or {}).values()) if info.state.subjects else info.state.messages
            if scored - before >= readings:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)  # polling the broker's count, not synchronising
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
