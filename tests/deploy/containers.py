"""Running the GridWatch images in tests with a real engine (podman), the way the chart runs them.

The images are built by ``.ci/build-images.sh`` (``make images``) before the tests; a test that needs them skips
with the reason on a laptop without podman or without the images, and fails under ``CI=true``, where ``.ci/run``
builds them (a skip would hide a broken build).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx2
import pytest

from app.tools.processes import free_port
from tests.support import IN_CI, require_tool

TAG = "local"
BACKEND_IMAGE = f"gridwatch-backend:{TAG}"
UI_IMAGE = f"gridwatch-ui:{TAG}"
STARTUP_S = 180.0
"""First start trains a model (about 2 s on a free core); far above it, for a loaded CI machine."""
CHART_UID = "10001"
MEMORY_LIMIT = "512m"
"""The chart's backend memory limit (values.yaml resources.limits.memory: 512Mi)."""


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def require_image(name: str) -> None:
    """Skip (fail under CI=true) unless podman and the image ``name`` are there."""
    require_tool("podman")
    if podman("image", "exists", name, check=False).returncode != 0:
        message = f"image {name} is not built (`make images` builds both with podman)"
        if IN_CI:
            pytest.fail(f"{message}; under CI=true .ci/run builds them, so this is an error")
        pytest.skip(message)


def wait_for(check: Callable[[], bool], what: str, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f}s"
        time.sleep(0.2)  # polling interval


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx2.get(url, timeout=5).status_code == status
    except httpx2.HTTPError:
        return False


@dataclass
class Container:
    """One container run as the chart runs its pods: non-root uid, read-only root filesystem, /tmp a tmpfs, every
    capability dropped, no privilege escalation, a memory limit; the given port published on 127.0.0.1."""

    image: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    """The container's port to publish on a free port of 127.0.0.1 (``url``)."""
    name: str = field(default_factory=lambda: f"gridwatch-test-{uuid.uuid4().hex[:8]}")
    host_port: int = 0
    host_network: bool = False
    """Share the host's network (to reach a server the test runs on 127.0.0.1); ``port`` is then not published."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def options(self) -> list[str]:
        options = [
            f"--user={CHART_UID}:{CHART_UID}",
            "--read-only",
            "--tmpfs=/tmp:rw,size=256m",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--memory={MEMORY_LIMIT}",
        ]
        options += [f"--env={key}={value}" for key, value in self.env.items()]
        options += [f"--volume={source}:{target}" for source, target in self.volumes.items()]
        if self.host_network:
            options.append("--network=host")
        elif self.port is not None:
            self.host_port = free_port()
            options.append(f"--publish=127.0.0.1:{self.host_port}:{self.port}")
        return options

    def start(self) -> Self:
        podman("run", "--detach", f"--name={self.name}", *self.options(), self.image, *self.args)
        return self

    def run(self) -> subprocess.CompletedProcess[str]:
        """Run to completion (a command such as ``train``) and return what it printed."""
        return podman("run", "--rm", f"--name={self.name}", *self.options(), self.image, *self.args, check=False)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=False)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def ip(self) -> str:
        return podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", self.name).stdout.strip()

    def pid1_maps(self) -> str:
        """The memory maps of the container's first process (``gridwatch serve`` with one worker)."""
        return self.exec("cat", "/proc/1/maps").stdout

    def stop(self) -> None:
        podman("rm", "--force", "--time=10", self.name, check=False)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Volume:
    """A fresh named volume, removed on exit: what the chart's models emptyDir or claim is to a pod."""

    def __init__(self) -> None:
        self.name = f"gridwatch-test-models-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Self:
        podman("volume", "create", self.name)
        return self

    def __exit__(self, *_: object) -> None:
        podman("volume", "rm", "--force", self.name, check=False)
