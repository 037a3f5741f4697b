"""A bounded /predict load against a GridWatch API on this machine (``make kind-load`` runs it through a port-forward).

Sends simulated batches (``app.sim``, with some anomalies) from a few threads until ``--duration`` seconds or
``--max-requests`` requests, whichever comes first, then prints throughput, latency percentiles and status counts.
It only targets loopback addresses: load on anything else is refused, not sent. Exit status 1 when more than 1 % of
the requests failed, so it doubles as a check.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2

from app.sim import GridSimulator

MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 32


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    flagged: int = 0
    scored: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def is_loopback(url: str) -> bool:
    """True when every address the URL's host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def wait_until_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/health", timeout=5.0).status_code == 200:
                return True
        except httpx2.TransportError:
            pass
        time.sleep(1)  # readiness poll interval
    return False


def worker(url: str, bodies: list[bytes], deadline: float, budget: threading.Semaphore, results: Results) -> None:
    index = 0
    with httpx2.Client(base_url=url, timeout=30.0, headers={"Content-Type": "application/json"}) as client:
        while time.monotonic() < deadline and budget.acquire(blocking=False):
            body = bodies[index % len(bodies)]
            index += 1
            started = time.perf_counter()
            flagged = scored = 0
            try:
                answer = client.post("/predict", content=body)
                status = str(answer.status_code)
                if answer.status_code == 200:
                    payload = answer.json()
                    flagged, scored = payload["anomalies"], payload["total"]
            except httpx2.TransportError as error:
                status = type(error).__name__
            elapsed = time.perf_counter() - started
            _record(results, status, elapsed, flagged, scored)


def _record(results: Results, status: str, elapsed: float, flagged: int, scored: int) -> None:
    with results.lock:
        results.latencies.append(elapsed)
        results.statuses[status] += 1
        results.flagged += flagged
        results.scored += scored


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace) -> Results:
    simulator = GridSimulator(anomaly_rate=args.anomaly_rate, seed=args.seed)
    bodies = [json.dumps({"readings": simulator.batch(args.batch_size).to_records()}).encode() for _ in range(32)]
    results = Results()
    budget = threading.Semaphore(args.max_requests)
    deadline = time.monotonic() + args.duration
    threads = [
        threading.Thread(target=worker, args=(args.url, bodies, deadline, budget, results), daemon=True)
        for _ in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def report(results: Results, elapsed: float) -> dict[str, object]:
    total = sum(results.statuses.values())
    failed = total - results.statuses.get("200", 0)
    return {
        "requests": total,
        "failed": failed,
        "statuses": dict(results.statuses),
        "requests_per_second": round(total / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {
            name: round(1000 * percentile(results.latencies, q), 1)
            for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
        },
        "readings_scored": results.scored,
        "readings_flagged": results.flagged,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL (loopback only)")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds, at most {MAX_DURATION_S:.0f}")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--concurrency", type=int, default=4, help=f"client threads, at most {MAX_CONCURRENCY}")
    parser.add_argument("--batch-size", type=int, default=64, help="readings per request")
    parser.add_argument("--anomaly-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for /health first")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be within (0, {MAX_DURATION_S:.0f}]")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be within [1, {MAX_CONCURRENCY}]")
    if args.max_requests < 1 or args.batch_size < 1:
        parser.error("--max-requests and --batch-size must be >= 1")
    if not is_loopback(args.url):
        parser.error(f"{args.url} is not a loopback address: this load test only targets this machine")
    args.url = args.url.rstrip("/")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wait and not wait_until_ready(args.url, args.wait):
        print(f"{args.url}/health did not answer 200 within {args.wait:.0f}s", file=sys.stderr)
        return 1
    started = time.monotonic()
    results = run(args)
    summary = report(results, time.monotonic() - started)
    print(json.dumps(summary, indent=2))
    requests, failed = sum(results.statuses.values()), int(str(summary["failed"]))
    return 1 if requests == 0 or failed > 0.01 * requests else 0


if __name__ == "__main__":
    sys.exit(main())
