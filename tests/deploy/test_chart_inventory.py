"""What the chart runs, read from its render (.ci/chart_inventory.py): the images `make kind-images` pulls and loads
into kind, the laptop budget, and requests and limits on every container.

The upstream charts cannot be fetched here (tests/deploy/support.py), so a stand-in kube-prometheus-stack renders
what the real one does where images hide: a Prometheus and an Alertmanager object (the operator makes their pods),
the operator's `--prometheus-config-reloader=` argument, a DaemonSet, hook Jobs and a `helm test` Pod. The real
charts' containers are covered by the upstream keys values.yaml sets (test below), checked against a full render
with the real upstream charts when they were set (docs/deploy.md, "The laptop budget")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import CHART_DIR, NAMED_VALUES, RELEASE, chart_copy, helm, template_args, values_file
from tests.support import ROOT

INVENTORY = ROOT / ".ci" / "chart_inventory.py"
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
REGISTRY = "localhost:5005/"

STACK_STAND_IN = """\
apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata:
  name: gridwatch-stack-prometheus
spec:
  image: quay.io/prometheus/prometheus:v3.14.0-distroless
  resources: {requests: {cpu: 100m, memory: 400Mi}, limits: {cpu: "1", memory: 1Gi}}
---
apiVersion: monitoring.coreos.com/v1
kind: Alertmanager
metadata:
  name: gridwatch-stack-alertmanager
spec:
  image: quay.io/prometheus/alertmanager:v0.34.0
  replicas: 2
  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 100m, memory: 128Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gridwatch-stack-operator
spec:
  template:
    spec:
      containers:
        - name: kube-prometheus-stack
          image: quay.io/prometheus-operator/prometheus-operator:v0.93.1
          args:
            - --prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.93.1
            - --config-reloader-cpu-request=10m
            - --config-reloader-cpu-limit=100m
            - --config-reloader-memory-request=32Mi
            - --config-reloader-memory-limit=64Mi
          resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 200m, memory: 256Mi}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: gridwatch-prometheus-node-exporter
spec:
  template:
    spec:
      containers:
        - name: node-exporter
          image: quay.io/prometheus/node-exporter:v1.12.1-distroless
          resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 200m, memory: 64Mi}}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: gridwatch-stack-admission-create
  annotations: {helm.sh/hook: pre-install}
spec:
  template:
    spec:
      initContainers:
        - name: wait
          image: docker.io/library/busybox:1.37
          resources: {requests: {cpu: 10m, memory: 8Mi}, limits: {cpu: 10m, memory: 8Mi}}
      containers:
        - name: create
          image: ghcr.io/jkroepke/kube-webhook-certgen:1.8.7
---
apiVersion: v1
kind: Pod
metadata:
  name: gridwatch-grafana-test
  annotations: {helm.sh/hook: test}
spec:
  containers:
    - name: gridwatch-test
      image: docker.io/bats/bats:1.14.0
      resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 100m, memory: 64Mi}}
"""
"""What the stand-in renders: images in every place the real stack keeps them; the certgen Job without resources."""

STAND_IN_IMAGES = {
    "quay.io/prometheus/prometheus:v3.14.0-distroless",
    "quay.io/prometheus/alertmanager:v0.34.0",
    "quay.io/prometheus-operator/prometheus-operator:v0.93.1",
    "quay.io/prometheus-operator/prometheus-config-reloader:v0.93.1",
    "quay.io/prometheus/node-exporter:v1.12.1-distroless",
    "docker.io/library/busybox:1.37",
    "ghcr.io/jkroepke/kube-webhook-certgen:1.8.7",
    "docker.io/bats/bats:1.14.0",
}


def inventory(command: list[str], manifest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INVENTORY), *command], input=manifest, capture_output=True, text=True, check=False
    )


def rendered_text(chart: Path, values: dict[str, Any] | None = None) -> str:
    return helm(*template_args(chart, values_file(chart.parent, values or {}))).stdout


@pytest.fixture(scope="module")
def with_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart with kube-prometheus-stack declared and the stand-in above as its package."""
    chart = chart_copy(tmp_path_factory.mktemp("inventory"))
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    metadata["dependencies"] = [
        {"name": "kube-prometheus-stack", "version": "0.0.1", "condition": "kube-prometheus-stack.enabled"}
    ]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    stand_in = chart / "charts" / "kube-prometheus-stack"
    (stand_in / "templates").mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": "kube-prometheus-stack", "version": "0.0.1"})
    )
    (stand_in / "templates" / "stack.yaml").write_text(STACK_STAND_IN)
    return chart


