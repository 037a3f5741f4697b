"""docker/compose.yaml started with a real engine (podman-compose): the API, the UI and Prometheus come up from the
built images, and Prometheus scrapes the API and loads every rule group of prometheus-rules/.

Grafana is not started: its image cannot be pulled here and Debian has no Grafana package to stand in for it
(docs/deploy.md); the dashboards' queries are proven against a real Prometheus in tests/monitoring instead.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import httpx2
import pytest
import yaml

from tests.deploy.containers import BACKEND_IMAGE, UI_IMAGE, answers, require_image, wait_for
from tests.support import ROOT, require_tool

pytestmark = pytest.mark.slow

COMPOSE = ROOT / "docker" / "compose.yaml"
PROMETHEUS_IMAGE = "docker.io/prom/prometheus:v3.5.0"
SERVICES = ("backend", "ui", "prometheus")
PORTS = {"backend": 8000, "ui": 8501, "prometheus": 9090}
"""What compose.yaml publishes on 127.0.0.1 (fixed there, so they must be free)."""


def compose(project: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [require_tool("podman-compose"), "-p", project, "-f", str(COMPOSE), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=600, cwd=COMPOSE.parent)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    for image in (BACKEND_IMAGE, UI_IMAGE, PROMETHEUS_IMAGE):
        require_image(image)
    busy = [f"{service} :{port}" for service, port in PORTS.items() if not port_is_free(port)]
    assert not busy, f"compose.yaml publishes fixed ports, and these are taken on 127.0.0.1: {busy}"
    project = f"gridwatch-test-{uuid.uuid4().hex[:6]}"
    try:
        started = compose(project, "up", "-d", "--no-build", *SERVICES)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        wait_for(lambda: answers("http://127.0.0.1:8000/health"), "the API ready")
        yield project
    finally:
        compose(project, "down", "-v")


def prometheus(query: str) -> list[dict]:
    answer = httpx2.get("http://127.0.0.1:9090/api/v1/query", params={"query": query}, timeout=10).json()
    return answer["data"]["result"]


def test_prometheus_scrapes_the_api_and_loads_every_rule_group(stack: str):
    wait_for(lambda: [r["value"][1] for r in prometheus('up{job="gridwatch"}')] == ["1"], "a successful scrape")
    assert prometheus('readings_scored_total{job="gridwatch"}'), "the API's own series are stored"
    expected = sum(
        len(yaml.safe_load(path.read_text())["groups"]) for path in (ROOT / "prometheus-rules").glob("*.yaml")
    )
    assert len(rule_health()) == expected

    def evaluated() -> bool:
        health = [rule for group in rule_health() for rule in group]
        assert "err" not in health, "a rule failed to evaluate"
        return set(health) == {"ok"}

    wait_for(evaluated, "every rule evaluated once (every 15 s)")


def rule_health() -> list[list[str]]:
    groups = httpx2.get("http://127.0.0.1:9090/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [[rule["health"] for rule in group["rules"]] for group in groups]


def test_the_ui_comes_up_beside_the_api(stack: str):
    wait_for(lambda: answers("http://127.0.0.1:8501/_stcore/health"), "the UI ready")
    assert httpx2.get("http://127.0.0.1:8501", timeout=10).status_code == 200
