"""``gridwatch up``: the local demo without a cluster, the API and the Streamlit UI as two child processes.

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


def run_demo(*, host: str = "127.0.0.1", api_port: int = 8000, ui_port: int = 8501) -> int:
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
    api = subprocess.Popen([sys.executable, "-m", "app.tools.cli", "serve"], env=env)
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
        env=env,
    )
    children = [api, ui]
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
        print(
            f"\nGridWatch is up:\n  API  {api_url}  (docs: {api_url}/docs, metrics: {api_url}/metrics)\n"
            f"  UI   http://{host}:{ui_port}\nPress Ctrl-C to stop.\n",
            flush=True,
        )
    while not stop.is_set() and all(child.poll() is None for child in children):
        stop.wait(0.5)
    if stop.is_set():
        _stop(children)
        return 0
    failed = next(child for child in children if child.poll() is not None)
    name = "API" if failed is api else "UI"
    _stop(children)
    print(f"gridwatch up: the {name} exited with code {failed.returncode}", file=sys.stderr)
    return failed.returncode or 1
