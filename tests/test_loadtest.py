"""scripts/loadtest.py, the load behind `make kind-load`: bounded, loopback only, and honest about failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT, ServerProcess, free_port

SCRIPT = ROOT / "scripts" / "loadtest.py"


def run_load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://192.168.1.10", "http://example.invalid"])
def test_refuses_anything_but_loopback(url: str):
    result = run_load("--url", url, "--duration", "1")
    assert result.returncode == 2
    assert "is not a loopback address" in result.stderr


def test_refuses_unbounded_runs():
    assert run_load("--duration", "3600").returncode == 2
    assert run_load("--concurrency", "500").returncode == 2


@pytest.mark.slow
def test_scores_simulated_batches_against_a_real_server(server: ServerProcess):
    port = server.url.rsplit(":", 1)[1]
    result = run_load(
        "--url", f"http://localhost:{port}", "--max-requests", "40", "--batch-size", "50", "--anomaly-rate", "0.1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == 40
    assert summary["failed"] == 0
    assert summary["statuses"] == {"200": 40}
    assert summary["readings_scored"] == 40 * 50
    assert 0 < summary["readings_flagged"] < summary["readings_scored"]
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_reports_failure_when_nothing_answers():
    result = run_load("--url", f"http://127.0.0.1:{free_port()}", "--max-requests", "5")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["requests"] == 5
    assert summary["failed"] == 5
