"""The Helm umbrella chart, rendered with the real helm binary (see tests/deploy/support.py for why the dependency
section is removed from a temporary copy): lint, every value set against the Kubernetes and prometheus-operator
schemas, and the promises the objects make to each other (selectors, ports, labels, security, probes)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

from app.serving.settings import Settings
from app.stream.settings import StreamSettings
from tests.deploy.support import (
    CHART_DIR,
    JOB,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    WORKLOAD_KINDS,
    Rendered,
    chart_copy,
    helm,
    pod_labels,
    pod_spec,
    render,
    schema_refusal,
    selects,
    template_args,
    values_file,
)
from tests.support import ROOT

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
README = (ROOT / "README.md").read_text()
BACKEND = f"{RELEASE}-backend"
UI = f"{RELEASE}-ui"


@pytest.fixture(scope="module")
def default(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["defaults"]


# --- the chart's metadata and its sources ----------------------------------------------------------------------


def test_chart_declares_its_dependencies_pinned_and_optional():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "gridwatch"
    dependencies = {dep["name"]: dep for dep in chart["dependencies"]}
    assert set(dependencies) == {"kube-prometheus-stack", "metrics-server", "nats", "keda"}
    stack, metrics = dependencies["kube-prometheus-stack"], dependencies["metrics-server"]
    assert re.fullmatch(r"88\.\d+\.\d+", stack["version"]), "pinned to one 88.x release"
    assert stack["repository"] == "https://prometheus-community.github.io/helm-charts"
    assert re.fullmatch(r"3\.13\.\d+", metrics["version"]), "pinned to one 3.13.x release"
    assert metrics["repository"] == "https://kubernetes-sigs.github.io/metrics-server/"
    nats, keda = dependencies["nats"], dependencies["keda"]
    assert re.fullmatch(r"2\.14\.\d+", nats["version"]), "pinned to one 2.14.x release (NATS server 2.14)"
    assert nats["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert re.fullmatch(r"2\.20\.\d+", keda["version"]), "pinned to one 2.20.x release"
    assert keda["repository"] == "https://kedacore.github.io/charts"
    for name, dep in dependencies.items():
        assert dep["condition"] == f"{name}.enabled"
        # The monitoring stack is on by default; the stream's broker and autoscaler are opt-in (values-stream.yaml).
        assert VALUES[name]["enabled"] is (name in {"kube-prometheus-stack", "metrics-server"})
    assert VALUES["kube-prometheus-stack"]["fullnameOverride"], "stable service names for the stack"


def test_downloaded_subcharts_stay_out_of_git():
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "helm/gridwatch/charts/kube-prometheus-stack-88.6.2.tgz"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.returncode == 0, "charts/*.tgz must be ignored"


def test_dashboards_and_rules_enter_the_chart_through_symlinks_not_copies():
    for link, folder in (("dashboards", "grafana-dashboards"), ("rules", "prometheus-rules")):
        path = CHART_DIR / link
        assert path.is_symlink(), f"helm/gridwatch/{link} must be a symlink to the single source"
        assert path.resolve() == (ROOT / folder).resolve()
    own_files = {
        path.relative_to(CHART_DIR).as_posix()
        for folder, _, files in os.walk(CHART_DIR)  # does not descend into the symlinked folders
        for path in (Path(folder) / name for name in files)
        if path.suffix in {".json", ".yaml", ".yml"}
    }
    stray = {name for name in own_files if not name.startswith("templates/")} - {
        "Chart.yaml",
        "values.yaml",
        "values-production.yaml",
        "values-production-kind.yaml",
        "values-stack-production.yaml",
        "values-stack-production-kind.yaml",
        "values-second-release.yaml",
        "values-stream.yaml",
        "values.schema.json",
    }
    assert stray == set(), f"second copies of dashboards or rules inside the chart: {stray}"


def test_helm_lint_strict_passes_for_every_value_set(chart: Path, tmp_path: Path):
    for name, values in VALUE_SETS.items():
        result = helm("lint", "--strict", str(chart), "--values", str(values_file(tmp_path, values, name)))
        assert "0 chart(s) failed" in result.stdout, f"{name}: {result.stdout}"


# --- every value set renders objects the API server and the operator accept ------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict[str, Rendered], value_set: str):
    core = [obj for obj in rendered[value_set].objects if not obj["apiVersion"].startswith("monitoring.coreos.com/")]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE, "every object names its namespace"


MONITORING_MODELS = {"ServiceMonitor": monitoring_v1.ServiceMonitor, "PrometheusRule": monitoring_v1.PrometheusRule}


def _validate_monitoring(obj: dict[str, Any]) -> None:
    """Validate against the prometheus-operator models and reject fields they do not know (strict, like the CRD)."""
    model = MONITORING_MODELS[obj["kind"]].model_validate(obj)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj, "unknown fields in the object"


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_monitoring_objects_validate_against_the_operator_models(rendered: dict[str, Rendered], value_set: str):
    for obj in rendered[value_set].objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            _validate_monitoring(obj)


def test_the_operator_model_check_catches_a_wrong_field():
    broken = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "15s"}]},
    }
    with pytest.raises(AssertionError, match="unknown fields"):
        _validate_monitoring(broken)


def test_value_sets_render_what_they_promise(rendered: dict[str, Rendered]):
    default = rendered["defaults"]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount"} <= (
        default.kinds()
    )
    assert {"NetworkPolicy", "ServiceMonitor", "Secret", "ConfigMap", "Pod"} <= default.kinds()
    assert "replicas" not in default.get("Deployment", BACKEND)["spec"], "the HPA owns the replica count"
    assert "PersistentVolumeClaim" not in default.kinds()
    assert default.names("Pod") == {f"{RELEASE}-test-api", f"{RELEASE}-test-prometheus-target"}

    off = rendered["monitoring-disabled"]
    assert not off.of_kind("ServiceMonitor")
    assert not off.of_kind("PrometheusRule")
    assert not off.of_kind("Secret"), "no Grafana admin Secret without the stack"
    assert not [cm for cm in off.of_kind("ConfigMap") if "dashboard" in cm["metadata"]["name"]]
    assert off.names("Pod") == {f"{RELEASE}-test-api"}, "no Prometheus test without Prometheus"
    assert off.get("HorizontalPodAutoscaler", BACKEND), "the HPA stays (any metrics server will do)"

    pvc = rendered["models-on-pvc"]
    claim = pvc.get("PersistentVolumeClaim", f"{BACKEND}-models")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    volumes = {v["name"]: v for v in pod_spec(pvc.get("Deployment", BACKEND))["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "emptyDir" in {k for v in pod_spec(default.get("Deployment", BACKEND))["volumes"] for k in v}

    fixed = rendered["three-fixed-replicas"]
    assert fixed.get("Deployment", BACKEND)["spec"]["replicas"] == 3
    assert not fixed.of_kind("HorizontalPodAutoscaler")
    assert fixed.get("PodDisruptionBudget", BACKEND)["spec"]["maxUnavailable"] == 1


# --- objects agree with each other -------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_services_select_their_pods_by_port_name(rendered: dict[str, Rendered], value_set: str):
    objects = rendered[value_set]
    for name in (BACKEND, UI):
        deployment, service = objects.get("Deployment", name), objects.get("Service", name)
        labels = pod_labels(deployment)
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        assert selects(service["spec"]["selector"], labels)
        other = UI if name == BACKEND else BACKEND
        assert not selects(service["spec"]["selector"], pod_labels(objects.get("Deployment", other)))
        container_ports = {p["name"]: p["containerPort"] for p in pod_spec(deployment)["containers"][0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    backend_port = objects.get("Service", BACKEND)["spec"]["ports"][0]
    assert backend_port["name"] == "http"
    assert backend_port["port"] == 8000


def test_the_ui_calls_the_backend_service(default: Rendered):
    service = default.get("Service", BACKEND)
    url = default.get("ConfigMap", UI)["data"]["BACKEND_URL"]
    assert url == f"http://{BACKEND}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"


def test_servicemonitor_targets_the_backend_service_port(default: Rendered):
    monitor = default.get("ServiceMonitor", BACKEND)
    service = default.get("Service", BACKEND)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"]["matchLabels"], default.get("Service", UI)["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    job = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}["job"]
    assert job == JOB == "gridwatch"


def test_the_job_label_is_fixed_because_the_rules_and_dashboards_select_it(chart: Path):
    """Every rule and dashboard selects job="gridwatch" (tests/deploy/test_chart_monitoring_content.py): a job name
    value could only break them silently, so there is none, and setting the old one fails loudly."""
    assert "jobName" not in VALUES["monitoring"]["serviceMonitor"]
    refused = helm(*template_args(chart, None, extra=["--set", "monitoring.serviceMonitor.jobName=grid"]), check=False)
    assert refused.returncode != 0
    assert "jobName" in refused.stderr
    assert "not allowed" in refused.stderr
    test_pod = render(chart, {}).get("Pod", f"{RELEASE}-test-prometheus-target")
    env = {e["name"]: e.get("value") for e in pod_spec(test_pod)["containers"][0]["env"]}
    assert env["JOB"] == JOB, "the helm test looks for the same job"


@pytest.mark.parametrize("release", [RELEASE, "demo"])
def test_monitoring_objects_carry_the_release_label_the_stack_selects(chart: Path, tmp_path: Path, release: str):
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules labelled release=<release>."""
    spec = VALUES["kube-prometheus-stack"]["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is True
    assert spec["ruleSelectorNilUsesHelmValues"] is True
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text("groups:\n  - name: a\n    rules:\n      - record: x:up\n        expr: up\n")
    objects = render(chart_copy(tmp_path, rules=rules), release=release)
    monitoring = objects.of_kind("ServiceMonitor") + objects.of_kind("PrometheusRule")
    assert len(monitoring) == 2
    for obj in monitoring:
        assert obj["metadata"]["labels"]["release"] == release


SOURCE_RUNBOOK = "https://github.com/gridwatch/gridwatch/blob/main/docs/runbook.md"
"""The runbook address the rule files carry; the chart points it at monitoring.prometheusRule.runbookBaseUrl."""
OWN_RUNBOOK = "https://runbooks.example.org/gridwatch.html"
RUNBOOK_RULES = f"""\
groups:
  - name: sample
    rules:
      - alert: SampleDown
        expr: up == 0
        annotations:
          runbook_url: {SOURCE_RUNBOOK}#sampledown
      - alert: SampleElsewhere
        expr: up == 0
        annotations:
          runbook_url: https://wiki.example.org/sample
      - record: job:up:sum
        expr: sum by (job) (up)
"""


def _alert_runbooks(objects: Rendered) -> dict[str, str]:
    (rule,) = objects.of_kind("PrometheusRule")
    return {
        r["alert"]: r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r
    }


def test_runbook_links_follow_the_runbook_base_value(chart: Path, tmp_path: Path):
    assert VALUES["monitoring"]["prometheusRule"]["runbookBaseUrl"] == SOURCE_RUNBOOK, "the default changes nothing"
    own = {"monitoring": {"prometheusRule": {"runbookBaseUrl": OWN_RUNBOOK}}}
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "sample.yaml").write_text(RUNBOOK_RULES)
    sample = chart_copy(tmp_path / "sample", rules=rules)
    assert _alert_runbooks(render(sample, own)) == {
        "SampleDown": f"{OWN_RUNBOOK}#sampledown",
        "SampleElsewhere": "https://wiki.example.org/sample",
    }, "links into the repository's runbook move, others stay"
    assert _alert_runbooks(render(sample))["SampleDown"] == f"{SOURCE_RUNBOOK}#sampledown"

    shipped = _alert_runbooks(render(chart))
    assert shipped
    assert all(url.startswith(f"{SOURCE_RUNBOOK}#") for url in shipped.values()), "every alert follows the value"
    moved = _alert_runbooks(render(chart, own))
    assert moved == {name: url.replace(SOURCE_RUNBOOK, OWN_RUNBOOK) for name, url in shipped.items()}


