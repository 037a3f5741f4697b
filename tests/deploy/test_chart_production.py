"""Production beyond security (tests/deploy/test_chart_security.py) and alerting
(tests/deploy/test_chart_alertmanager.py): what a real cluster needs that a laptop kind cluster must not have, and
what pages correctly there.

Production is two releases: GridWatch with values-production.yaml (its bundled kube-prometheus-stack off), and the
monitoring stack as a release of its own in namespace "monitoring", installed from the upstream chart with
values-stack-production.yaml (upstream keys at the top level). Each has a kind overlay, layered after it. The upstream
keys are passed on unrendered (the upstream charts cannot be downloaded here), so they are checked as the values the
charts receive: a values file with its overlay over it, as Helm merges them. The GridWatch release is rendered."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Rendered,
    helm,
    merged,
    pod_spec,
    render,
    template_args,
)
from tests.deploy.test_chart_inventory import UPSTREAM_RESOURCES
from tests.support import ROOT

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
PRODUCTION_FILE = CHART_DIR / "values-production.yaml"
PRODUCTION = yaml.safe_load(PRODUCTION_FILE.read_text())
PRODUCTION_KIND_FILE = CHART_DIR / "values-production-kind.yaml"
PRODUCTION_KIND = yaml.safe_load(PRODUCTION_KIND_FILE.read_text())
STACK_FILE = CHART_DIR / "values-stack-production.yaml"
STACK = yaml.safe_load(STACK_FILE.read_text())
STACK_KIND_FILE = CHART_DIR / "values-stack-production-kind.yaml"
STACK_KIND = yaml.safe_load(STACK_KIND_FILE.read_text())
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

STACK_RELEASE = "monitoring"
STACK_NAMESPACE = "monitoring"
"""The stack release's name and namespace, as values-stack-production.yaml's header installs it."""

MANAGED_CONTROL_PLANE = ("kubeControllerManager", "kubeScheduler", "kubeEtcd")
"""The scrapers of what a managed control plane hides: each pages its *Down alert at once where it cannot scrape."""
CONTROL_PLANE = (*MANAGED_CONTROL_PLANE, "kubeProxy")
UPSTREAM_TOP_LEVEL_KEYS = {
    "nameOverride", "namespaceOverride", "kubeTargetVersionOverride", "kubeVersionOverride", "fullnameOverride",
    "commonLabels", "crds", "customRules", "defaultRules", "additionalPrometheusRulesMap", "global",
    "windowsMonitoring", "prometheus-windows-exporter", "alertmanager", "grafana", "kubernetesServiceMonitors",
    "kubeApiServer", "kubelet", "kubeControllerManager", "coreDns", "kubeDns", "kubeEtcd", "kubeScheduler",
    "kubeProxy", "kubeStateMetrics", "kube-state-metrics", "nodeExporter", "prometheus-node-exporter",
    "prometheusOperator", "prometheus", "thanosRuler", "cleanPrometheusOperatorObjectNames", "extraManifests",
}  # fmt: skip
"""The top-level keys of kube-prometheus-stack 88.x's values.yaml. Its control-plane scrapers default to enabled."""

SLO_WINDOW_DAYS = 30
"""The window the SLOs are judged over (docs/runbook.md)."""

STACK_EFFECTIVE = STACK
"""The stack release's values as far as they are checked here (the upstream defaults beneath are not available)."""
STACK_ON_KIND = merged(STACK, STACK_KIND)
PRODUCTION_ON_KIND = merged(PRODUCTION, PRODUCTION_KIND)
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
    match = re.fullmatch(r"(\d+)([A-Za-z]+)", size)
    assert match, size
    number, unit = match.groups()
    return int(number) * UNITS[unit]


def days(duration: str) -> float:
    units = {"h": 1 / 24, "d": 1, "w": 7, "y": 365}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([hdwy])", duration))


def header(path: Path) -> str:
    """A values file's leading comment: everything before its first key."""
    text = path.read_text()
    first_key = re.search(r"^[A-Za-z]", text, re.MULTILINE)
    assert first_key, path
    return text[: first_key.start()]


def commands(text: str) -> list[str]:
    """The shell commands of a text (comment marks and continuation lines joined), one string each."""
    lines = [re.sub(r"^\s*#?\s?", "", line).rstrip() for line in text.splitlines()]
    joined, current = [], ""
    for line in lines:
        current = f"{current} {line.strip()}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        joined.append(re.sub(r"\s+#\s.*$", "", current).strip())
        current = ""
    return [line for line in joined if re.match(r"(kubectl|helm|make) |TAG=", line)]