def test_the_image_list_is_read_from_the_render_subcharts_included(with_stack: Path):
    result = inventory(["images"], rendered_text(with_stack, {"backend": {"image": {"tag": "abc123"}}}))
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert listed == sorted(set(listed)), "once each, sorted"
    assert set(listed) == STAND_IN_IMAGES | {f"{REGISTRY}gridwatch-backend:abc123", f"{REGISTRY}gridwatch-ui:0.1.0"}


def test_switching_a_component_off_takes_its_images_off_the_list(with_stack: Path):
    result = inventory(["images"], rendered_text(with_stack, NAMED_VALUES["monitoring-disabled"]))
    assert not set(result.stdout.split()) & STAND_IN_IMAGES


def test_the_project_images_are_left_to_the_clusters_registry(with_stack: Path):
    result = inventory(["images", "--exclude", REGISTRY], rendered_text(with_stack))
    assert set(result.stdout.split()) == STAND_IN_IMAGES


def test_the_stream_render_lists_the_consumers_image(tmp_path: Path):
    chart = chart_copy(tmp_path)
    listed = inventory(["images"], rendered_text(chart, NAMED_VALUES["stream"])).stdout.split()
    assert f"{REGISTRY}gridwatch-backend:0.1.0" in listed
    assert not [image for image in listed if "gridwatch-backend" in image and not image.endswith(":0.1.0")]


def test_make_kind_images_pipes_the_render_into_the_inventory_then_pulls_and_loads():
    flat = re.sub(r"\\\n\s*", " ", make_n("kind-images", "IMAGE_TAG=abc123"))
    (render_line,) = [line for line in flat.splitlines() if " template " in line]
    assert re.search(r"template gridwatch helm/gridwatch -n gridwatch .*--set backend.image.tag=abc123", render_line)
    assert ".ci/chart_inventory.py images --exclude localhost:5005/" in render_line
    steps = [
        "dependency build helm/gridwatch",
        ".ci/chart_inventory.py images",
        "docker pull",
        "kind load docker-image --name gridwatch",
    ]
    positions = [flat.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), dict(zip(steps, positions, strict=True))
    archive = make_n("kind-images", "IMAGES_ARCHIVE=room.tar")
    assert "kind load image-archive --name gridwatch room.tar" in archive
    assert "docker pull" not in archive, "nothing from the internet when the room's archive is there"
    save = make_n("kind-images-save", "IMAGES_ARCHIVE=room.tar")
    assert save.index("docker pull") < save.index("docker save -o room.tar")
    values = make_n("kind-images", "CHART_VALUES=-f helm/gridwatch/values-stream.yaml")
    assert "-f helm/gridwatch/values-stream.yaml" in values


def test_saving_without_an_archive_name_says_how():
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "sync", "-o", "helm-deps", "kind-images-save"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "make kind-images-save IMAGES_ARCHIVE=" in result.stdout


def make_n(*arguments: str) -> str:
    command = ["make", "-n", "-o", "sync", *arguments]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- requests and limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(NAMED_VALUES))
def test_every_container_of_the_chart_has_requests_and_limits(value_set: str, tmp_path: Path):
    """Each container, init containers and `helm test` pods included, asks for CPU and memory and is capped."""
    chart = chart_copy(tmp_path)
    result = inventory(["check"], rendered_text(chart, NAMED_VALUES[value_set]))
    assert result.returncode == 0, result.stdout


