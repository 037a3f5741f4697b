"""WORKERS>1 with real processes: one scrape sees the exact totals of every worker, also across a worker's death."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.serving.readiness import pid_alive
from app.serving.telemetry.exposition import live_worker_pids
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

READINGS = [
    {"voltage": 230.9, "current": 12.0, "frequency": 50.01},
    {"voltage": 410.0, "current": 200.0, "frequency": 45.0},
    {"voltage": 229.5, "current": 9.5, "frequency": 49.99},
]
MAX_REQUESTS = 3000
"""Upper bound of the loop that waits for the kernel to have handed connections to every worker."""


class Traffic:
    """Sends /predict requests on fresh connections and keeps the ground truth of what was answered.

    Readiness is per worker: a worker that is still loading its model answers 503 (a replacement worker after a
    crash, for instance). Such answers are part of the truth too: they are counted in ``requests_total``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests = 0
        self.scored = 0
        self.anomalies = 0
        self.readings = 0
        self.served_by: Counter[str] = Counter()

    def send(self) -> None:
        # A new connection per request, so the kernel spreads them over the workers' shared socket.
        answer = httpx2.post(f"{self.url}/predict", json={"readings": READINGS}, headers={"connection": "close"})
        self.requests += 1
        if answer.status_code == 503:
            return
        assert answer.status_code == 200, answer.text
        body = answer.json()
        self.scored += 1
        self.anomalies += body["anomalies"]
        self.readings += body["total"]
        self.served_by[body["served_by"]] += 1

    def until_served_by(self, instances: int, each: int) -> None:
        while self.requests < MAX_REQUESTS:
            if len(self.served_by) >= instances and min(self.served_by.values()) >= each:
                return
            self.send()
        raise AssertionError(f"{instances} workers never all answered: {self.served_by}")


def scrape(url: str) -> dict[str, list]:
    text = httpx2.get(f"{url}/metrics").text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def two_workers(model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    metrics_dir = tmp_path / "metrics"
    env = {
        "MODEL_DIR": str(model_dir),
        "TRAIN_IF_MISSING": "0",
        "WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "OTEL_TRACES_EXPORTER": "console",  # traced, yet exemplars must stay off in multiprocess mode
    }
    with ServerProcess(env=env) as server:
        yield server, metrics_dir


def test_one_scrape_sees_exact_totals_of_both_workers(two_workers):
    server, metrics_dir = two_workers
    traffic = Traffic(server.url)
    traffic.until_served_by(instances=2, each=10)
    samples = scrape(server.url)
    assert total(samples, "requests_total", path="/predict") == traffic.requests
    assert total(samples, "anomalies_total") == traffic.anomalies
    assert total(samples, "readings_scored_total") == traffic.readings
    assert total(samples, "inference_latency_seconds_count") == traffic.scored
    assert total(samples, "requests_total", path="/predict", status="200") == traffic.scored
    assert total(samples, "request_latency_seconds_count", path="/predict") == traffic.requests
    # the 5xx series the availability SLO divides by exist, at 0, in the merged answer of both workers
    failures = [s for s in samples["requests_total"] if s.labels["path"] == "/predict" and s.labels["status"] >= "5"]
    assert sorted((s.labels["status"], s.value) for s in failures) == [("500", 0.0), ("503", 0.0)]
    assert total(samples, "requests_in_flight") == 0
    assert len(samples["model_info"]) == 1
    assert samples["model_info"][0].value == 1
    assert len(samples["process_cpu_seconds_total"]) == 1
    assert all("pid" not in s.labels for series in samples.values() for s in series)
    assert server.process.pid not in live_worker_pids(metrics_dir)  # the supervisor writes no metric files
    open_metrics = httpx2.get(f"{server.url}/metrics", headers={"accept": "application/openmetrics-text"}).text
    assert open_metrics.rstrip().endswith("# EOF")
    assert " # {" not in open_metrics  # no exemplars with WORKERS>1


def test_a_killed_worker_is_replaced_without_losing_or_double_counting(two_workers):
    server, metrics_dir = two_workers
    traffic = Traffic(server.url)
    traffic.until_served_by(instances=2, each=5)
    victim = int(sorted(traffic.served_by)[0].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    before_kill = traffic.requests

    # Uvicorn's supervisor starts a replacement; keep sending until it (a third pid) has answered.
    traffic.until_served_by(instances=3, each=5)
    samples = scrape(server.url)
    assert not pid_alive(victim)
    assert victim not in live_worker_pids(metrics_dir)
    assert not list(metrics_dir.glob(f"gauge_live*_{victim}.db"))  # its live gauges were marked dead
    assert list(metrics_dir.glob(f"counter_{victim}.db"))  # its counts stay: counters never go down
    assert traffic.requests > before_kill
    assert total(samples, "requests_total", path="/predict") == traffic.requests
    assert total(samples, "anomalies_total") == traffic.anomalies
    assert total(samples, "requests_in_flight") == 0
    assert len(samples["model_info"]) == 1


def test_the_metrics_folder_is_emptied_at_start(model_dir: Path, tmp_path: Path):
    metrics_dir = tmp_path / "metrics"
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "WORKERS": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}  # fmt: skip
    with ServerProcess(env=env) as first:
        Traffic(first.url).until_served_by(instances=1, each=20)
    assert list(metrics_dir.glob("counter_*.db"))  # the first run left its files
    with ServerProcess(env=env) as second:
        traffic = Traffic(second.url)
        for _ in range(3):
            traffic.send()
        assert total(scrape(second.url), "requests_total", path="/predict") == 3


def test_without_a_configured_folder_serve_makes_one_and_removes_it_at_exit(model_dir: Path, tmp_path: Path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "WORKERS": "2", "TMPDIR": str(scratch)}
    server = ServerProcess(env=env)
    server.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with server:
        traffic = Traffic(server.url)
        traffic.until_served_by(instances=2, each=2)
        assert total(scrape(server.url), "requests_total", path="/predict") == traffic.requests
        (made,) = scratch.glob("gridwatch-metrics-*")
        assert list(made.glob("counter_*.db"))
    assert server.process.returncode == 0
    assert not made.exists(), "the folder serve made for itself is gone after a clean stop"


def test_every_worker_exports_its_own_traces(two_workers):
    """Each worker builds its own tracer provider and exporter after the fork: spans of both workers reach the
    (console) exporter, each tagged with the instance that served it, and none are lost at shutdown."""
    server, _ = two_workers
    traffic = Traffic(server.url)
    traffic.until_served_by(instances=2, each=3)
    assert server.stop() == 0  # a clean stop flushes every worker's batch of spans
    log = server.log()
    exported = Counter(re.findall(r'"service\.instance\.id": "([^"]+)"', log))
    assert set(traffic.served_by) <= set(exported), (traffic.served_by, exported)
    assert log.count('"name": "POST /predict"') >= traffic.scored