# --- 1. the control-plane scrapers page only where there is something to scrape ------------------------------------


def test_production_does_not_scrape_a_control_plane_that_managed_clusters_hide():
    """On GKE, EKS or AKS the controller manager, scheduler and etcd cannot be scraped: on by default, their *Down
    alerts page at once. The upstream chart turns them on, so the stack release must say false itself."""
    assert set(STACK) <= UPSTREAM_TOP_LEVEL_KEYS, "upstream keys at the top level, no kube-prometheus-stack: prefix"
    for component in MANAGED_CONTROL_PLANE:
        assert STACK[component] == {"enabled": False}, f"{component}: off in production (upstream turns it on)"
        assert VALUES["kube-prometheus-stack"][component]["enabled"] is False, f"{component}: off on kind"
    assert STACK["kubeProxy"]["enabled"] is True, "kube-proxy runs on the nodes: watched in production"
    assert PRODUCTION["kube-prometheus-stack"] == {"enabled": False}, "the GridWatch release scrapes no control plane"
    text = STACK_FILE.read_text()
    for how_to_opt_in in ("GKE, EKS, AKS", "--bind-address", "--listen-metrics-urls", "metricsBindAddress"):
        assert how_to_opt_in in text, "the file says how a self-managed cluster opts in"


def test_on_kind_no_control_plane_scraper_is_left_to_fail():
    """kind binds every control-plane component's metrics, kube-proxy's too, to 127.0.0.1."""
    for component in CONTROL_PLANE:
        assert STACK_ON_KIND[component]["enabled"] is False, f"{component}: off on kind"
    assert set(STACK_KIND) <= UPSTREAM_TOP_LEVEL_KEYS


# --- 2. the monitoring stack is its own release, in its own namespace ----------------------------------------------