def test_the_check_names_a_container_without_them(with_stack: Path):
    result = inventory(["check"], rendered_text(with_stack))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "Job/gridwatch-stack-admission-create create: requests and limits incomplete: {}"
    ]


UPSTREAM_RESOURCES = {
    ("kube-prometheus-stack", "prometheus", "prometheusSpec", "resources"): "Prometheus",
    ("kube-prometheus-stack", "alertmanager", "alertmanagerSpec", "resources"): "Alertmanager",
    ("kube-prometheus-stack", "prometheusOperator", "resources"): "the operator",
    ("kube-prometheus-stack", "prometheusOperator", "prometheusConfigReloader", "resources"): "config reloaders",
    ("kube-prometheus-stack", "prometheusOperator", "admissionWebhooks", "patch", "resources"): "certgen hook Jobs",
    ("kube-prometheus-stack", "kube-state-metrics", "resources"): "kube-state-metrics",
    ("kube-prometheus-stack", "prometheus-node-exporter", "resources"): "node-exporter",
    ("kube-prometheus-stack", "grafana", "resources"): "Grafana",
    ("kube-prometheus-stack", "grafana", "sidecar", "resources"): "Grafana's two sidecars",
    ("kube-prometheus-stack", "grafana", "testFramework", "resources"): "Grafana's helm test pod",
    ("metrics-server", "resources"): "metrics-server",
    ("nats", "container", "merge", "resources"): "the NATS server",
    ("nats", "reloader", "merge", "resources"): "its config reloader",
    ("nats", "promExporter", "merge", "resources"): "its Prometheus exporter",
    ("nats", "natsBox", "container", "merge", "resources"): "nats-box",
    ("keda", "resources", "operator"): "KEDA's operator",
    ("keda", "resources", "metricServer"): "KEDA's metrics API server",
    ("keda", "resources", "webhooks"): "KEDA's admission webhooks",
}
"""Every container the upstream charts run with the defaults (and values-stream.yaml), by the key that sizes it:
a full render with the real charts (kube-prometheus-stack 88.5, grafana 12.11, kube-state-metrics 8.4,
prometheus-node-exporter 4.56, metrics-server 3.13, nats 2.14.2, keda 2.20.2) had each of them, and no other,
without requests and limits before these keys were set."""


@pytest.mark.parametrize("path", sorted(UPSTREAM_RESOURCES), ids=".".join)
def test_values_size_every_upstream_container(path: tuple[str, ...]):
    resources = VALUES
    for key in path:
        resources = resources[key]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, f"{UPSTREAM_RESOURCES[path]}: {kind}"


def test_the_budget_counts_each_workload_at_its_most_replicas(with_stack: Path):
    """The backend at its HPA's maximum, the node-exporter on each node, the Alertmanager at its replicas; the
    hook Jobs and test pods apart, since they come and go."""
    result = inventory(["budget", "--nodes", "3"], rendered_text(with_stack))
    assert result.returncode == 0, result.stderr
    running, finishing = result.stdout.split("\n\n")
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in running.splitlines()[2:]]
    rows = {row[0]: row for row in cells}
    backend = VALUES["backend"]
    most = backend["autoscaling"]["maxReplicas"]
    assert rows[f"Deployment/{RELEASE}-backend"][1] == str(most)
    cpu_limit = float(backend["resources"]["limits"]["cpu"]) * most
    assert rows[f"Deployment/{RELEASE}-backend"][3] == f"{cpu_limit:.2f}"
    assert rows["DaemonSet/gridwatch-prometheus-node-exporter"][1] == "3"
    alertmanager = rows["Alertmanager/gridwatch-stack-alertmanager"]
    assert alertmanager[1] == "2"
    assert alertmanager[5] == f"{(128 + 64) * 2} MiB", "its own memory limit and the reloader's, twice"
    assert "Pod/gridwatch-grafana-test" in finishing
    assert "Job/gridwatch-stack-admission-create" in finishing
    assert "gridwatch-stack-admission-create" not in running
