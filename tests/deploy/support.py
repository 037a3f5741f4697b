"""Rendering the Helm chart in tests, with the real helm binary.

The upstream charts (kube-prometheus-stack, metrics-server) cannot be downloaded here (no chart repositories on
the network), and `helm template` refuses a chart whose declared dependencies are missing from charts/. So every
render works on a temporary copy of helm/gridwatch with the `dependencies:` section taken out of Chart.yaml: what
is rendered and checked is the umbrella's own templates, exactly as they are, with the subcharts' values sections
still in values.yaml (so the templates that read `kube-prometheus-stack.enabled` and friends see the real values).
The copy resolves the chart's `dashboards` and `rules` symlinks into real folders, as `helm package` does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT, require_tool

CHART_DIR = ROOT / "helm" / "gridwatch"
KUBERNETES_VERSION = "1.36.1"
"""The Kubernetes version of the node image ctlptl.yaml pins (kind v0.32.0's kindest/node:v1.36.1). Rendering
(`--kube-version`) and schema validation (kubernetes-validate's 1.36 schemas) both target it."""

RELEASE = "gridwatch"
NAMESPACE = "gridwatch"
JOB = "gridwatch"
"""The job label of the backend's series: fixed in the chart (gridwatch.jobName), because every rule and dashboard
selects it."""


def merged(base: Any, overlay: Any) -> Any:
    """Helm's merge of a values file over another: maps key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {key: merged(base.get(key), overlay[key]) if key in overlay else base[key] for key in base | overlay}
    return overlay


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring-disabled": {
        "kube-prometheus-stack": {"enabled": False},
        "metrics-server": {"enabled": False},
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboards": {"enabled": False},
        },
    },
    "models-on-pvc": {"backend": {"modelStorage": {"persistence": {"enabled": True, "size": "2Gi"}}}},
    "three-fixed-replicas": {"backend": {"autoscaling": {"enabled": False}, "replicaCount": 3}},
    "training": {
        "backend": {"modelStorage": {"persistence": {"enabled": True}}},
        "training": {
            "job": {"enabled": True},
            "cronJob": {"enabled": True},
            "data": {"existingClaim": "gridwatch-data", "file": "feeder.csv"},
        },
    },
    "production": yaml.safe_load((CHART_DIR / "values-production.yaml").read_text()),
    "production-kind": merged(
        yaml.safe_load((CHART_DIR / "values-production.yaml").read_text()),
        yaml.safe_load((CHART_DIR / "values-production-kind.yaml").read_text()),
    ),
    "second-release": yaml.safe_load((CHART_DIR / "values-second-release.yaml").read_text()),
    "stream": yaml.safe_load((CHART_DIR / "values-stream.yaml").read_text()),
}
"""The value sets every structural test renders: the defaults, a cluster that already has its monitoring, models on
a PersistentVolumeClaim, a fixed replica count without the HPA, the training Job and CronJob on that claim
(tests/deploy/test_chart_training.py checks them in detail), the chart's values-production.yaml (API key from an
existing Secret, the monitoring stack as a release of its own), values-production.yaml with
values-production-kind.yaml over it (the same on the local kind cluster), values-second-release.yaml (here under the
default release name; tests/deploy/test_chart_releases.py renders it as a second release in its own namespace) and
values-stream.yaml (the stream consumer with the bundled NATS and KEDA, as at a first install: KEDA's CRDs not yet
there, so no ScaledObject; tests/deploy/test_chart_stream.py renders it with them too)."""

API_KEY = "s3cret-from-values"
EXISTING_SECRET = {"apiKey": {"enabled": True, "existingSecret": "ops-api-key", "secretKey": "token"}}
CHART_OWNED_SECRET = {"apiKey": {"enabled": True, "value": API_KEY}}
API_KEY_VALUE_SETS: dict[str, dict[str, Any]] = {"existing-secret": EXISTING_SECRET, "chart-owned": CHART_OWNED_SECRET}
"""The two ways to turn the API key on: the user's own Secret, or one the chart makes from a value."""

NAMED_VALUES: dict[str, dict[str, Any]] = {**VALUE_SETS, **API_KEY_VALUE_SETS}
"""Every value set a test renders by name through the ``rendered`` fixture (tests/deploy/conftest.py)."""


def chart_copy(destination: Path, *, dashboards: Path | None = None, rules: Path | None = None) -> Path:
    """A renderable copy of the chart under ``destination``: dependencies removed, symlinks resolved.

    ``dashboards`` / ``rules`` replace the contents of the top-level folders (for tests of the wiring itself).
    """
    chart = destination / "gridwatch"
    shutil.copytree(CHART_DIR, chart, symlinks=False, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    chart_yaml = chart / "Chart.yaml"
    metadata = yaml.safe_load(chart_yaml.read_text())
    metadata.pop("dependencies", None)
    chart_yaml.write_text(yaml.safe_dump(metadata, sort_keys=False))
    for name, source in (("dashboards", dashboards), ("rules", rules)):
        if source is not None:
            shutil.rmtree(chart / name)
            shutil.copytree(source, chart / name)
    return chart


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [require_tool("helm"), *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def values_file(directory: Path, values: dict[str, Any], name: str = "values") -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def template_args(
    chart: Path, values: Path | None, *, release: str = RELEASE, namespace: str = NAMESPACE, extra: Iterable[str] = ()
) -> list[str]:
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBERNETES_VERSION]
    if values is not None:
        args += ["--values", str(values)]
    return [*args, *extra]


@dataclass
class Rendered:
    """The objects of one `helm template`, with lookups by kind and name."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}

    def kinds(self) -> set[str]:
        return {obj["kind"] for obj in self.objects}


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> Rendered:
    values_path = values_file(chart.parent, values, name=f"values-{release}") if values else None
    output = helm(*template_args(chart, values_path, release=release, namespace=namespace, extra=extra)).stdout
    return Rendered([doc for doc in yaml.safe_load_all(output) if doc])


WORKLOAD_KINDS = ("Deployment", "Job", "CronJob", "Pod")
"""Every kind of object the chart runs pods from."""


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod (metadata and spec) a Deployment, Job, CronJob or Pod runs."""
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return pod_template(obj)["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return pod_template(obj)["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A matchLabels selector matches these labels (and is not empty, which would match everything)."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def schema_refusal(chart: Path, option: str, setting: str) -> str:
    """helm's complaint about one setting (``--set`` or ``--set-json``) that values.schema.json must refuse."""
    result = helm(*template_args(chart, None, extra=[option, setting]), check=False)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "schema" in result.stderr
    return result.stderr


def refusal(chart: Path, values: dict[str, Any]) -> str:
    """helm's complaint about a value set that rendering (a template's ``fail``) must refuse."""
    result = helm(*template_args(chart, values_file(chart.parent, values, "refused")), check=False)
    assert result.returncode != 0, "rendering should have been refused"
    return result.stderr
