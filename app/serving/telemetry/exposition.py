"""The exposition of the metrics for a scrape: one process's registry, or every worker's files merged.

**Several worker processes.** With ``WORKERS>1`` each uvicorn worker is its own process with its own counters, and
a scrape reaches only one of them. ``gridwatch serve`` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start (so prometheus-client keeps every value in a shared memory-mapped file), and ``/metrics`` merges all files
into one answer. Counters and histograms of dead workers stay, because a count must never go down; their ``live*``
gauges are dropped at the next scrape.

**Process metrics of several workers.** prometheus-client's ``ProcessCollector`` reports the process that answers
the scrape, which with WORKERS>1 is one worker chosen by the kernel: each scrape would see a different process's
CPU counter, and ``rate()`` over it would be nonsense. ``ServerProcessCollector`` reports the same metric names
summed over every live worker (the processes that write into ``PROMETHEUS_MULTIPROC_DIR``), so
``rate(process_cpu_seconds_total[5m])`` is the server's CPU use, as in the single-process case.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from app.serving.readiness import pid_alive

_PID_IN_FILE = re.compile(r"_(\d+)\.db$")

_SUMMED = {
    "process_cpu_seconds": "Total user and system CPU time of the live worker processes, in seconds.",
    "process_resident_memory_bytes": "Resident memory of the live worker processes, summed, in bytes.",
    "process_virtual_memory_bytes": "Virtual memory of the live worker processes, summed, in bytes.",
    "process_open_fds": "Open file descriptors of the live worker processes, summed.",
}


def _constant(pid: int) -> Callable[[], int]:
    """A pid as the callable ``ProcessCollector`` wants."""
    return lambda: pid


def live_worker_pids(directory: Path) -> list[int]:
    """Pids that wrote metrics into ``directory`` and are still running."""
    pids = {int(m.group(1)) for entry in directory.glob("*.db") if (m := _PID_IN_FILE.search(entry.name))}
    return sorted(pid for pid in pids if pid_alive(pid))


class ServerProcessCollector(Collector):
    """``process_*`` metrics summed over the live workers; ``process_start_time_seconds`` is the oldest worker's."""

    def __init__(self, directory: Path, registry: CollectorRegistry | None = None) -> None:
        self.directory = directory
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterable[Metric]:
        totals = dict.fromkeys(_SUMMED, 0.0)
        start_times: list[float] = []
        for pid in live_worker_pids(self.directory):
            collector = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                for sample in family.samples:
                    if family.name in totals:
                        totals[family.name] += sample.value
                    elif family.name == "process_start_time_seconds":
                        start_times.append(sample.value)
        if not start_times:  # no readable /proc (not Linux), nothing honest to report
            return
        yield CounterMetricFamily(
            "process_cpu_seconds", _SUMMED["process_cpu_seconds"], value=totals["process_cpu_seconds"]
        )
        for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"):
            yield GaugeMetricFamily(name, _SUMMED[name], value=totals[name])
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the oldest live worker since the Unix epoch, in seconds.",
            value=min(start_times),
        )


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def mark_dead_workers(directory: Path) -> list[int]:
    """Drop the live gauges of worker processes that no longer exist (crashed or restarted); returns their pids.

    Uvicorn has no hook for a dying worker, so the scrape does it: a ``live*`` gauge file whose pid is gone is
    removed through prometheus-client's ``mark_process_dead``.
    """
    dead = set()
    for entry in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_process_dead(pid, str(directory))
    return sorted(dead)


def render_metrics(accept: str, multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The exposition for a scrape: Prometheus text, or OpenMetrics if ``accept`` asks for it.

    In multiprocess mode a fresh registry merges every worker's files (plus Python platform info and the process
    metrics of the whole server, which prometheus-client cannot collect across processes by itself).
    """
    encoder, content_type = choose_encoder(accept)
    if multiprocess_dir is None:
        return encoder(REGISTRY), content_type
    mark_dead_workers(multiprocess_dir)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiprocess_dir))
    PlatformCollector(registry=registry)
    ServerProcessCollector(multiprocess_dir, registry=registry)
    return encoder(registry), content_type
