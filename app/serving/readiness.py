"""Readiness of the whole server, not of the one worker that happens to answer the probe.

With ``WORKERS=N`` the kernel hands each connection to any worker, so a ``/health`` answered by a worker whose
model is loaded says nothing of its siblings: right after the first 200, requests would still reach a worker that
is loading and get 503s, and in Kubernetes the pod would be marked ready too early. So each worker, once its model
is loaded, leaves a marker file named after its pid in the server's shared folder (the multiprocess metrics
folder, which ``gridwatch serve`` creates and empties before the workers start), and ``/health`` answers 200 only
while N live workers have left one. A worker that dies takes its readiness with it (its pid is gone), so the pod
is unready until the replacement has loaded its model.

Light on purpose: uvicorn's supervisor process imports it (to clear old markers) and must never import
prometheus-client, which would create metric files for a process that serves nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MARKER = re.compile(r"^ready_(\d+)$")


def clear_markers(directory: Path) -> None:
    """Remove the markers a previous run left (called by ``gridwatch serve`` before the workers start)."""
    for entry in directory.glob("ready_*"):
        entry.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class ServerReadiness:
    """How many of the server's ``workers`` have their model; with one worker (or no shared folder), this one."""

    def __init__(self, workers: int, directory: Path | None) -> None:
        self.workers = workers
        self.directory = directory if workers > 1 else None
        self._self_ready = False

    def mark_ready(self) -> None:
        """This worker's model is loaded: say so to the siblings."""
        self._self_ready = True
        if self.directory is not None:
            (self.directory / f"ready_{os.getpid()}").touch()

    def ready_workers(self) -> int:
        if self.directory is None:
            return int(self._self_ready)
        pids = (int(m.group(1)) for entry in self.directory.iterdir() if (m := _MARKER.match(entry.name)))
        return sum(1 for pid in pids if pid_alive(pid))

    def all_ready(self) -> bool:
        return self.ready_workers() >= self.workers