def test_the_production_release_brings_no_stack_and_plugs_into_the_stack_release(rendered: dict[str, Rendered]):
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    (stack,) = [dep for dep in chart["dependencies"] if dep["name"] == "kube-prometheus-stack"]
    assert stack["condition"] == "kube-prometheus-stack.enabled", "the switch that leaves the subchart out"
    assert PRODUCTION["kube-prometheus-stack"]["enabled"] is False
    objects = rendered["production"]
    assert "gridwatch-grafana-admin" not in objects.names("Secret"), "the stack release's Grafana has its own"
    assert not [obj for obj in objects.objects if obj["metadata"]["name"].startswith("gridwatch-stack")]
    assert STACK["fullnameOverride"] == STACK_RELEASE
    assert PRODUCTION["tests"]["prometheusUrl"] == f"http://{STACK_RELEASE}-prometheus.{STACK_NAMESPACE}.svc:9090"
    test_pod = objects.get("Pod", f"{RELEASE}-test-prometheus-target")
    assert STACK_NAMESPACE in yaml.safe_dump(test_pod), "helm test asks the stack release's Prometheus"


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only, as the stack file uses) selects these labels; empty selects nothing here."""
    assert set(selector) == {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_the_stack_release_selects_the_production_releases_servicemonitor_and_rules(rendered: dict[str, Rendered]):
    spec = STACK["prometheus"]["prometheusSpec"]
    objects = rendered["production"]
    for kind, selector, namespaces in (
        ("ServiceMonitor", "serviceMonitorSelector", "serviceMonitorNamespaceSelector"),
        ("PrometheusRule", "ruleSelector", "ruleNamespaceSelector"),
    ):
        (obj,) = objects.of_kind(kind)
        assert matches(spec[selector], obj["metadata"]["labels"]), f"{kind} not selected by {selector}"
        assert spec[namespaces] == {}, f"{namespaces}: every namespace, {NAMESPACE} among them"
        assert obj["metadata"]["labels"]["release"] == STACK_RELEASE
    assert spec["serviceMonitorSelector"]["matchLabels"] == {"release": STACK_RELEASE}, (
        "the stack labels its own ServiceMonitors release=<its release name>: the selector keeps them too"
    )
    install = [line for line in commands(header(STACK_FILE)) if line.startswith("helm upgrade --install")]
    assert install
    assert all(f" {STACK_RELEASE} " in f"{line} " for line in install), "installed under that name"
    assert all(f"-n {STACK_NAMESPACE}" in line for line in install)


def test_the_stack_releases_grafana_finds_the_production_dashboards(rendered: dict[str, Rendered]):
    sidecar = STACK["grafana"]["sidecar"]["dashboards"]
    dashboards = VALUES["monitoring"]["dashboards"]
    assert sidecar["searchNamespace"] == "ALL", "the dashboards live in namespace gridwatch"
    config_maps = [
        obj for obj in rendered["production"].of_kind("ConfigMap") if dashboards["label"] in obj["metadata"]["labels"]
    ]
    assert config_maps
    for obj in config_maps:
        assert obj["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
        assert sidecar["folderAnnotation"] in obj["metadata"]["annotations"]
    assert (
        STACK["grafana"]["sidecar"]["datasources"]["uid"]
        == VALUES["kube-prometheus-stack"]["grafana"]["sidecar"]["datasources"]["uid"]
    ), "the uid the dashboards reference"
    admin = STACK["grafana"]["admin"]
    assert admin["existingSecret"] == PRODUCTION["grafanaAdmin"]["secretName"]
    assert f"kubectl -n {STACK_NAMESPACE} create secret generic {admin['existingSecret']}" in STACK_FILE.read_text()


def test_production_admits_prometheus_only_from_the_stack_namespace(rendered: dict[str, Rendered]):
    assert PRODUCTION["networkPolicy"]["prometheus"]["namespace"] == STACK_NAMESPACE
    for value_set in ("production", "production-kind"):
        policy = rendered[value_set].get("NetworkPolicy", f"{RELEASE}-backend")
        selectors = [peer.get("namespaceSelector") for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        assert {"matchLabels": {"kubernetes.io/metadata.name": STACK_NAMESPACE}} in selectors, value_set
        assert {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}} not in selectors, "not its own namespace"
        assert {} not in selectors, "no peer from every namespace"


def test_node_exporters_namespace_is_privileged_and_gridwatchs_restricted():
    """node-exporter needs hostNetwork, hostPID and hostPath, which restricted and baseline both refuse."""
    assert STACK["nodeExporter"]["enabled"] is True
    for path in (STACK_FILE, PRODUCTION_KIND_FILE):
        lines = commands(header(path))
        assert f"kubectl create namespace {STACK_NAMESPACE}" in lines, path.name
        assert f"kubectl label namespace {STACK_NAMESPACE} pod-security.kubernetes.io/enforce=privileged" in lines
    for path in (PRODUCTION_FILE, PRODUCTION_KIND_FILE):
        lines = commands(header(path))
        assert f"kubectl label namespace {NAMESPACE} pod-security.kubernetes.io/enforce=restricted" in lines


def test_production_pods_meet_the_restricted_pod_security_level(rendered: dict[str, Rendered]):
    """What `enforce=restricted` on namespace gridwatch asks of every pod the production release runs."""
    workloads = [obj for obj in rendered["production"].objects if obj["kind"] in ("Deployment", "Pod")]
    assert workloads
    for obj in workloads:
        spec = pod_spec(obj)
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
        assert not spec.get("hostIPC")
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v]
        for container in spec["containers"] + spec.get("initContainers", []):
            context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") or context.get("runAsUser", 0) > 0, obj["metadata"]["name"]
            assert context.get("allowPrivilegeEscalation") is False, obj["metadata"]["name"]
            assert context["capabilities"]["drop"] == ["ALL"], obj["metadata"]["name"]
            assert context.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")


def test_production_keeps_a_whole_slo_window_on_a_volume():
    spec = STACK_EFFECTIVE["prometheus"]["prometheusSpec"]
    assert days(spec["retention"]) > SLO_WINDOW_DAYS
    assert days(VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]["retention"]) < SLO_WINDOW_DAYS
    for name, values in (("production", STACK_EFFECTIVE), ("kind", STACK_ON_KIND)):
        spec = values["prometheus"]["prometheusSpec"]
        claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
        requested = size_bytes(claim["resources"]["requests"]["storage"])
        assert requested >= 1.1 * size_bytes(spec["retentionSize"]), f"{name}: room for the WAL and compaction"
        assert claim["accessModes"] == ["ReadWriteOnce"]
    assert VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]["storageSpec"] == {}, "kind: an emptyDir"


# --- 3. silences survive a restart -----------------------------------------------------------------------------------


def test_alertmanager_is_replicated_on_volumes_under_a_disruption_budget():
    for name, values in (("production", STACK_EFFECTIVE), ("kind", STACK_ON_KIND)):
        alertmanager = values["alertmanager"]
        spec = alertmanager["alertmanagerSpec"]
        assert spec["replicas"] >= 2, f"{name}: a restart or a drain leaves one replica holding the silences"
        claim = spec["storage"]["volumeClaimTemplate"]["spec"]
        assert claim["accessModes"] == ["ReadWriteOnce"], name
        assert claim["resources"]["requests"]["storage"], name
        budget = alertmanager["podDisruptionBudget"]
        assert budget["enabled"] is True, f"{name}: a drain takes one replica at a time"
        assert 1 <= budget["minAvailable"] < spec["replicas"], f"{name}: keeps one, lets one go"
        assert "maxUnavailable" not in budget, "one of the two, as upstream renders either"
    assert (
        STACK_ON_KIND["alertmanager"]["alertmanagerSpec"]["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"]
        == "standard"
    )


# --- 4. the runbook links point at your copy -----------------------------------------------------------------------


def test_production_lists_the_runbook_url_among_the_values_to_adapt(rendered: dict[str, Rendered]):
    url = PRODUCTION["monitoring"]["prometheusRule"]["runbookBaseUrl"]
    assert url != VALUES["monitoring"]["prometheusRule"]["runbookBaseUrl"], "not the upstream project's copy"
    assert re.fullmatch(r"https://[a-z.]+\.example\.org/\S+/docs/runbook\.md", url), "a placeholder like the others"
    adapt = header(PRODUCTION_FILE).split("Adapt to your site", 1)[1]
    assert "monitoring.prometheusRule.runbookBaseUrl" in adapt
    (rule,) = rendered["production"].of_kind("PrometheusRule")
    links = [
        r["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "runbook_url" in r.get("annotations", {})
    ]
    assert links
    assert all(link.startswith(f"{url}#") for link in links)


# --- 5. production is not for kind; the kind overlay is ------------------------------------------------------------


def test_production_is_marked_not_for_kind_and_its_overlay_is(rendered: dict[str, Rendered]):
    persistence = PRODUCTION["backend"]["modelStorage"]["persistence"]
    assert persistence["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share the models"
    assert "NOT FOR KIND" in header(PRODUCTION_FILE)
    assert "values-production-kind.yaml" in header(PRODUCTION_FILE)
    on_kind = PRODUCTION_ON_KIND["backend"]["modelStorage"]["persistence"]
    assert on_kind["accessModes"] == ["ReadWriteOnce"]
    assert on_kind["storageClassName"] == "standard"
    assert size_bytes(on_kind["size"]) < size_bytes(persistence["size"])
    claim = rendered["production-kind"].get("PersistentVolumeClaim", f"{RELEASE}-backend-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == "standard"
    for name in ("backend", "ui"):
        image = pod_spec(rendered["production-kind"].get("Deployment", f"{RELEASE}-{name}"))["containers"][0]["image"]
        assert image.startswith("localhost:5005/"), f"{name}: from the kind registry"
    assert PRODUCTION_ON_KIND["metrics-server"]["enabled"] is True, "kind has no metrics API of its own"
    assert "--kubelet-insecure-tls" in PRODUCTION_ON_KIND["metrics-server"]["args"]
    assert PRODUCTION_ON_KIND["kube-prometheus-stack"] == {"enabled": False}, "the stack stays a release of its own"
    for component in ("apiKey", "networkPolicy", "monitoring", "tests", "grafanaAdmin"):
        assert PRODUCTION_ON_KIND[component] == PRODUCTION[component], f"{component}: as in production"


def test_production_and_its_kind_overlay_lint_and_render_as_two_files(chart: Path):
    """As the documented command passes them: two --values, the overlay last (not the test's merge of the two)."""
    args = ["--values", str(PRODUCTION_FILE), "--values", str(PRODUCTION_KIND_FILE)]
    lint = helm("lint", "--strict", str(chart), *args)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    output = helm(*template_args(chart, None, extra=args)).stdout
    objects = Rendered([doc for doc in yaml.safe_load_all(output) if doc])
    assert objects.get("PersistentVolumeClaim", f"{RELEASE}-backend-models")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert objects.objects == rendered_production_kind(chart).objects, "the merge the value set uses is Helm's"


def rendered_production_kind(chart: Path) -> Rendered:
    return render(chart, VALUE_SETS["production-kind"])


def test_the_kind_commands_are_in_the_overlay_and_in_the_docs():
    lines = commands(header(PRODUCTION_KIND_FILE))
    stack_install = (
        "helm upgrade --install monitoring helm/gridwatch/charts/kube-prometheus-stack-88.6.2.tgz -n monitoring"
        " -f helm/gridwatch/values-stack-production.yaml -f helm/gridwatch/values-stack-production-kind.yaml"
        " --wait --timeout 10m"
    )
    gridwatch_install = (
        "helm upgrade --install gridwatch helm/gridwatch -n gridwatch -f helm/gridwatch/values-production.yaml"
        " -f helm/gridwatch/values-production-kind.yaml"
        ' --set backend.image.tag="$TAG" --set ui.image.tag="$TAG" --wait --timeout 10m'
    )
    tag = "TAG=$(make -s image-tag)"
    assert tag in lines, "the tag `make kind-build` gave the images (the Makefile's IMAGE_TAG)"
    assert lines.index(tag) < lines.index(gridwatch_install)
    assert stack_install in lines
    assert gridwatch_install in lines
    assert lines.index(stack_install) < lines.index(gridwatch_install), "the stack first: it brings the CRDs"
    dependencies = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]
    (version,) = [dep["version"] for dep in dependencies if dep["name"] == "kube-prometheus-stack"]
    assert f"kube-prometheus-stack-{version}.tgz" in stack_install, "the version Chart.yaml pins"
    documented = commands(DEPLOY_DOC.read_text())
    missing = [line for line in lines if line not in documented]
    assert missing == [], "docs/deploy.md shows the same commands"


