"""`gridwatch load`: counts add up, failures are counted, it stops by itself, keep-alive is what it says."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from app.tools.loadgen import LoadConfig, RemoteTargetError, check_target, run_load
from app.tools.processes import free_port
from tests.support import ServerProcess

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000/predict"])
def test_loopback_targets_are_allowed(url: str):
    check_target(url, allow_remote=False)


def test_remote_targets_are_refused_unless_allowed():
    with pytest.raises(RemoteTargetError, match=r"10\.1\.2\.3 .* --allow-remote"):
        check_target("http://10.1.2.3:8000", allow_remote=False)
    check_target("http://10.1.2.3:8000", allow_remote=True)
    with pytest.raises(RemoteTargetError):
        run_load(LoadConfig(url="http://10.1.2.3:8000", duration=1))


def test_counts_add_up_against_a_real_server(server: ServerProcess):
    config = LoadConfig(url=server.url, rps=40, duration=2.0, batch_size=16, workers=4, seed=1, timeout=5.0)
    report = run_load(config)
    assert report.scheduled == 80
    assert report.sent == report.scheduled
    assert report.unsent == 0
    assert report.succeeded == 80
    assert report.failed == 0
    assert report.rows_per_s == pytest.approx(report.achieved_rps * 16, rel=1e-3)
    latency = report.latency_ms
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    (instance,) = report.served_by
    assert instance.endswith(f":{server.process.pid}")
    assert report.served_by[instance] == 80


def test_rejections_and_unreachable_targets_are_counted_as_failures(model_dir):
    small = ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "MAX_BATCH": "10"})
    with small:
        rejected = run_load(LoadConfig(url=small.url, rps=20, duration=1.0, batch_size=11, workers=2))
    assert rejected.succeeded == 0
    assert rejected.failures == {"HTTP 413": 20}
    nobody = run_load(LoadConfig(url=f"http://127.0.0.1:{free_port()}", rps=10, duration=1.0, workers=2))
    assert nobody.failures == {"ConnectError": 10}
    assert nobody.failed == nobody.sent == 10


def test_a_server_that_never_answers_cannot_hold_the_load_run():
    """A listening socket nobody accepts from: connections open (the kernel's backlog) but no answer ever comes.
    The run still ends by itself, and every scheduled request is accounted for as failed or never sent."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        report = run_load(LoadConfig(url=url, rps=20, duration=1.0, workers=3, timeout=1.0))
    assert report.scheduled == 20
    assert report.succeeded == 0
    assert report.sent >= 3  # every slot was taken by a request that then hung
    assert report.failed == report.sent
    assert report.sent + report.unsent == report.scheduled
    assert report.latency_ms["p99"] == 0.0  # no answered request to time


class ConnectionCountingServer:
    """A minimal HTTP/1.1 server on a free port that answers /predict and counts TCP connections."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self.requests = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode("latin-1").lower().split("\r\n")[1:] if ": " in line
                )
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                body = b'{"predictions":[],"anomalies":0,"total":0,"served_by":"counter"}'
                close = headers.get("connection") == "close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + (b"\r\nconnection: close" if close else b"")
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def __enter__(self) -> ConnectionCountingServer:
        self._thread.start()
        assert self._ready.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture
def counting_server() -> Iterator[ConnectionCountingServer]:
    with ConnectionCountingServer() as server:
        yield server


def test_keepalive_reuses_connections(counting_server: ConnectionCountingServer):
    url = f"http://127.0.0.1:{counting_server.port}"
    report = run_load(LoadConfig(url=url, rps=30, duration=1.0, batch_size=2, workers=3))
    assert report.succeeded == counting_server.requests == 30
    assert counting_server.connections <= 3


def test_no_keepalive_opens_a_connection_per_request(counting_server: ConnectionCountingServer):
    url = f"http://127.0.0.1:{counting_server.port}"
    report = run_load(LoadConfig(url=url, rps=30, duration=1.0, batch_size=2, workers=3, keepalive=False))
    assert report.succeeded == counting_server.requests == 30
    assert counting_server.connections == 30


def test_cli_prints_a_json_summary(server: ServerProcess):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.tools.cli",
            "load",
            "--url",
            server.url,
            "--rps",
            "20",
            "--duration",
            "1",
            "--batch-size",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["succeeded"] == summary["scheduled"] == 20
    assert set(summary["latency_ms"]) == {"avg", "p50", "p95", "p99", "max"}


def test_cli_refuses_a_remote_target_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "load", "--url", "http://192.0.2.10:8000", "--duration", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "not a loopback address; pass --allow-remote" in result.stderr
