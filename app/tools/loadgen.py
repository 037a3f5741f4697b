"""``gridwatch load``: an open-loop load generator for ``/predict``.

**Open loop.** Request ``i`` is scheduled at ``start + i / rps`` whatever happened to the previous ones, and its
latency is measured from that scheduled time, not from when a connection happened to be free. A closed-loop
generator (send, wait, send) slows down with a stalled server and so never records the queueing its own users would
see ("coordinated omission"); here a stall shows up as latency of every request scheduled during it. At most
``workers`` requests are in flight; a request whose turn comes while all are busy waits, and that wait counts.

It stops by itself at ``duration`` (requests still in flight get ``timeout`` seconds to finish), and refuses any
target that is not a loopback address unless ``allow_remote`` is set: a stress tool should not hit someone else's
server by a typo.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import numpy as np
import orjson

from app.common.latency import latency_summary
from app.sim import GridSimulator

PAYLOAD_POOL = 32
"""Distinct request bodies generated up front and sent in turn, so generating readings never slows the sender."""


@dataclass(frozen=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    rps: float = 50.0
    duration: float = 10.0
    batch_size: int = 64
    workers: int = 32
    anomaly_rate: float = 0.01
    keepalive: bool = True
    timeout: float = 10.0
    allow_remote: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.rps <= 0 or self.duration <= 0 or self.batch_size < 1 or self.workers < 1 or self.timeout <= 0:
            raise ValueError("rps, duration, timeout must be > 0; batch_size and workers >= 1")
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within [0, 1], got {self.anomaly_rate}")

    @property
    def predict_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/predict") else f"{base}/predict"


@dataclass
class LoadReport:
    """What happened: counts, rates and latency percentiles (milliseconds, from the scheduled send time)."""

    target: str
    scheduled: int
    sent: int
    """Requests that got a connection slot and went out; ``scheduled - sent`` never got one before the end."""
    unsent: int
    succeeded: int
    failed: int
    """Sent and not answered 200: an error status, a transport error, or no answer before the end."""
    failures: dict[str, int]
    duration_s: float
    achieved_rps: float
    rows_per_s: float
    latency_ms: dict[str, float]
    served_by: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)
    """Answers per model version that scored them: a promotion during the run shows as two versions."""
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RemoteTargetError(ValueError):
    """The target is not on this machine and ``--allow-remote`` was not given."""


def check_target(url: str, *, allow_remote: bool) -> None:
    """Refuse a target that does not resolve only to loopback addresses, unless remote targets are allowed."""
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    if allow_remote:
        return
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve {host!r}: {error}") from error
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise RemoteTargetError(
            f"{host} resolves to {', '.join(remote)}, not a loopback address; pass --allow-remote to load it anyway"
        )


def _payloads(config: LoadConfig) -> list[bytes]:
    simulator = GridSimulator(anomaly_rate=config.anomaly_rate, seed=config.seed)
    return [
        orjson.dumps({"readings": simulator.batch(config.batch_size).to_records(ground_truth=False)})
        for _ in range(PAYLOAD_POOL)
    ]


class _Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.succeeded = 0
        self.failures: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.served_by: Counter[str] = Counter()
        self.model_versions: Counter[str] = Counter()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    """Milliseconds, rounded to the microsecond; zeros when nothing succeeded, so every report has the same keys."""
    summary = latency_summary(seconds * 1000.0 for seconds in latencies)
    if not summary:
        return dict.fromkeys(("avg", "p50", "p95", "p99", "max"), 0.0)
    return {name: round(value, 3) for name, value in summary.items()}


async def _run(config: LoadConfig, progress: Callable[[dict[str, float]], None] | None) -> LoadReport:
    payloads = _payloads(config)
    total = max(1, int(config.rps * config.duration))
    interval = 1.0 / config.rps
    tally = _Tally()
    limits = httpx2.Limits(
        max_connections=config.workers,
        max_keepalive_connections=config.workers if config.keepalive else 0,
    )
    headers = {"content-type": "application/json"}
    if not config.keepalive:
        headers["connection"] = "close"  # a new TCP connection per request: spreads over pods behind a Service
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(config.workers)

    async with httpx2.AsyncClient(limits=limits, timeout=config.timeout, headers=headers) as client:
        start = loop.time() + 0.05

        async def one(index: int) -> None:
            scheduled = start + index * interval
            async with slots:
                tally.sent += 1
                try:
                    answer = await client.post(config.predict_url, content=payloads[index % PAYLOAD_POOL])
                except httpx2.HTTPError as error:
                    tally.failures[type(error).__name__] += 1
                    return
                latency = loop.time() - scheduled
            if answer.status_code == 200:
                tally.succeeded += 1
                tally.latencies.append(latency)
                body = orjson.loads(answer.content)
                tally.served_by[str(body.get("served_by", "?"))] += 1
                tally.model_versions[str(body.get("model_version", "?"))] += 1
            else:
                tally.failures[f"HTTP {answer.status_code}"] += 1

        tasks: list[asyncio.Task[None]] = []
        next_report = start
        for index in range(total):
            delay = start + index * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule itself: this is what "open loop" means
            tasks.append(asyncio.create_task(one(index)))
            if progress is not None and loop.time() >= next_report:
                progress(_snapshot(tally, loop.time() - start))
                next_report = loop.time() + 0.5
        _, pending = await asyncio.wait(tasks, timeout=config.timeout)
        in_flight_at_end = tally.sent - tally.succeeded - sum(tally.failures.values())
        for task in pending:
            task.cancel()
        if in_flight_at_end:
            tally.failures["no answer before the end"] += in_flight_at_end
        elapsed = max(loop.time() - start, 1e-9)
    if progress is not None:
        progress(_snapshot(tally, elapsed))
    return LoadReport(
        target=config.predict_url,
        scheduled=total,
        sent=tally.sent,
        unsent=total - tally.sent,
        succeeded=tally.succeeded,
        failed=sum(tally.failures.values()),
        failures=dict(tally.failures),
        duration_s=round(elapsed, 3),
        achieved_rps=round(tally.succeeded / elapsed, 2),
        rows_per_s=round(tally.succeeded * config.batch_size / elapsed, 1),
        latency_ms=_percentiles(tally.latencies),
        served_by=dict(tally.served_by.most_common()),
        model_versions=dict(tally.model_versions.most_common()),
        config=asdict(config),
    )


def _snapshot(tally: _Tally, elapsed: float) -> dict[str, float]:
    recent = tally.latencies[-2000:]
    return {
        "elapsed": elapsed,
        "sent": tally.sent,
        "ok": tally.succeeded,
        "errors": sum(tally.failures.values()),
        "p99_ms": float(np.percentile(recent, 99) * 1000.0) if recent else 0.0,
    }


def run_load(config: LoadConfig, progress: Callable[[dict[str, float]], None] | None = None) -> LoadReport:
    """Run the load test to completion (bounded by ``duration`` plus ``timeout``) and report."""
    check_target(config.url, allow_remote=config.allow_remote)
    return asyncio.run(_run(config, progress))
