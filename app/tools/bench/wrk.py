"""Closed-loop HTTP load with ``wrk``: a fixed number of connections sending the same ``POST`` back to back.

``gridwatch bench`` uses it for the most a server can serve (many connections) and for the latency of one client
alone (one connection). wrk is a C program with its own event loop, so one CPU of it keeps a Python server busy
where a Python generator would be the bottleneck. Its ``--latency`` report gives the percentiles read here.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = r"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$"
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s+(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class ClosedLoopResult:
    connections: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    """Connect, read, write errors and timeouts (wrk gives up on a request after 2 s): latency misses those."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def post_script(body: Path) -> Path:
    """A wrk Lua script that POSTs ``body`` as JSON (wrk sends GET without one); written beside the body."""
    script = body.with_suffix(".lua")
    script.write_text(
        f'local f = io.open("{body}", "r")\nwrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def wrk_seconds(duration: float) -> int:
    """wrk takes whole seconds; round up so a short measurement never becomes zero."""
    return max(1, math.ceil(duration))


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, duration: float) -> ClosedLoopResult:
    """Load ``url`` with ``connections`` connections from one wrk thread for ``duration`` seconds.

    One thread because the load has one CPU of its own (``gridwatch bench`` pins the server to the other).
    Raises ``RuntimeError`` if any answer was not 2xx: a rate of error pages is not a throughput.
    """
    command = [wrk, "-t1", f"-c{connections}", f"-d{wrk_seconds(duration)}s", "--latency", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output, connections)


def parse_wrk(output: str, connections: int) -> ClosedLoopResult:
    """The figures of one ``wrk --latency`` report."""
    if errors := _NON_2XX.search(output):
        raise RuntimeError(f"{errors.group(1)} non-2xx answers under wrk:\n{output}")
    socket_errors = _SOCKET_ERRORS.search(output)
    return ClosedLoopResult(
        connections=connections,
        requests=int(_required(_REQUESTS, output)),
        requests_per_s=float(_required(_RATE, output)),
        p50_ms=_percentile_ms(output, 50),
        p99_ms=_percentile_ms(output, 99),
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )


def _percentile_ms(output: str, quantile: int) -> float:
    match = re.search(_PERCENTILE.format(q=quantile), output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {quantile}% line in wrk's output (was --latency given?):\n{output}")
    value, unit = match.groups()
    return float(value) * _UNIT_MS[unit]


def _required(pattern: re.Pattern[str], output: str) -> str:
    match = pattern.search(output)
    if match is None:
        raise RuntimeError(f"unexpected wrk output (no {pattern.pattern!r}):\n{output}")
    return match.group(1)
