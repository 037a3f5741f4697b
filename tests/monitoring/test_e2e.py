"""The monitoring proven against a real Prometheus scraping a real `gridwatch serve` and a real `gridwatch stream`.

One module-scoped setup starts the backend, a NATS server with the stream consumer, and Debian's Prometheus (scrape
and rule evaluation every second, the repository's rule files, the two scrape jobs of docker/prometheus-local.yml)
on free localhost ports; it streams batches with a huge anomaly rate (plus some invalid ones, for 4xx) through the
API, and readings (plus a message that is not JSON now and then, for the dead letters) through NATS, until the
module ends. Every assertion polls Prometheus' HTTP API for its condition with a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import nats
import pytest
import yaml

from app.detector.model import ModelConfig
from app.detector.registry import ModelStore
from app.detector.training import train_version
from app.sim import GridSimulator
from tests.monitoring.support import (
    KUBERNETES_METRICS,
    Query,
    all_queries,
    is_gridwatch_only,
    metric_names,
    recording_rules,
    rule_files,
    substitute,
)
from tests.stream.support import NatsServer, StreamProcess
from tests.support import ROOT, PrometheusProcess, ServerProcess, copy_model, require_tool

pytestmark = pytest.mark.slow

LOCAL_CONFIG = ROOT / "docker" / "prometheus-local.yml"
DEADLINE_S = 60.0
ANOMALY_RATE = 0.4  # 20x the alert's 5 % threshold
BATCH = 100


class Prometheus(PrometheusProcess):
    """Debian's `prometheus` on a free port with its own TSDB folder, and its HTTP API."""

    def api(self, path: str, **params: str) -> httpx2.Response:
        return httpx2.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.api("query", query=expr)
        assert response.status_code == 200, f"{expr}: {response.text}"
        return response.json()["data"]["result"]


class Traffic(threading.Thread):
    """Posts simulated batches (a 40 % anomaly rate) and an invalid batch now and then until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopped = threading.Event()
        self.started_at = datetime.now(UTC)
        self.batches = 0
        self.errors: list[str] = []

    def run(self) -> None:
        simulator = GridSimulator(anomaly_rate=ANOMALY_RATE, seed=6)
        with httpx2.Client(base_url=self.url, timeout=30.0) as client:
            while not self.stopped.is_set():
                records = simulator.batch(BATCH).to_records(ground_truth=False)
                answer = client.post("/predict", json={"readings": records})
                if answer.status_code != 200:
                    self.errors.append(f"{answer.status_code} {answer.text[:200]}")
                if self.batches % 10 == 0:
                    client.post("/predict", json={"readings": [{"voltage": "not a number"}]})  # a 422
                self.batches += 1
                self.stopped.wait(0.02)  # pacing of the load, not synchronisation


class StreamTraffic(threading.Thread):
    """Publishes batches of readings to NATS (the same anomaly rate) and a message that is not JSON now and then,
    until stopped; the consumer scores them, dead-letters the bad ones, and its metrics feed the Stream panels."""

    def __init__(self, nats_url: str) -> None:
        super().__init__(daemon=True)
        self.nats_url = nats_url
        self.stopped = threading.Event()
        self.messages = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except Exception as error:  # reported by the fixture, never lost in a thread
            self.errors.append(repr(error))

    async def _publish(self) -> None:
        simulator = GridSimulator(anomaly_rate=ANOMALY_RATE, seed=8)
        client = await nats.connect(self.nats_url)
        js = client.jetstream()
        try:
            while not self.stopped.is_set():
                records = simulator.batch(BATCH).to_records(ground_truth=False)
                await js.publish(f"grid.readings.f{self.messages % 3}.s1", json.dumps({"readings": records}).encode())
                if self.messages % 10 == 0:
                    await js.publish("grid.readings.f0.s2", b"not json")
                self.messages += 1
                await asyncio.sleep(0.05)  # pacing of the load, not synchronisation
        finally:
            await client.close()


def poll(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """The condition's first truthy result, polled until a deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.25)  # poll interval, not synchronisation: the loop waits for the condition itself
    raise AssertionError(f"{what}: not true after {timeout}s (last: {last!r})")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, trained_artifact: Path) -> Path:
    return copy_model(trained_artifact, tmp_path_factory.mktemp("e2e-models"))


