"""``gridwatch up``: the local demo without a cluster, the API and the Streamlit UI as two child processes; with
``--stream`` also a NATS server (JetStream and MQTT), the stream consumer and simulated feeders publishing over MQTT.

Both children run from this Python environment (``sys.executable``), so the demo uses exactly the installed
project. The UI gets ``BACKEND_URL`` pointing at the API. Ctrl-C, SIGTERM or the exit of either child stops
both; the demo's exit code is that of the child that failed first (0 on a clean stop).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from app.tools.nats_server import LocalNats
from app.tools.processes import NotReadyError, wait_until_ready

UI_SCRIPT = Path(__file__).resolve().parents[2] / "ui" / "main.py"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


STREAM_DATA = Path(".gridwatch") / "nats"
"""Where ``gridwatch up --stream`` keeps the NATS server's configuration and JetStream store (git-ignored)."""


def run_demo(
    *,
    host: str = "127.0.0.1",
    api_port: int = 8000,
    ui_port: int = 8501,
    stream: bool = False,
    publish_seconds: float = 600.0,
) -> int:
    if not UI_SCRIPT.is_file():
        print(f"gridwatch up: the UI script {UI_SCRIPT} is missing", file=sys.stderr)
        return 2
    api_url = f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{api_port}"
    env = {
        **os.environ,
        "HOST": host,
        "PORT": str(api_port),
        "BACKEND_URL": api_url,
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),  # a terminal, not a log collector, reads the demo
    }
    local = LocalNats(host, api_port + 2222, api_port - 6117, api_port + 222) if stream else None
    api = subprocess.Popen([sys.executable, "-m", "app.tools.cli", "serve"], env=env)
    # The UI's Stream view subscribes to the results of the NATS server started below.
    ui_env = {**env, "NATS_URL": local.nats_url} if local is not None else env
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(UI_SCRIPT),
            "--server.address",
            host,
            "--server.port",
            str(ui_port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        env=ui_env,
    )
    children = [api, ui]
    names = {api: "API", ui: "UI"}
    if local is not None:
        started = _start_stream(env, local, host, api_port, publish_seconds)
        children += list(started)
        names.update(started)
    # Signals only set a flag, so a second Ctrl-C (a terminal signals the whole process group, and `uv run`
    # forwards the signal again) can never interrupt the shutdown half-way and orphan the children.
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        wait_until_ready(f"{api_url}/health", timeout=READY_TIMEOUT_S, process=api, stop=stop)
    except NotReadyError:
        pass  # the loop below tells an API that exited from a Ctrl-C; a slow one just keeps starting
    else:
        streaming = (
            f"  NATS nats://{host}:{api_port + 2222}, MQTT mqtt://{host}:{api_port - 6117}; stream consumer "
            f"http://{host}:{api_port + 1}/health; simulated feeders publish for {publish_seconds:.0f} s\n"
            if stream
            else ""
        )
        print(
            f"\nGridWatch is up:\n  API  {api_url}  (docs: {api_url}/docs, metrics: {api_url}/metrics)\n"
            f"  UI   http://{host}:{ui_port}\n{streaming}Press Ctrl-C to stop.\n",
            flush=True,
        )
    publisher = next((child for child, name in names.items() if name == "publisher"), None)
    while not stop.is_set() and all(child.poll() is None for child in children if child is not publisher):
        stop.wait(0.5)
    if stop.is_set():
        _stop(children)
        return 0
    failed = next(child for child in children if child.poll() is not None and child is not publisher)
    name = names[failed]
    _stop(children)
    print(f"gridwatch up: the {name} exited with code {failed.returncode}", file=sys.stderr)
    return failed.returncode or 1


def _start_stream(
    env: dict[str, str], local: LocalNats, host: str, api_port: int, publish_seconds: float
) -> dict[subprocess.Popen[bytes], str]:
    """The NATS server (ports derived from the API's: 10222 and 1883 for the default 8000), the consumer on the
    API's port + 1, and the publisher, which stops by itself after ``publish_seconds``."""
    nats_server = local.start(STREAM_DATA)
    wait_until_ready(local.health_url, timeout=60.0, process=nats_server)
    consumer_env = {**env, "PORT": str(api_port + 1), "NATS_URL": local.nats_url}
    consumer = subprocess.Popen([sys.executable, "-m", "app.tools.cli", "stream"], env=consumer_env)
    wait_until_ready(f"http://{host}:{api_port + 1}/health", timeout=READY_TIMEOUT_S, process=consumer)
    publisher = subprocess.Popen(
        [sys.executable, "-m", "app.tools.cli", "publish", "--url", local.mqtt_url, "--rate", "200", "--duration",
         str(publish_seconds)],
        env=env,
    )  # fmt: skip
    return {nats_server: "NATS server", consumer: "stream consumer", publisher: "publisher"}