def test_production_leaves_the_metrics_api_to_the_cluster_and_kind_keeps_its_own():
    assert VALUES["metrics-server"]["enabled"] is True
    assert PRODUCTION["metrics-server"]["enabled"] is False
    assert "--kubelet-insecure-tls" not in merged(VALUES, PRODUCTION)["metrics-server"]["args"], (
        "should someone turn it back on"
    )
    comment = PRODUCTION_FILE.read_text().split("\nmetrics-server:", 1)[1]
    assert "v1beta1.metrics.k8s.io" in comment, "says why: the APIService exists and the install is refused"


def test_the_stack_release_is_installed_at_the_version_the_chart_pins():
    """The stack release comes from the upstream chart directly: every command names the version tested here."""
    dependencies = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]
    (pinned,) = [dep["version"] for dep in dependencies if dep["name"] == "kube-prometheus-stack"]
    installs = [
        line
        for text in (header(STACK_FILE), header(PRODUCTION_KIND_FILE), DEPLOY_DOC.read_text())
        for line in commands(text)
        if line.startswith(f"helm upgrade --install {STACK_RELEASE} ")
    ]
    assert len(installs) >= 4, installs
    for line in installs:
        versions = re.findall(r"--version (\S+)|kube-prometheus-stack-([\d.]+)\.tgz", line)
        assert [a or b for a, b in versions] == [pinned], line


def test_every_container_of_the_stack_release_is_sized():
    """The same keys that size the bundled stack's containers (every container the upstream chart runs), with CPU
    and memory requests and limits, in production and on kind."""
    stack_paths = [path[1:] for path in UPSTREAM_RESOURCES if path[0] == "kube-prometheus-stack"]
    assert len(stack_paths) >= 8
    for name, values in (("production", STACK), ("kind", STACK_ON_KIND)):
        for path in stack_paths:
            resources = values
            for key in path:
                resources = resources[key]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, f"{name}: {'.'.join(path)} {kind}"


def test_the_stream_over_production_is_scraped_by_the_stack_release():
    """values-stream.yaml layered over production: the bundled NATS exporter's PodMonitor carries the label the
    stack release's Prometheus selects, not the bundled stack's."""
    stream = yaml.safe_load((CHART_DIR / "values-stream.yaml").read_text())
    values = merged(merged(VALUES, PRODUCTION), stream)
    labels = values["nats"]["promExporter"]["podMonitor"]["merge"]["metadata"]["labels"]
    assert labels["release"] == PRODUCTION["monitoring"]["prometheusRelease"] == "monitoring"
