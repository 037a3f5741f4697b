"""``gridwatch publish``: simulated feeders publishing their readings over MQTT, as field gateways do.

Each of the ``feeders`` times ``sensors`` sensors publishes one reading at a time (QoS 1, so the broker
acknowledges each) to ``grid/readings/<feeder>/<sensor>``, which NATS's MQTT listener turns into the subject
``grid.readings.<feeder>.<sensor>`` that the readings stream captures. The total rate is ``rate`` readings per
second, spread over the sensors; every reading carries its sensor id and an RFC 3339 timestamp of when it was
published (so the consumer's end-to-end latency is real). It stops by itself after ``duration`` seconds or
``count`` readings, and only publishes to this machine unless ``allow_remote`` is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from app.sim import GridSimulator
from app.tools.loadgen import check_target

TOPIC_PREFIX = "grid/readings"
BATCH_PER_SENSOR = 256
"""Readings simulated ahead per sensor (one simulator per sensor, so each is a plausible series of its own)."""


@dataclass(frozen=True)
class PublishConfig:
    url: str = "mqtt://127.0.0.1:1883"
    rate: float = 100.0
    """Readings per second, all sensors together."""
    duration: float = 10.0
    count: int | None = None
    """Stop after this many readings (before ``duration`` if it comes first)."""
    feeders: int = 2
    sensors: int = 5
    """Sensors per feeder."""
    anomaly_rate: float = 0.01
    seed: int | None = None
    allow_remote: bool = False
    client_id: str = "gridwatch-publish"


@dataclass(frozen=True)
class PublishReport:
    published: int
    acknowledged: int
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return {"published": self.published, "acknowledged": self.acknowledged, "seconds": round(self.seconds, 3)}


def run_publish(config: PublishConfig, progress: Callable[[int], None] | None = None) -> PublishReport:
    """Publish until the duration or the count is reached; returns how many the broker acknowledged."""
    parts = urlsplit(config.url)
    if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
        raise ValueError(f"--url {config.url!r}: expected mqtt://HOST:PORT")
    check_target(config.url, allow_remote=config.allow_remote)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, clean_session=True)
    acknowledged = 0

    def on_publish(*_args: object) -> None:
        nonlocal acknowledged
        acknowledged += 1

    client.on_publish = on_publish
    client.connect(parts.hostname, parts.port or 1883)
    client.loop_start()
    sensors = [(f"feeder-{f}", f"sensor-{s}") for f in range(config.feeders) for s in range(config.sensors)]
    simulators = [
        GridSimulator(anomaly_rate=config.anomaly_rate, seed=None if config.seed is None else config.seed + n)
        for n in range(len(sensors))
    ]
    buffers: list[list[dict]] = [[] for _ in sensors]
    limit = config.count if config.count is not None else int(config.rate * config.duration)
    started = time.monotonic()
    published = 0
    pending = []
    try:
        while published < limit and time.monotonic() - started < config.duration:
            due = started + published / config.rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)  # pacing the publisher, not synchronising a test
            n = published % len(sensors)
            if not buffers[n]:
                buffers[n] = simulators[n].batch(BATCH_PER_SENSOR).to_records()
            record = buffers[n].pop(0)
            feeder, sensor = sensors[n]
            reading = {
                "voltage": record["voltage"],
                "current": record["current"],
                "frequency": record["frequency"],
                "sensor_id": f"{feeder}/{sensor}",
                "timestamp": datetime.now(tz=UTC).isoformat(timespec="microseconds"),
            }
            info = client.publish(f"{TOPIC_PREFIX}/{feeder}/{sensor}", json.dumps(reading), qos=1)
            pending.append(info)
            published += 1
            if progress is not None and published % 1000 == 0:
                progress(published)
        for info in pending:
            info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
    return PublishReport(published, acknowledged, time.monotonic() - started)
