"""values-production.yaml beyond security (tests/deploy/test_chart_security.py) and alerting
(tests/deploy/test_chart_alertmanager.py): what a real cluster needs that a laptop kind cluster must not have.
These are upstream keys (kube-prometheus-stack, metrics-server) the umbrella passes on unrendered, so they are
checked as the values the subcharts receive: values.yaml with values-production.yaml over it, as Helm merges them."""

from __future__ import annotations

import re

import yaml

from tests.deploy.support import CHART_DIR, NAMESPACE, RELEASE, Rendered, merged

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
PRODUCTION_FILE = CHART_DIR / "values-production.yaml"
PRODUCTION = yaml.safe_load(PRODUCTION_FILE.read_text())
CONTROL_PLANE = ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy")
SLO_WINDOW_DAYS = 30
"""The window the SLOs are judged over (docs/runbook.md)."""


EFFECTIVE = merged(VALUES, PRODUCTION)
UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def size_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]+)", size).groups()
    return int(number) * UNITS[unit]


def days(duration: str) -> float:
    units = {"h": 1 / 24, "d": 1, "w": 7, "y": 365}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([hdwy])", duration))


def test_production_scrapes_the_control_plane_that_kind_cannot_serve():
    for component in CONTROL_PLANE:
        assert VALUES["kube-prometheus-stack"][component]["enabled"] is False, f"{component}: off on kind"
        assert EFFECTIVE["kube-prometheus-stack"][component]["enabled"] is True, f"{component}: on in production"
    text = PRODUCTION_FILE.read_text()
    for caveat in ("GKE, EKS, AKS", "--bind-address", "kube-proxy"):
        assert caveat in text, "the file says where to turn them back off"


def test_production_keeps_a_whole_slo_window_on_a_volume():
    spec = EFFECTIVE["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]
    assert days(spec["retention"]) > SLO_WINDOW_DAYS
    assert days(VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]["retention"]) < SLO_WINDOW_DAYS
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    requested = size_bytes(claim["resources"]["requests"]["storage"])
    assert requested >= 1.1 * size_bytes(spec["retentionSize"]), "room for the WAL and compaction beyond the cap"
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]["storageSpec"] == {}, "kind: an emptyDir"


def test_production_leaves_the_metrics_api_to_the_cluster_and_kind_keeps_its_own():
    assert VALUES["metrics-server"]["enabled"] is True
    assert EFFECTIVE["metrics-server"]["enabled"] is False
    assert "--kubelet-insecure-tls" not in EFFECTIVE["metrics-server"]["args"], "should someone turn it back on"
    comment = PRODUCTION_FILE.read_text().split("\nmetrics-server:", 1)[1]
    assert "v1beta1.metrics.k8s.io" in comment, "says why: the APIService exists and the install is refused"


def test_production_admits_only_the_bundled_prometheus_namespace(rendered: dict[str, Rendered]):
    policy = rendered["production"].get("NetworkPolicy", f"{RELEASE}-backend")
    selectors = [peer.get("namespaceSelector") for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}} in selectors
    assert {} not in selectors, "no peer from every namespace"
