"""checkov over everything this project ships to a cluster or a registry: the manifests the chart renders (every
value set of tests/deploy/support.py) and both Dockerfiles. Zero failed checks; every skipped check is suppressed in
the chart itself (a `checkov.io/skipN` annotation with its reason), never on the command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import VALUE_SETS, chart_copy, helm, template_args, values_file
from tests.support import ROOT, require_tool

SUPPRESSIONS_WITH_REASONS = {"CKV_K8S_43", "CKV_K8S_8", "CKV_K8S_9"}
"""What the chart suppresses: image digests (locally built images pushed by tag; set image.digest to pin) and
probes on the helm test pods (they run to completion and serve nothing)."""


def checkov(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [require_tool("checkov"), *args, "--output", "json", "--skip-download", "--soft-fail"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1, [r.get("check_type") for r in reports]
    return reports[0]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("scan")
    chart = chart_copy(workdir)
    out = workdir / "manifests"
    out.mkdir()
    sets = {
        **VALUE_SETS,
        "pinned-and-traced": {
            "backend": {"image": {"digest": "sha256:" + "a" * 64}},
            "ui": {"image": {"digest": "sha256:" + "b" * 64}},
            "tracing": {"enabled": True, "otlpEndpoint": "http://collector:4318"},
        },
    }
    for name, values in sets.items():
        rendered = helm(*template_args(chart, values_file(workdir, values, name))).stdout
        (out / f"{name}.yaml").write_text(rendered)
    return out


def test_rendered_manifests_pass_checkov(manifests: Path):
    report = checkov("--directory", str(manifests), "--framework", "kubernetes")
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 5 * len(list(manifests.glob("*.yaml")))
    assert summary["passed"] > 100
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_id"] in SUPPRESSIONS_WITH_REASONS, skipped["check_id"]
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, (
            f"{skipped['check_id']} skipped without a reason"
        )
    pinned = [c for c in report["results"]["skipped_checks"] if "pinned-and-traced" in c["file_path"]]
    assert "CKV_K8S_43" not in {c["check_id"] for c in pinned}, "a digest makes the image suppression unnecessary"


def test_dockerfiles_pass_checkov():
    dockerfiles = [str(ROOT / "docker" / name) for name in ("Dockerfile.backend", "Dockerfile.ui")]
    report = checkov("--file", dockerfiles[0], "--file", dockerfiles[1], "--framework", "dockerfile")
    failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["skipped"] == 0
    assert report["summary"]["resource_count"] == 2
    assert report["summary"]["passed"] > 50
