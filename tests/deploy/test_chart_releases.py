"""Two releases in one cluster: the first with the bundled monitoring stack, a second in another namespace with
values-second-release.yaml, monitored by the first.

Cluster-scoped objects are where two releases collide (one name for the whole cluster): kube-prometheus-stack names
its ClusterRoles and admission webhooks from its fixed fullnameOverride, metrics-server registers the one APIService
v1beta1.metrics.k8s.io. The real subcharts cannot be downloaded here, so these tests put small stand-ins of them into
a copy of the chart (each renders a few cluster-scoped objects named the way its upstream chart names them) and keep
the `dependencies:` section, so real helm decides which subcharts a release renders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    CHART_DIR,
    JOB,
    NAMESPACE,
    RELEASE,
    Rendered,
    chart_copy,
    helm,
    pod_spec,
    render,
    selects,
    template_args,
    values_file,
)

SECOND_VALUES = yaml.safe_load((CHART_DIR / "values-second-release.yaml").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SECOND_RELEASE = "gridwatch-b"
SECOND_NAMESPACE = "gridwatch-b"

CLUSTER_SCOPED_KINDS = {
    "APIService",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
}
"""The built-in kinds of Kubernetes 1.37 that live outside namespaces (`kubectl api-resources --namespaced=false`)."""

STAND_INS = {
    "kube-prometheus-stack": """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .Values.fullnameOverride }}-operator
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {{ .Values.fullnameOverride }}-admission
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Values.fullnameOverride }}-operator
  namespace: {{ .Release.Namespace }}
""",
    "metrics-server": """\
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:{{ .Release.Name }}-metrics-server
""",
    "nats": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-nats-config
  namespace: {{ .Release.Namespace }}
""",
    "keda": """\
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.external.metrics.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: keda-operator
""",
}
"""What each stand-in renders: cluster-scoped objects named as upstream names them, and one namespaced object."""


