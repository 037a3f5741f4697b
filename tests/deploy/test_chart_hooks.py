"""The `helm test` hook scripts (helm/gridwatch/files/*.py), run here against real processes: the API smoke test
against a real `gridwatch serve`, the Prometheus target test against a real Prometheus scraping it. The Pods in the
chart run these same files with `python -c` inside the backend image."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import JOB
from tests.support import ROOT, Answer, PrometheusProcess, ServerProcess, StubBackend, copy_model, require_tool

FILES = ROOT / "helm" / "gridwatch" / "files"

pytestmark = pytest.mark.slow


def run_hook(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FILES / script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, trained_artifact: Path) -> Iterator[ServerProcess]:
    """One real `gridwatch serve` for the whole module, loading the session's trained model."""
    models = copy_model(trained_artifact, tmp_path_factory.mktemp("models"))
    with ServerProcess(env={"MODEL_DIR": str(models), "TRAIN_IF_MISSING": "0"}) as process:
        yield process


def test_api_smoke_test_passes_against_a_real_server(api: ServerProcess):
    result = run_hook("api_smoke_test.py", BACKEND_URL=api.url, TEST_TIMEOUT_SECONDS="30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def _blind_scores(body: dict | None) -> Answer:
    readings = (body or {}).get("readings", [])
    predictions = [{"anomaly": False, "score": -0.1} for _ in readings]
    return Answer(200, {"predictions": predictions, "anomalies": 0, "total": len(readings), "served_by": "blind"})


@pytest.fixture
def blind_api() -> Iterator[str]:
    """An API that is ready but flags nothing: the smoke test must catch it."""
    with StubBackend() as stub:
        stub.route("GET", "/health", Answer(200, {"status": "ok", "model_version": "blind"}))
        stub.route("POST", "/predict", _blind_scores)
        yield stub.url


def test_api_smoke_test_fails_when_the_extreme_reading_is_not_flagged(blind_api: str):
    result = run_hook("api_smoke_test.py", BACKEND_URL=blind_api, TEST_TIMEOUT_SECONDS="10")
    assert result.returncode == 1
    assert "FAIL: expected the normal reading passed and the extreme one flagged" in result.stderr


RULES = yaml.safe_dump(
    {
        "groups": [
            {
                "name": "gridwatch-hook-test",
                "rules": [{"alert": "HookTestBackendDown", "expr": f'up{{job="{JOB}"}} == 0', "for": "1m"}],
            }
        ]
    }
)


@pytest.fixture(scope="module")
def prometheus(api: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the server every second, as kube-prometheus-stack would, with one rule group."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    (tmp_path / "rules.yaml").write_text(RULES)
    backend = api.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [backend], "labels": {"namespace": "gridwatch"}}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with PrometheusProcess(require_tool("prometheus"), tmp_path / "prometheus.yml", tmp_path / "data") as process:
        yield process.url


def test_prometheus_target_test_passes_when_the_backend_is_scraped(prometheus: str):
    result = run_hook(
        "prometheus_target_test.py",
        PROMETHEUS_URL=prometheus,
        JOB=JOB,
        NAMESPACE="gridwatch",
        RULE_GROUPS="gridwatch-hook-test",
        TEST_TIMEOUT_SECONDS="60",
        POLL_SECONDS="1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert "1 target(s) up" in result.stdout


def test_prometheus_target_test_fails_for_a_job_nobody_scrapes(prometheus: str):
    result = run_hook(
        "prometheus_target_test.py",
        PROMETHEUS_URL=prometheus,
        JOB="not-gridwatch",
        NAMESPACE="gridwatch",
        TEST_TIMEOUT_SECONDS="3",
        POLL_SECONDS="1",
    )
    assert result.returncode == 1
    assert 'no target of up{job="not-gridwatch",namespace="gridwatch"} is up' in result.stderr


def test_prometheus_target_test_fails_when_the_rules_are_missing(prometheus: str):
    scraped = run_hook("prometheus_target_test.py", PROMETHEUS_URL=prometheus, JOB=JOB, POLL_SECONDS="1")
    assert scraped.returncode == 0, "the target is up: only the rules can be missing below"
    result = run_hook(
        "prometheus_target_test.py",
        PROMETHEUS_URL=prometheus,
        JOB=JOB,
        RULE_GROUPS="gridwatch-hook-test,gridwatch-missing",
        TEST_TIMEOUT_SECONDS="3",
        POLL_SECONDS="1",
    )
    assert result.returncode == 1
    assert "rule groups not loaded yet: ['gridwatch-missing']" in result.stderr