def test_hpa_scales_the_backend_deployment_on_cpu(default: Rendered):
    hpa = default.get("HorizontalPodAutoscaler", BACKEND)
    target = hpa["spec"]["scaleTargetRef"]
    deployment = default.get("Deployment", target["name"])
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], deployment["kind"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    requests = pod_spec(deployment)["containers"][0]["resources"]["requests"]
    assert "cpu" in requests, "CPU utilisation is measured against the request"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0, "up at once"
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300, "down only after five calmer minutes"
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


def test_hpa_behavior_can_be_left_to_kubernetes(chart: Path):
    hpa = render(chart, {"backend": {"autoscaling": {"behavior": None}}}).get("HorizontalPodAutoscaler", BACKEND)
    assert "behavior" not in hpa["spec"]


def test_helm_test_pods_give_up_before_helm_does():
    """A test pod that outlives `helm test`'s default --timeout (5m) is cut off by helm with a bare timeout; ending
    earlier, it says why it failed in its log (`helm test --logs`)."""
    assert VALUES["tests"]["timeoutSeconds"] < 300


def test_pdb_covers_the_backend_pods(default: Rendered):
    pdb = default.get("PodDisruptionBudget", BACKEND)
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(default.get("Deployment", BACKEND)))
    assert not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(default.get("Deployment", UI)))


