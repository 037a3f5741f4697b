"""Child servers on this machine: a free port to give them, and waiting until one answers like a readiness probe.

Shared by ``gridwatch up`` (the demo), ``gridwatch bench`` and the tests, which all start real servers.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import httpx2

FIRST_PROBE_DELAY_S = 0.05
LONGEST_PROBE_DELAY_S = 0.5


class NotReadyError(RuntimeError):
    """The server did not answer 200 in time, exited first, or the wait was called off."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_until_ready(
    url: str,
    *,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    stop: threading.Event | None = None,
) -> httpx2.Response:
    """Poll ``url`` until it answers 200 and return that answer, backing off like a kubelet's probe period.

    Raises ``NotReadyError`` naming the last answer if ``timeout`` seconds pass, ``process`` exits first, or
    ``stop`` is set (a Ctrl-C during the demo's start).
    """
    pause = stop or threading.Event()
    deadline = time.monotonic() + timeout
    delay = FIRST_PROBE_DELAY_S
    last: object = None
    while not pause.is_set():
        if process is not None and process.poll() is not None:
            raise NotReadyError(f"process exited with {process.returncode} before {url} answered")
        try:
            response = httpx2.get(url, timeout=5.0)
            if response.status_code == 200:
                return response
            last = response.status_code
        except httpx2.TransportError as error:
            last = error
        if time.monotonic() >= deadline:
            raise NotReadyError(f"{url} not ready after {timeout:g}s (last: {last!r})")
        pause.wait(min(delay, max(deadline - time.monotonic(), 0.0)))  # the probe period, not synchronisation
        delay = min(delay * 2, LONGEST_PROBE_DELAY_S)
    raise NotReadyError(f"stopped while waiting for {url}")
