"""What the benchmark is asked to do and what it found: the configuration, one row per scorer batch size and per
server, and the whole result with the machine it ran on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn

from app.detector import forest_jit
from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from app.tools.bench.live_profile import LiveProfile
from app.tools.bench.request_profile import RequestProfile

if TYPE_CHECKING:
    from app.tools.bench.stream import StreamResult

GRIDWATCH = "gridwatch (compiled forest, msgspec)"
GRIDWATCH_SHADOW = "gridwatch, a challenger in the shadow"
BASELINE = "baseline (FastAPI + pydantic + scikit-learn)"


WARM_UP_SHARE = 0.2
"""Before the throughput run, each server serves the same load for this share of its duration, unmeasured: the run
then gives the steady state a server keeps up, not its first requests (caches, allocator arenas, the CPU's clock
ramping up), for every server alike."""


@dataclass(frozen=True)
class BenchConfig:
    sizes: Sequence[int] = (1, 64, 1024, 65536)
    min_seconds: float = 0.5
    """Each scorer measurement repeats until this much time has passed (at least 3 calls), then takes the median."""
    http: bool = True
    http_duration: float = 10.0
    """Seconds of each HTTP run: most throughput, one connection, fixed rate, live profile."""
    connections: int = 32
    batch_size: int = 64
    fixed_rps: float = 150.0
    profile_requests: int = 2000
    """Requests of ``batch_size`` readings profiled in process (``app.tools.request_profile``); 0 skips the profile."""
    ready_starts: int = 3
    """Starts timed per server (and per fresh-pod case); the median is reported."""
    profile_nonblocking: bool = False
    """py-spy ``--nonblocking``: slows the server less, but tears stacks (see ``app.tools.live_profile``)."""
    shadow: bool = False
    """Also measure GridWatch with a challenger scoring every batch in the shadow (``SHADOW_MODEL_VERSION``)."""
    stream: bool = False
    """Also measure readings end to end through a real NATS server and ``gridwatch stream``."""
    stream_batches: Sequence[int] = (50, 500, 5000)
    """``STREAM_BATCH`` values of the throughput runs: the default (500) and one on each side."""
    stream_readings: int = 50_000
    """Readings of each throughput run."""
    stream_rate: float = 10_000.0
    """Readings per second of the latency run (for ``http_duration`` seconds)."""


@dataclass(frozen=True)
class ScorerRow:
    batch: int
    sklearn_ms: float
    numba_ms: float | None
    numpy_ms: float
    speedup_numba: float | None
    speedup_numpy: float
    explained_ms: float | None = None
    """The same batch scored and explained (``/predict?explain=true``'s work) with the default scorer."""
    scored_ms: float | None = None
    """The same batch scored alone with the default scorer, measured beside ``explained_ms``."""

    @property
    def explain_cost(self) -> float | None:
        """Scored and explained over scored alone: the goal is at most 2x."""
        if self.explained_ms is None or not self.scored_ms:
            return None
        return self.explained_ms / self.scored_ms

    @property
    def rows_per_s(self) -> dict[str, float]:
        times = {"sklearn": self.sklearn_ms, "numba": self.numba_ms, "numpy": self.numpy_ms}
        return {name: self.batch / (ms / 1000.0) for name, ms in times.items() if ms}


@dataclass(frozen=True)
class HttpRow:
    """One server at its defaults; ``max_*`` at ``connections`` back to back, ``single_*`` with one connection."""

    server: str
    tool: str
    max_rows_per_s: float
    max_requests_per_s: float
    max_p50_ms: float
    max_p99_ms: float
    max_errors: int
    """Socket errors and timeouts of the throughput run (not in its latencies)."""
    single_requests_per_s: float
    single_p50_ms: float
    single_p99_ms: float
    rss_mb: float | None
    """Resident memory (VmRSS) of the serving process right after the throughput run; None without /proc."""
    peak_rss_mb: float | None
    """Its peak resident memory since start (VmHWM) at the same moment."""
    ready_s: float
    """Median wall time from start to the first /health 200, model trained and caches as left by earlier runs."""
    ready_starts_s: tuple[float, ...]
    fresh_ready_s: float | None
    """The same with an empty numba cache (a fresh pod compiles its kernels); None for a server that compiles none."""
    fresh_ready_starts_s: tuple[float, ...]
    fixed_rps: float
    fixed_achieved_rps: float
    fixed_p50_ms: float
    fixed_p99_ms: float
    fixed_failed: int
    fixed_unsent: int
    server_cpus: tuple[int, ...]
    """Where the serving process was allowed to run (read from it while it served)..."""
    load_cpus: tuple[int, ...]
    """...and the load (this process and its children, wrk and py-spy): disjoint on a machine with 2+ CPUs."""


@dataclass
class BenchResult:
    machine: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    scorer: list[ScorerRow] = field(default_factory=list)
    http: list[HttpRow] = field(default_factory=list)
    live_profile: LiveProfile | None = None
    request_path: RequestProfile | None = None
    stream: StreamResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    info: dict[str, Any] = {
        "date": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    if NUMBA_AVAILABLE:
        import numba  # noqa: PLC0415

        info["numba"] = numba.__version__
    info["kernels"] = forest_jit.KIND or "none (NumPy)"
    return info
