"""Starting the servers the benchmark compares: what each runs (``ServerSpec``), where (``Placement``: the server on
one CPU, the load on the others), at which settings (the defaults a user gets), and how long until ready."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.detector.registry import ModelStore
from app.serving.settings import Settings
from app.tools.bench.results import BASELINE, GRIDWATCH, GRIDWATCH_SHADOW
from app.tools.bench.server_probes import ServerStartError, serving_pid, start_and_time, stop
from app.tools.processes import free_port

SERVER_START_TIMEOUT_S = 180.0


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(server CPUs, load CPUs): the first CPU for the server, the rest for the load; None on one CPU."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this thread, and every process it starts meanwhile (they inherit it), on ``cpus`` (None: unchanged)."""
    if cpus is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def affinity(pid: int) -> tuple[int, ...]:
    """The CPUs ``pid`` (0: this thread) may run on; () where the OS does not say (not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except (AttributeError, OSError):
        return ()


def server_environment() -> dict[str, str]:
    """This process's environment without any GridWatch setting (``Settings`` fields, e.g. LOG_LEVEL, OTEL_*), so a
    server started with it runs at the defaults a user gets, whatever the shell running the benchmark exports."""
    settings = {name.upper() for name in Settings.model_fields}
    return {name: value for name, value in os.environ.items() if name.upper() not in settings}


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: list[str]
    """``{port}`` in an argument is replaced by the port chosen for the start."""
    env: dict[str, str]
    compiles: bool
    """Compiles code at start (numba), so a start with an empty cache (a fresh pod) is timed too."""
    profiled: bool
    """Profiled live under load (py-spy), stage by stage."""


def shadow_spec(artifact: Path, workdir: Path) -> ServerSpec:
    """GridWatch at the same defaults, with the same version also scoring every batch as the shadow: exactly the
    cost of one more scoring per batch, which is what a challenger of the same size costs. The model's files are
    copied into a folder of versions (``active.json``), which the shadow is named in."""
    folder = workdir / "shadow-models"
    folder.mkdir(exist_ok=True)
    for path in (artifact, artifact.with_suffix(".npz"), artifact.with_suffix(".json")):
        shutil.copy2(path, folder / path.name)
    store = ModelStore(folder, artifact.name)
    version = json.loads(artifact.with_suffix(".json").read_text())["model_version"]
    store.promote(version)  # moves the copy into versions/ and points active.json at it
    env = {
        "HOST": "127.0.0.1",
        "WORKERS": "1",
        "MODEL_DIR": str(folder),
        "MODEL_NAME": artifact.name,
        "TRAIN_IF_MISSING": "0",
        "SHADOW_MODEL_VERSION": version,
    }
    return ServerSpec(GRIDWATCH_SHADOW, [sys.executable, "-m", "app.tools.cli", "serve"], env, False, False)


def server_specs(artifact: Path) -> list[ServerSpec]:
    """GridWatch exactly as ``gridwatch serve`` starts for a user (LOG_LEVEL info with the access log, tracing off
    unless configured, metrics on; one worker, this model, no training), and the baseline as it is written."""
    gridwatch_env = {
        "HOST": "127.0.0.1",
        "WORKERS": "1",
        "MODEL_DIR": str(artifact.parent),
        "MODEL_NAME": artifact.name,
        "TRAIN_IF_MISSING": "0",
    }
    baseline = [sys.executable, "-m", "app.tools.bench.baseline", "--model", str(artifact), "--port", "{port}"]
    return [
        ServerSpec(GRIDWATCH, [sys.executable, "-m", "app.tools.cli", "serve"], gridwatch_env, True, True),
        ServerSpec(BASELINE, baseline, {}, False, False),
    ]


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    """The process serving (GridWatch's /health names it); its memory is read and it is profiled."""
    ready_s: float


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server gets and which the load (this process, wrk, py-spy); None: wherever the OS likes.

    Chosen once, before this process pins itself to the load CPUs: asked afterwards, its own affinity would be
    the load's only."""

    server: set[int] | None
    load: set[int] | None

    @classmethod
    def split(cls) -> Placement:
        split = _cpu_split()
        return cls(*split) if split else cls(None, None)


@contextmanager
def started(
    spec: ServerSpec, workdir: Path, placement: Placement, extra_env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Start ``spec`` on a free port, pinned to the server CPUs, time it until ready, and stop it on exit."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    command = [part.replace("{port}", str(port)) for part in spec.command]
    env = {**server_environment(), **spec.env, "PORT": str(port), **(extra_env or {})}

    def launch() -> subprocess.Popen[bytes]:
        with log.open("wb") as sink, pinned(placement.server):  # the child inherits the affinity from its start
            return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)

    try:
        ready = start_and_time(launch, port, timeout=SERVER_START_TIMEOUT_S)
    except ServerStartError as error:
        raise RuntimeError(f"{spec.name}: {error}; its log ends:\n{_tail(log)}") from None
    try:
        yield Running(f"http://127.0.0.1:{port}", serving_pid(ready.health, ready.process), ready.seconds)
    finally:
        stop(ready.process)


def ready_times(
    spec: ServerSpec, workdir: Path, placement: Placement, starts: int, extra_env: Callable[[], dict[str, str]]
) -> list[float]:
    times = []
    for _ in range(starts):
        with started(spec, workdir, placement, extra_env()) as running:
            times.append(round(running.ready_s, 3))
    return times


def fresh_numba_cache(workdir: Path) -> dict[str, str]:
    """A new, empty numba cache folder: the start of a pod whose image holds no compiled kernels."""
    return {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-cache-", dir=workdir)}