def _peers_admitting(policy: dict[str, Any], labels: dict[str, str], namespace_labels: dict[str, str]) -> bool:
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            pods = peer.get("podSelector", {}).get("matchLabels", {})
            namespaces = peer.get("namespaceSelector")
            pods_ok = all(labels.get(k) == v for k, v in pods.items())
            if namespaces is None:
                ns_ok = namespace_labels.get("kubernetes.io/metadata.name") == NAMESPACE
            else:
                ns_ok = all(namespace_labels.get(k) == v for k, v in namespaces.get("matchLabels", {}).items())
            if pods_ok and ns_ok:
                return True
    return False


def test_network_policy_lets_the_ui_prometheus_and_tests_in_and_nobody_else(default: Rendered):
    policy = default.get("NetworkPolicy", BACKEND)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(default.get("Deployment", BACKEND)))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    container_ports = {p["name"] for p in pod_spec(default.get("Deployment", BACKEND))["containers"][0]["ports"]}
    assert {p["port"] for p in rule["ports"]} <= container_ports
    own_namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    monitoring_namespace = {"kubernetes.io/metadata.name": "monitoring"}
    ui_pod = pod_labels(default.get("Deployment", UI))
    prometheus_pod = {"app.kubernetes.io/name": "prometheus", "operator.prometheus.io/name": "gridwatch-stack"}
    assert _peers_admitting(policy, ui_pod, own_namespace)
    assert _peers_admitting(policy, prometheus_pod, own_namespace), "the bundled stack's Prometheus, beside it"
    assert not _peers_admitting(policy, prometheus_pod, monitoring_namespace), "a pod label alone proves nothing"
    assert not _peers_admitting(policy, prometheus_pod, {}), "nor a namespace without its name label"
    for test_pod in default.of_kind("Pod"):
        assert _peers_admitting(policy, pod_labels(test_pod), own_namespace)
    assert not _peers_admitting(policy, {"app": "intruder"}, own_namespace)
    assert not _peers_admitting(policy, ui_pod, monitoring_namespace), "only this release's UI"
    ui_policy = default.get("NetworkPolicy", UI)
    assert selects(ui_policy["spec"]["podSelector"]["matchLabels"], ui_pod)


