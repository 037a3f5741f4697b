"""Real processes on free localhost ports: `gridwatch serve` and the quickstart's `gridwatch up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from app.tools.processes import free_port, wait_until_ready
from tests.support import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def test_serve_answers_over_real_http(server: ServerProcess):
    health = httpx2.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    pid = server.process.pid
    assert health["instance"].endswith(f":{pid}")

    body = {
        "readings": [
            {"voltage": 230.1, "current": 10.0, "frequency": 50.0},
            {"voltage": 400.0, "current": 250.0, "frequency": 44.0},
        ]
    }
    answer = httpx2.post(f"{server.url}/predict", json=body).json()
    assert [p["anomaly"] for p in answer["predictions"]] == [False, True]
    assert answer["served_by"] == health["instance"]

    bad = httpx2.post(f"{server.url}/predict", json={"readings": [{"voltage": "x"}]})
    assert bad.status_code == 422
    metrics = httpx2.get(f"{server.url}/metrics").text
    assert 'requests_total{method="POST",path="/predict",status="422"} 1.0' in metrics
    assert "server" not in {name.lower() for name in bad.headers}  # no version banner
    assert server.stop() == 0


def test_serve_trains_a_model_on_first_start(tmp_path: Path):
    models = tmp_path / "models"
    env = {"MODEL_DIR": str(models), "TRAIN_IF_MISSING": "1"}
    with ServerProcess(env=env) as server:
        version = httpx2.get(f"{server.url}/health").json()["model_version"]
    assert (models / "versions" / version / "iso_forest.joblib").is_file()
    assert json.loads((models / "active.json").read_text())["version"] == version
    with ServerProcess(env={**env, "TRAIN_IF_MISSING": "0"}) as again:  # the second start loads it
        assert httpx2.get(f"{again.url}/health").json()["model_version"] == version


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT, signal.SIGTERM]])
def test_up_starts_api_and_ui_and_stops_both(model_dir: Path, signals: list[int]):
    """The quickstart's first command: API and Streamlit UI as children; a signal stops everything, and more
    signals during the shutdown (Ctrl-C reaches the whole group, `uv run` forwards it again) do not orphan them."""
    api_port, ui_port = free_port(), free_port()
    log = ROOT / "test-artifacts" / f"up-{api_port}.log"
    log.parent.mkdir(exist_ok=True)
    env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "warning"}
    with log.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "app.tools.cli", "up", "--api-port", str(api_port), "--ui-port", str(ui_port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}/health", process=up, timeout=120)
        assert wait_until_ready(f"http://127.0.0.1:{ui_port}/_stcore/health", process=up, timeout=120).text == "ok"
        # Streamlit serves a client-rendered shell; what it renders is checked by the browser test of the UI.
        assert '<div id="root">' in httpx2.get(f"http://127.0.0.1:{ui_port}/").text
    finally:
        for sig in signals:
            up.send_signal(sig)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()
    for port in (api_port, ui_port):
        with pytest.raises(httpx2.TransportError):
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=2)


def child_environments(parent: int) -> dict[str, dict[str, str]]:
    """The command line and environment of each direct child of ``parent`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # a process that ended meanwhile
            continue
        found[command] = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    return found


def test_up_stream_runs_nats_the_consumer_and_the_feeders_and_tells_the_ui_where_nats_is(
    model_dir: Path, tmp_path: Path
):
    """`gridwatch up --stream`: the NATS server (JetStream, MQTT), the consumer on API port + 1 scoring what the
    simulated feeders publish over MQTT, the UI given NATS_URL for its Stream view; SIGTERM stops them all."""
    import asyncio

    import nats

    api_port, ui_port = free_port(), free_port()
    nats_url, consumer_url = f"nats://127.0.0.1:{api_port + 2222}", f"http://127.0.0.1:{api_port + 1}"
    log = ROOT / "test-artifacts" / f"up-stream-{api_port}.log"
    log.parent.mkdir(exist_ok=True)
    env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "app.tools.cli", "up", "--stream", "--api-port", str(api_port),
               "--ui-port", str(ui_port), "--publish-seconds", "60"]  # fmt: skip
    with log.open("wb") as sink:
        up = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)

    async def results() -> int:
        client = await nats.connect(nats_url)
        try:
            return int((await client.jetstream().stream_info("GRID_SCORED")).state.messages)
        finally:
            await client.close()

    try:
        wait_until_ready(f"{consumer_url}/health", process=up, timeout=120)
        wait_until_ready(f"http://127.0.0.1:{ui_port}/_stcore/health", process=up, timeout=120)
        deadline = time.monotonic() + 60
        while asyncio.run(results()) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # poll interval: the loop waits for the first results
        assert asyncio.run(results()) > 0, "the feeders' readings were scored"
        (ui_env,) = [e for command, e in child_environments(up.pid).items() if "streamlit" in command]
        assert ui_env["NATS_URL"] == nats_url
        assert (tmp_path / ".gridwatch" / "nats").is_dir(), "the store lives under the project folder"
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()
    for url in (consumer_url, f"http://127.0.0.1:{api_port + 222}/healthz"):
        with pytest.raises(httpx2.TransportError):
            httpx2.get(url, timeout=2)
