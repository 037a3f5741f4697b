"""What ``gridwatch bench`` reads from a server process besides its answers: how long it took to become ready, and
how much memory it holds.

**Ready time** is the wall time from ``Popen`` to the first ``/health`` 200, the moment a Kubernetes readiness probe
could first succeed. ``app.tools.processes.wait_until_ready`` backs off like a kubelet (50 ms doubling to 500 ms),
which is right for waiting but would round a start of a few hundred milliseconds up by as much as half a second;
here the probe repeats at a fixed ``READY_POLL_S``, which is the resolution of the figure (plus one probe's time).

**Memory** is ``VmRSS`` (resident now) and ``VmHWM`` (the peak resident size since start) of
``/proc/<pid>/status``: what a container's memory limit has to allow for one worker.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READY_POLL_S = 0.01
"""Pause between two readiness probes: the resolution of the measured ready time."""
PROBE_TIMEOUT_S = 5.0


class ServerStartError(RuntimeError):
    """The server exited, or did not answer ``/health`` with 200 in time."""


@dataclass(frozen=True)
class Ready:
    process: subprocess.Popen[bytes]
    seconds: float
    """From just before ``Popen`` to the first 200 of ``/health``."""
    health: bytes
    """The body of that first 200 (GridWatch's names the process that answered)."""


def _probe(port: int, path: str) -> tuple[int, bytes] | None:
    """One ``GET`` on a fresh connection (as a kubelet probes): the status and body, or None if nobody answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def start_and_time(
    launch: Callable[[], subprocess.Popen[bytes]], port: int, *, timeout: float, path: str = "/health"
) -> Ready:
    """Start a server with ``launch`` and time it until ``path`` on ``port`` answers 200.

    The clock starts before ``launch``, so interpreter start-up and imports count, as they do for a pod. On any
    failure the process is killed before ``ServerStartError`` is raised, so no server outlives the call.
    """
    started = time.perf_counter()
    process = launch()
    try:
        while True:
            answer = _probe(port, path)
            if answer is not None and answer[0] == 200:
                return Ready(process, time.perf_counter() - started, answer[1])
            if process.poll() is not None:
                raise ServerStartError(f"exited with {process.returncode} before {path} answered 200")
            if time.perf_counter() - started > timeout:
                raise ServerStartError(f"{path} did not answer 200 within {timeout:g}s (last: {answer!r})")
            time.sleep(READY_POLL_S)  # the probe period, i.e. the measurement's resolution
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the server has not exited after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Memory:
    rss_mb: float
    peak_rss_mb: float


def process_memory(pid: int) -> Memory | None:
    """Resident and peak resident size of ``pid`` in MB (10^6 bytes), or None without ``/proc`` (not Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def megabytes(name: str) -> float:
        kib = int(fields[name].split()[0])  # "123456 kB": the kernel's kB are KiB
        return round(kib * 1024 / 1e6, 1)

    return Memory(rss_mb=megabytes("VmRSS"), peak_rss_mb=megabytes("VmHWM"))


def serving_pid(health: bytes, started: subprocess.Popen[bytes]) -> int:
    """The process that answered: GridWatch's ``/health`` names it (``instance``: ``host:pid``); else the one started.

    With ``WORKERS=1`` ``gridwatch serve`` serves in the process it starts, but reading the answer keeps the memory
    and the profile on the worker even if a supervisor process is ever put in front of it.
    """
    try:
        instance = str(json.loads(health).get("instance", ""))
        pid = int(instance.rsplit(":", 1)[1])
    except (ValueError, IndexError, AttributeError):
        return started.pid
    return pid if Path(f"/proc/{pid}").exists() else started.pid