def test_network_policy_admits_prometheus_from_the_namespace_it_is_told(chart: Path, tmp_path: Path):
    """Without the bundled stack, Prometheus runs elsewhere: that one namespace, and the rendering insists on it."""
    own_stack_off = {"kube-prometheus-stack": {"enabled": False}, "metrics-server": {"enabled": False}}
    missing = helm(*template_args(chart, values_file(tmp_path, own_stack_off)), check=False)
    assert missing.returncode != 0
    assert "networkPolicy.prometheus.namespace is required" in missing.stderr
    elsewhere = render(chart, {**own_stack_off, "networkPolicy": {"prometheus": {"namespace": "monitoring"}}})
    policy = elsewhere.get("NetworkPolicy", BACKEND)
    prometheus_pod = {"app.kubernetes.io/name": "prometheus"}
    assert _peers_admitting(policy, prometheus_pod, {"kubernetes.io/metadata.name": "monitoring"})
    assert not _peers_admitting(policy, prometheus_pod, {"kubernetes.io/metadata.name": NAMESPACE})
    assert not _peers_admitting(
        policy, {"app.kubernetes.io/name": "grafana"}, {"kubernetes.io/metadata.name": "monitoring"}
    )
    # Nobody scrapes without the ServiceMonitor: then no Prometheus peer at all.
    unscraped = VALUE_SETS["monitoring-disabled"]
    policy = render(chart, unscraped).get("NetworkPolicy", BACKEND)
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert not [peer for peer in peers if "namespaceSelector" in peer]
    assert not _peers_admitting(policy, prometheus_pod, {"kubernetes.io/metadata.name": NAMESPACE})


# --- security and operations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_pod_runs_locked_down_with_requests_and_limits(rendered: dict[str, Rendered], value_set: str):
    workloads = [obj for kind in WORKLOAD_KINDS for obj in rendered[value_set].of_kind(kind)]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 10000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{workload['metadata']['name']}"
        if workload["kind"] != "Pod":
            mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp (and multiprocess metrics dir)"
    account = rendered[value_set].get("ServiceAccount", RELEASE)
    assert account["automountServiceAccountToken"] is False