@pytest.fixture(scope="module")
def with_subcharts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with its dependencies declared and stand-ins of both subcharts in charts/."""
    chart = chart_copy(tmp_path_factory.mktemp("releases"))
    shutil.copy2(CHART_DIR / "Chart.yaml", chart / "Chart.yaml")
    for dependency in yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]:
        stand_in = chart / "charts" / dependency["name"]
        (stand_in / "templates").mkdir(parents=True)
        metadata = {"apiVersion": "v2", "name": dependency["name"], "version": dependency["version"]}
        (stand_in / "Chart.yaml").write_text(yaml.safe_dump(metadata))
        (stand_in / "templates" / "cluster.yaml").write_text(STAND_INS[dependency["name"]])
    return chart


@pytest.fixture(scope="module")
def first(with_subcharts: Path) -> Rendered:
    return render(with_subcharts, {}, release=RELEASE, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def second(with_subcharts: Path) -> Rendered:
    return render(with_subcharts, SECOND_VALUES, release=SECOND_RELEASE, namespace=SECOND_NAMESPACE)


def cluster_scoped(objects: Rendered) -> set[tuple[str, str]]:
    return {(obj["kind"], obj["metadata"]["name"]) for obj in objects.objects if obj["kind"] in CLUSTER_SCOPED_KINDS}


def test_the_stand_ins_render_like_the_subcharts(first: Rendered, with_subcharts: Path):
    """The premise: with the defaults, a release brings cluster-scoped objects, and a second release installed the
    same way would claim the same names."""
    assert {kind for kind, _ in cluster_scoped(first)} == {
        "ClusterRole",
        "ValidatingWebhookConfiguration",
        "APIService",
    }
    naive_second = render(with_subcharts, {}, release=SECOND_RELEASE, namespace=SECOND_NAMESPACE)
    assert cluster_scoped(first) & cluster_scoped(naive_second) >= {
        ("ClusterRole", "gridwatch-stack-operator"),
        ("APIService", "v1beta1.metrics.k8s.io"),
    }


def test_the_second_release_renders_nothing_cluster_scoped(second: Rendered):
    assert cluster_scoped(second) == set()
    assert second.kinds().isdisjoint(CLUSTER_SCOPED_KINDS)
    for obj in second.objects:
        assert obj["metadata"]["namespace"] == SECOND_NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
    assert not [
        obj for obj in second.objects if obj["kind"] == "ServiceAccount" and "operator" in obj["metadata"]["name"]
    ]
    assert second.get("Deployment", f"{SECOND_RELEASE}-backend")
    assert second.get("HorizontalPodAutoscaler", f"{SECOND_RELEASE}-backend"), "served by the first's metrics API"


def test_the_second_release_ships_no_second_copy_of_rules_or_dashboards(second: Rendered):
    assert not second.of_kind("PrometheusRule"), "the first release's rules evaluate every namespace"
    label = VALUES["monitoring"]["dashboards"]["label"]
    assert not [cm for cm in second.of_kind("ConfigMap") if label in cm["metadata"].get("labels", {})]
    assert not second.of_kind("Secret"), "no Grafana admin Secret without a Grafana"


def stack_selectors(release: str) -> dict[str, Any]:
    """The selectors kube-prometheus-stack gives its Prometheus for the chart's values (templates/prometheus/
    prometheus.yaml): with serviceMonitorSelectorNilUsesHelmValues and no serviceMonitorSelector, matchLabels
    release=<its release>; without a serviceMonitorNamespaceSelector, {} (every namespace)."""
    spec = VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is True
    assert not spec.get("serviceMonitorSelector")
    return {
        "serviceMonitorSelector": {"matchLabels": {"release": release}},
        "serviceMonitorNamespaceSelector": spec.get("serviceMonitorNamespaceSelector") or {},
    }


def test_the_first_release_prometheus_selects_the_second_release_servicemonitor(first: Rendered, second: Rendered):
    selectors = stack_selectors(RELEASE)
    (monitor,) = second.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == RELEASE == SECOND_VALUES["monitoring"]["prometheusRelease"]
    assert selects(selectors["serviceMonitorSelector"]["matchLabels"], monitor["metadata"]["labels"])
    assert selectors["serviceMonitorNamespaceSelector"] == {}, "an empty selector: every namespace, gridwatch-b too"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [SECOND_NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}["job"] == JOB
    # The first release's own ServiceMonitor is selected the same way; a third Prometheus (release "other") is not.
    (own,) = first.of_kind("ServiceMonitor")
    assert selects(selectors["serviceMonitorSelector"]["matchLabels"], own["metadata"]["labels"])
    assert not selects(stack_selectors("other")["serviceMonitorSelector"]["matchLabels"], monitor["metadata"]["labels"])


def test_only_the_first_release_prometheus_reaches_the_second_backend(second: Rendered):
    policy = second.get("NetworkPolicy", f"{SECOND_RELEASE}-backend")
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"] if "namespaceSelector" in peer]
    assert peers == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": VALUES["networkPolicy"]["prometheus"]["podSelector"],
        }
    ]


def test_the_second_release_helm_test_asks_the_first_release_prometheus(first: Rendered, second: Rendered):
    def env(objects: Rendered, release: str) -> dict[str, str]:
        pod = objects.get("Pod", f"{release}-test-prometheus-target")
        return {e["name"]: e["value"] for e in pod_spec(pod)["containers"][0]["env"]}

    own, shared = env(first, RELEASE), env(second, SECOND_RELEASE)
    assert shared["PROMETHEUS_URL"] == own["PROMETHEUS_URL"], "values-second-release.yaml names the first's URL"
    assert shared["NAMESPACE"] == SECOND_NAMESPACE
    assert shared["JOB"] == own["JOB"] == JOB
    assert shared["RULE_GROUPS"] == own["RULE_GROUPS"] != "", "the first release's rules, loaded once"


def test_a_second_release_that_keeps_the_stack_is_refused(with_subcharts: Path, tmp_path: Path):
    keeps_stack = {**SECOND_VALUES, "kube-prometheus-stack": {"enabled": True}}
    result = helm(
        *template_args(
            with_subcharts,
            values_file(tmp_path, keeps_stack),
            release=SECOND_RELEASE,
            namespace=SECOND_NAMESPACE,
        ),
        check=False,
    )
    assert result.returncode != 0
    assert "set kube-prometheus-stack.enabled=false" in result.stderr


def test_a_label_named_release_is_refused_in_favour_of_prometheus_release(tmp_path: Path):
    chart = chart_copy(tmp_path)
    result = helm(
        *template_args(chart, values_file(tmp_path, {"monitoring": {"serviceMonitor": {"labels": {"release": "x"}}}})),
        check=False,
    )
    assert result.returncode != 0
    assert "set monitoring.prometheusRelease instead" in result.stderr


def test_the_second_release_notes_say_who_monitors_it(tmp_path: Path):
    chart = chart_copy(tmp_path)
    values = values_file(tmp_path, SECOND_VALUES)
    result = helm(
        "install", SECOND_RELEASE, str(chart), "-n", SECOND_NAMESPACE, "--dry-run=client", "--values", str(values)
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f'the Prometheus of release "{RELEASE}" scrapes this release' in notes
    assert "Prometheus scrape target" in notes, "its helm test asks that Prometheus"
    assert "port-forward svc/gridwatch-stack-prometheus" not in notes, "no stack of its own to forward to"
