"""Process metrics (CPU, memory, file descriptors) of a server that runs several worker processes.

prometheus-client's ``ProcessCollector`` reports the process that answers the scrape, which with WORKERS>1 is one
worker chosen by the kernel: each scrape would see a different process's CPU counter, and ``rate()`` over it would
be nonsense. This collector reports the same metric names summed over every live worker (the processes that write
into ``PROMETHEUS_MULTIPROC_DIR``), so ``rate(process_cpu_seconds_total[5m])`` is the server's CPU use, as in the
single-process case.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_PID_IN_FILE = re.compile(r"_(\d+)\.db$")

_SUMMED = {
    "process_cpu_seconds": "Total user and system CPU time of the live worker processes, in seconds.",
    "process_resident_memory_bytes": "Resident memory of the live worker processes, summed, in bytes.",
    "process_virtual_memory_bytes": "Virtual memory of the live worker processes, summed, in bytes.",
    "process_open_fds": "Open file descriptors of the live worker processes, summed.",
}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


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
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
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