@pytest.fixture(scope="module")
def challenger(model_folder: Path) -> str:
    """A second, smaller version beside the active one, scoring in the shadow so its panels have data."""
    config = ModelConfig(n_estimators=10, max_samples=1024, train_samples=5_000)
    detector, active = train_version(ModelStore.of(model_folder / "iso_forest.joblib"), config, promote=False)
    assert not active
    return detector.version


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_folder: Path, challenger: str
) -> Iterator[tuple[Prometheus, Traffic]]:
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    env = {"MODEL_DIR": str(model_folder), "TRAIN_IF_MISSING": "0", "SHADOW_MODEL_VERSION": challenger}
    with (
        NatsServer(workdir / "nats-store") as nats_server,
        StreamProcess(nats_server.nats_url, model_folder) as consumer,
        ServerProcess(env=env) as server,
    ):
        config = yaml.safe_load(LOCAL_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(path) for path in rule_files()]
        backend_job, stream_job = config["scrape_configs"]
        backend_job["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]
        stream_job["static_configs"] = [{"targets": [f"127.0.0.1:{consumer.port}"]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = Prometheus(binary, workdir / "prometheus.yml", workdir / "data").start()
        traffic = Traffic(server.url)
        stream_traffic = StreamTraffic(nats_server.nats_url)
        traffic.start()
        stream_traffic.start()
        try:
            yield prometheus, traffic
        finally:
            traffic.stopped.set()
            stream_traffic.stopped.set()
            traffic.join(timeout=30)
            stream_traffic.join(timeout=30)
            prometheus.stop()
    assert not traffic.errors, traffic.errors[:5]
    assert not stream_traffic.errors, stream_traffic.errors[:5]
    assert stream_traffic.messages > 0


def test_local_config_is_what_the_test_runs():
    """docker/prometheus-local.yml (used by `make prometheus`) is valid and scrapes the `gridwatch` job."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(LOCAL_CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["gridwatch", "gridwatch-stream"]


def test_backend_target_is_up(stack: tuple[Prometheus, Traffic]):
    prometheus, _ = stack

    def gridwatch_targets() -> list[dict[str, Any]]:
        targets = prometheus.api("targets").json()["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "gridwatch" and t["health"] == "up"]

    assert len(poll(gridwatch_targets, "the gridwatch target is up")) == 1
    assert poll(lambda: prometheus.query('up{job="gridwatch"} == 1'), "up == 1")


def test_rules_load_and_evaluate_without_errors(stack: tuple[Prometheus, Traffic]):
    prometheus, _ = stack

    def evaluated_rules() -> list[dict[str, Any]]:
        groups = prometheus.api("rules").json()["data"]["groups"]
        found = [rule for group in groups for rule in group["rules"]]
        return found if found and all(rule.get("lastEvaluation", "").startswith("20") for rule in found) else []

    loaded = poll(evaluated_rules, "every rule evaluated once")
    recorded = {rule["record"] for rule in recording_rules()}
    assert {rule["name"] for rule in loaded} >= recorded
    assert [(rule["name"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"] == []


@pytest.mark.parametrize("rule", [rule["record"] for rule in recording_rules()])
def test_recording_rule_yields_data(stack: tuple[Prometheus, Traffic], rule: str):
    prometheus, _ = stack
    poll(lambda: prometheus.query(rule), f"{rule} has data")


QUERIES = all_queries()


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_dashboard_expression_parses_and_returns_data(stack: tuple[Prometheus, Traffic], query: Query):
    """Every dashboard expression, variables set to All and Grafana's ranges to short windows: Prometheus parses
    it, and it returns data unless it needs Kubernetes metrics (listed, syntax only) or is an event annotation
    (alerts firing, restarts: empty on a healthy run)."""
    prometheus, _ = stack
    expr = substitute(query.expr)
    response = prometheus.api("query", query=expr)
    assert response.status_code == 200, f"Prometheus rejects {expr}: {response.text}"
    if query.where.startswith("annotation") or not is_gridwatch_only(query.expr):
        return
    poll(lambda: prometheus.query(expr), f"{query} returns data")


def test_kubernetes_expressions_are_listed_and_only_on_capacity():
    """The expressions checked for syntax only: each names a Kubernetes metric, all on GridWatch / Capacity."""
    kubernetes = [query for query in QUERIES if not is_gridwatch_only(query.expr)]
    assert kubernetes, "the Capacity dashboard reads kube-state-metrics and cAdvisor"
    for query in kubernetes:
        assert metric_names(query.expr) & KUBERNETES_METRICS
        assert query.dashboard == "gridwatch-capacity.json", query
    gridwatch_only = [query for query in QUERIES if is_gridwatch_only(query.expr)]
    assert any(query.dashboard == "gridwatch-capacity.json" for query in gridwatch_only), "throughput per replica"


def test_anomaly_alert_goes_pending_and_availability_alerts_stay_silent(stack: tuple[Prometheus, Traffic]):
    prometheus, traffic = stack

    def anomaly_alert() -> list[dict[str, Any]]:
        alerts = prometheus.api("alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "GridWatchAnomalyRateHigh"]

    (alert,) = poll(anomaly_alert, "GridWatchAnomalyRateHigh pending or firing")
    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["severity"] == "warning"
    assert float(alert["value"]) > 0.05
    assert "of the readings scored" in alert["annotations"]["description"]
    active_at = datetime.fromisoformat(alert["activeAt"][:26].rstrip("Z") + "+00:00")
    print(
        f"GridWatchAnomalyRateHigh active {(active_at - traffic.started_at).total_seconds():.1f}s after traffic began"
    )

    alerts = {a["labels"]["alertname"] for a in prometheus.api("alerts").json()["data"]["alerts"]}
    healthy = {
        "GridWatchBackendAbsent",
        "GridWatchBackendDown",
        "GridWatchTargetDown",
        "GridWatchModelNotLoaded",
        "GridWatchNoModelLoaded",
        "GridWatchBackendRestarting",
        "GridWatchTargetsVanished",
        "GridWatchRequestsShed",
        "GridWatchAvailabilityBudgetBurnFast",
        "GridWatchAvailabilityBudgetBurnSlow",
        "GridWatchDetectorSilent",
    }
    assert not (alerts & healthy), f"a healthy backend raised {alerts & healthy}"


def test_stream_dead_letter_alert_goes_pending_and_the_healthy_stream_raises_nothing_else(
    stack: tuple[Prometheus, Traffic],
):
    """The consumer's own series reach the stream alerts: the messages that are not JSON make
    GridWatchStreamDeadLetters pending (its `for` is minutes), a bound and draining consumer raises no other."""
    prometheus, _ = stack

    def dead_letter_alerts() -> list[dict[str, Any]]:
        alerts = prometheus.api("alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "GridWatchStreamDeadLetters"]

    (alert,) = poll(dead_letter_alerts, "GridWatchStreamDeadLetters pending or firing")
    assert alert["labels"]["reason"] == "not_json"
    assert alert["state"] in {"pending", "firing"}
    assert poll(lambda: prometheus.query('stream_connected{job="gridwatch-stream"} == 1'), "the consumer is bound")
    alerts = {a["labels"]["alertname"] for a in prometheus.api("alerts").json()["data"]["alerts"]}
    assert not (alerts & {"GridWatchStreamNoConsumerBound", "GridWatchStreamBacklogGrowing"}), alerts