def test_backend_probes_and_graceful_rollout(default: Rendered):
    deployment = default.get("Deployment", BACKEND)
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < pause < spec["terminationGracePeriodSeconds"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    ui = pod_spec(default.get("Deployment", UI))["containers"][0]
    assert ui["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    assert ui["livenessProbe"]["httpGet"]["path"] == "/_stcore/health"


def test_backend_environment_mirrors_the_readme_table_and_is_valid(chart: Path, default: Rendered):
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for line in table.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([A-Z_]+)`", line.split("|")[1])
    }
    downward, ui_only = {"POD_NAME", "NODE_NAME"}, {"BACKEND_URL"}
    # The stream consumer's own variables: in stream.config (tests/deploy/test_chart_stream.py checks them there);
    # the backend does not read them.
    stream_only = {
        name
        for line in table.splitlines()
        if line.startswith("| `") and "(`gridwatch stream`)" in line
        for name in re.findall(r"`([A-Z_]+)`", line.split("|")[1])
    }
    assert stream_only == {name.upper() for name in StreamSettings.model_fields} - {
        name.upper() for name in Settings.model_fields
    }
    set_by_tracing = set(render(chart, TRACED).get("ConfigMap", BACKEND)["data"]) - set(VALUES["backend"]["config"])
    assert set_by_tracing == {"OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"}
    typed = set(VALUES["backend"]["config"])
    assert typed <= documented, "backend.config holds only documented variables"
    values_text = (CHART_DIR / "values.yaml").read_text()
    for name in documented - downward - ui_only - stream_only - typed - set_by_tracing:
        assert name in values_text, f"{name} is not mentioned in values.yaml"
    assert ui_only <= set(VALUES["ui"]["config"])
    assert stream_only <= set(VALUES["stream"]["config"])
    container = pod_spec(default.get("Deployment", BACKEND))["containers"][0]
    field_refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert field_refs["POD_NAME"] == "metadata.name"
    assert field_refs["NODE_NAME"] == "spec.nodeName"
    environment = default.get("ConfigMap", BACKEND)["data"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in environment, "empty values leave the variable unset"
    settings = Settings(**{k.lower(): v for k, v in environment.items() if k.lower() in Settings.model_fields})
    assert settings.host == "0.0.0.0"
    assert str(settings.model_dir) == container["volumeMounts"][0]["mountPath"] == "/models"
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.train_if_missing is True
    assert settings.workers == 1, "one worker per pod keeps exemplars; the HPA scales"
    assert settings.traces_exporters() == (), "tracing off by default"


TRACED = {"tracing": {"enabled": True, "otlpEndpoint": "http://collector.obs.svc:4318"}}


def test_tracing_values_become_otel_variables(chart: Path):
    environment = render(chart, TRACED).get("ConfigMap", BACKEND)["data"]
    assert environment["OTEL_TRACES_EXPORTER"] == "otlp"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.obs.svc:4318"
    assert environment["OTEL_SERVICE_NAME"] == "gridwatch-backend"
    settings = Settings(**{k.lower(): v for k, v in environment.items() if k.lower() in Settings.model_fields})
    assert [exporter.value for exporter in settings.traces_exporters()] == ["otlp"]
    overridden = render(
        chart, {**TRACED, "backend": {"config": {"OTEL_SERVICE_NAME": "grid", "OTEL_SDK_DISABLED": True}}}
    )
    environment = overridden.get("ConfigMap", BACKEND)["data"]
    assert (environment["OTEL_SERVICE_NAME"], environment["OTEL_SDK_DISABLED"]) == ("grid", "true")
    missing = helm(*template_args(chart, None, extra=["--set", "tracing.enabled=true"]), check=False)
    assert missing.returncode != 0
    assert "tracing.otlpEndpoint is required" in missing.stderr


def test_config_changes_roll_the_pods(chart: Path, default: Rendered):
    def checksum(objects: Rendered, name: str) -> str:
        return objects.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    again = render(chart, {})
    changed = render(
        chart, {"backend": {"config": {"LOG_LEVEL": "debug"}}, "ui": {"config": {"BACKEND_URL": "http://x"}}}
    )
    for name in (BACKEND, UI):
        assert checksum(default, name) == checksum(again, name), "rendering is deterministic"
        assert checksum(default, name) != checksum(changed, name)


def test_grafana_admin_password_comes_from_a_stable_documented_secret(chart: Path, default: Rendered):
    stack_admin = VALUES["kube-prometheus-stack"]["grafana"]["admin"]
    secret = default.get("Secret", VALUES["grafanaAdmin"]["secretName"])
    assert stack_admin["existingSecret"] == secret["metadata"]["name"]
    assert {stack_admin["userKey"], stack_admin["passwordKey"]} == set(secret["data"])
    assert render(chart, {}).get("Secret", secret["metadata"]["name"]) == secret, "not regenerated on each render"
    mismatch = helm(*template_args(chart, None, extra=["--set", "grafanaAdmin.secretName=other"]), check=False)
    assert mismatch.returncode != 0
    assert "must equal kube-prometheus-stack.grafana.admin.existingSecret" in mismatch.stderr


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("backend.replicaCount=three", "/backend/replicaCount"),
        ("backend.config.PORT=http", "/backend/config/PORT"),
        ("backend.config.LOG_LEVEL=loud", "/backend/config/LOG_LEVEL"),
        ("backend.autoscaling.enabled=sometimes", "/backend/autoscaling/enabled"),
        ("backend.image.pullPolicy=Sometimes", "/backend/image/pullPolicy"),
        ("monitoring.serviceMonitor.interval=often", "/monitoring/serviceMonitor/interval"),
        ("monitoring.prometheusRelease=not a release", "/monitoring/prometheusRelease"),
        ("monitoring.prometheusRule.runbookBaseUrl=docs/runbook.md", "/monitoring/prometheusRule/runbookBaseUrl"),
        ("networkPolicy.prometheus.namespace=Monitoring", "/networkPolicy/prometheus/namespace"),
        ("networkPolicy.prometheus.namespaceSelector.x=y", "/networkPolicy/prometheus"),
        ("backend.replicas=2", "/backend"),
    ],
)
def test_values_schema_rejects_wrong_types_and_unknown_keys(chart: Path, setting: str, path: str):
    assert path in schema_refusal(chart, "--set", setting)


def test_subchart_values_are_wired_for_this_use():
    """The upstream keys this chart relies on (kube-prometheus-stack 88.x values.yaml, its grafana subchart's
    values.yaml, metrics-server 3.13 values.yaml; docs/deploy.md lists them)."""
    stack = VALUES["kube-prometheus-stack"]
    spec = stack["prometheus"]["prometheusSpec"]
    assert "exemplar-storage" in spec["enableFeatures"]
    assert re.fullmatch(r"[1-7]d|\d+h", spec["retention"]), "a short retention for a laptop"
    assert spec["resources"]["limits"]["memory"]
    sidecar = stack["grafana"]["sidecar"]
    dashboards = VALUES["monitoring"]["dashboards"]
    assert sidecar["dashboards"]["label"] == dashboards["label"]
    assert sidecar["dashboards"]["labelValue"] == dashboards["labelValue"]
    assert sidecar["dashboards"]["folderAnnotation"] == dashboards["folderAnnotation"]
    assert sidecar["dashboards"]["provider"]["foldersFromFilesStructure"] is True
    assert sidecar["datasources"]["uid"] == "prometheus"
    assert VALUES["metrics-server"]["args"] == ["--kubelet-insecure-tls"]
    for component in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
        assert stack[component]["enabled"] is False
    # Unset, kube-prometheus-stack renders serviceMonitorNamespaceSelector: {} (every namespace), which lets the
    # first release's Prometheus find a second release's ServiceMonitor.
    assert not spec.get("serviceMonitorNamespaceSelector")


def test_notes_print_the_port_forward_commands(chart: Path, default: Rendered):
    result = helm("install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client")
    notes = result.stdout.split("NOTES:", 1)[1]
    services = default.names("Service")
    forwards = re.findall(r"port-forward svc/(\S+) (\d+):(\d+)", notes)
    forwarded = {name for name, _, _ in forwards}
    assert {BACKEND, UI} <= forwarded <= services | {f"{RELEASE}-grafana", "gridwatch-stack-prometheus"}
    assert f"{RELEASE}-grafana" in forwarded, "Grafana's Service is <release>-grafana (the grafana subchart's name)"
    for name, _, remote in forwards:
        if name in services:
            assert int(remote) in {p["port"] for p in default.get("Service", name)["spec"]["ports"]}
    assert "helm test" in notes
