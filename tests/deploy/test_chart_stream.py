"""The stream consumer in the chart: its Deployment, Service, ServiceMonitor and NetworkPolicies, the bundled NATS
server's wiring, and KEDA's ScaledObject on both sides of the CRD trap.

The value set "stream" (values-stream.yaml) also goes through test_chart.py's lint, Kubernetes-schema, lockdown and
Service tests and the checkov scan. KEDA's CRDs come with the keda chart, so at a release's first install the cluster
does not know the ScaledObject kind yet: `helm template` without `--api-versions keda.sh/v1alpha1/ScaledObject` is
that first install, with it the upgrade after (or a cluster that already runs KEDA).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda_v1alpha1

from app.scoring.settings import ScoringSettings
from app.stream.settings import StreamSettings
from tests.deploy.support import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Rendered,
    helm,
    merged,
    pod_labels,
    pod_spec,
    refusal,
    render,
    template_args,
    values_file,
)

STREAM = f"{RELEASE}-stream"
BACKEND = f"{RELEASE}-backend"
NATS = f"{RELEASE}-nats"
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
STREAM_VALUES = VALUE_SETS["stream"]
KEDA_KNOWN = ["--api-versions", "keda.sh/v1alpha1/ScaledObject"]
"""What the cluster reports once KEDA's CRDs exist (an upgrade after the first install, or KEDA installed before)."""


@pytest.fixture(scope="module")
def first_install(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["stream"]


@pytest.fixture(scope="module")
def with_keda(chart: Path) -> Rendered:
    return render(chart, STREAM_VALUES, extra=KEDA_KNOWN)


# --- nothing of the stream unless asked ------------------------------------------------------------------------


def test_the_stream_is_off_by_default(rendered: dict[str, Rendered]):
    default = rendered["defaults"]
    assert STREAM not in default.names("Deployment")
    components = {obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") for obj in default.objects}
    assert "stream" not in components
    assert "nats" not in components
    assert not [obj for obj in default.objects if obj["apiVersion"].startswith("keda.sh/")]


def test_the_stream_needs_a_nats_server(chart: Path):
    message = refusal(chart, {"stream": {"enabled": True}})
    assert "nats.enabled=true" in message
    assert "stream.config.NATS_URL" in message


# --- the consumer ----------------------------------------------------------------------------------------------


def test_the_consumer_runs_the_backend_image_in_stream_mode_with_its_probes(first_install: Rendered):
    deployment = first_install.get("Deployment", STREAM)
    backend = pod_spec(first_install.get("Deployment", BACKEND))["containers"][0]
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"] == backend["image"], "one image serves both modes"
    assert container["args"] == ["stream"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    environment = first_install.get("ConfigMap", STREAM)["data"]
    assert container["ports"] == [{"name": "http", "containerPort": int(environment["PORT"]), "protocol": "TCP"}]
    assert container["envFrom"] == [{"configMapRef": {"name": STREAM}}]
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert float(environment["GRACEFUL_TIMEOUT"]) < grace, "the batch in hand is finished before the kubelet kills"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_consumer_environment_is_valid_and_points_at_the_bundled_nats(first_install: Rendered):
    environment = first_install.get("ConfigMap", STREAM)["data"]
    settings = StreamSettings(**{k.lower(): v for k, v in environment.items()})
    nats_service = first_install.get("NetworkPolicy", NATS)  # the bundled server's policy exists, so it is on
    assert nats_service
    assert settings.nats_url == f"nats://{NATS}.{NAMESPACE}.svc:4222"
    assert settings.host == "0.0.0.0"
    assert settings.stream_batch == VALUES["stream"]["config"]["STREAM_BATCH"]
    assert settings.stream_consumer == "gridwatch-scorer"
    backend = first_install.get("ConfigMap", BACKEND)["data"]
    shared = {name.upper() for name in ScoringSettings.model_fields}
    assert {name: backend[name] for name in shared if name in backend} == {
        name: environment[name] for name in shared if name in environment
    }, "the consumer scores with the backend's model settings"
    assert set(environment) <= {name.upper() for name in StreamSettings.model_fields}, "nothing it does not read"


def test_the_shared_variables_are_exactly_the_scoring_settings():
    template = (CHART_DIR / "templates" / "_stream.tpl").read_text()
    listed = re.search(r'define "gridwatch.stream.sharedVariables" -}}\n(.+)\n', template)
    assert listed
    assert set(listed.group(1).split()) == {name.upper() for name in ScoringSettings.model_fields}


def test_stream_config_holds_every_variable_only_the_consumer_reads():
    own = {name.upper() for name in StreamSettings.model_fields} - {
        name.upper() for name in ScoringSettings.model_fields
    }
    assert set(VALUES["stream"]["config"]) == own


def test_a_given_nats_url_is_used_as_it_is(chart: Path):
    url = "nats://nats.messaging.svc:4222,nats://nats-2.messaging.svc:4222"
    values = {"stream": {"enabled": True, "config": {"NATS_URL": url}, "autoscaling": {"enabled": False}}}
    rendered = render(chart, values)
    assert rendered.get("ConfigMap", STREAM)["data"]["NATS_URL"] == url
    assert NATS not in rendered.names("NetworkPolicy"), "no bundled server, no policy for it"


def test_the_consumers_share_the_backend_models_claim_when_there_is_one(chart: Path, first_install: Rendered):
    private = {v["name"]: v for v in pod_spec(first_install.get("Deployment", STREAM))["volumes"]}
    assert "emptyDir" in private["models"], "without a claim each consumer trains its own copy, like a backend pod"
    on_claim = render(chart, merged(STREAM_VALUES, VALUE_SETS["models-on-pvc"]))
    volumes = {v["name"]: v for v in pod_spec(on_claim.get("Deployment", STREAM))["volumes"]}
    backend = {v["name"]: v for v in pod_spec(on_claim.get("Deployment", BACKEND))["volumes"]}
    assert volumes["models"] == backend["models"]
    assert "persistentVolumeClaim" in volumes["models"]


def test_graceful_timeout_must_stay_below_the_grace_period(chart: Path):
    values = merged(
        STREAM_VALUES, {"stream": {"config": {"GRACEFUL_TIMEOUT": 30}, "terminationGracePeriodSeconds": 30}}
    )
    assert "stream.config.GRACEFUL_TIMEOUT" in refusal(chart, values)


def test_the_schema_refuses_a_bad_stream_setting(chart: Path):
    for setting, path in [
        ("stream.config.STREAM_BATCH=0", "/stream/config/STREAM_BATCH"),
        ("stream.config.STREAM_CONSUMER=a.b", "/stream/config/STREAM_CONSUMER"),
        ("stream.autoscaling.lagThreshold=0", "/stream/autoscaling/lagThreshold"),
        ("stream.replicas=2", "/stream"),
    ]:
        result = helm(*template_args(chart, None, extra=["--set", setting]), check=False)
        assert result.returncode != 0, setting
        assert path in result.stderr, (setting, result.stderr)


# --- monitoring --------------------------------------------------------------------------------------------------


def test_the_stream_servicemonitor_scrapes_the_consumers_as_job_gridwatch_stream(first_install: Rendered):
    service = first_install.get("Service", STREAM)
    assert service["spec"]["clusterIP"] == "None", "headless: every consumer pod is a target"
    consumers = pod_labels(first_install.get("Deployment", STREAM))
    assert all(consumers.get(k) == v for k, v in service["spec"]["selector"].items())
    backend_pods = pod_labels(first_install.get("Deployment", BACKEND))
    assert not all(backend_pods.get(k) == v for k, v in service["spec"]["selector"].items())
    monitor = first_install.get("ServiceMonitor", STREAM)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    backend_service = first_install.get("Service", BACKEND)["metadata"]["labels"]
    assert not all(backend_service.get(k) == v for k, v in selector.items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}["job"] == "gridwatch-stream"
    assert monitor["metadata"]["labels"]["release"] == RELEASE


def test_the_bundled_nats_exporter_is_scraped_by_the_bundled_prometheus():
    nats = VALUES["nats"]
    assert nats["promExporter"]["enabled"] is True
    pod_monitor = nats["promExporter"]["podMonitor"]
    assert pod_monitor["enabled"] is True
    assert pod_monitor["merge"]["metadata"]["labels"]["release"] == RELEASE, "the label the stack's Prometheus selects"


# --- the bundled NATS server ---------------------------------------------------------------------------------------


def test_nats_values_turn_on_jetstream_on_a_volume_mqtt_and_the_monitoring_port():
    config = VALUES["nats"]["config"]
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["mqtt"]["enabled"] is True
    assert VALUES["nats"]["service"]["ports"]["monitor"]["enabled"] is True, "KEDA reads /jsz through the Service"
    assert VALUES["nats"]["service"]["ports"]["mqtt"]["enabled"] is True


def ingress_rules_by_port(policy: dict[str, Any]) -> dict[Any, list[dict[str, Any]] | None]:
    """Each ingress port of a NetworkPolicy and who may reach it (None: anyone)."""
    rules: dict[Any, list[dict[str, Any]] | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            rules[port["port"]] = rule.get("from")
    return rules


def test_nats_admits_consumers_and_ui_on_its_client_port_devices_on_mqtt_and_keda_on_monitoring(
    first_install: Rendered,
):
    policy = first_install.get("NetworkPolicy", NATS)
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "nats",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "nats",
    }, "the nats chart's selector labels of its server pods"
    rules = ingress_rules_by_port(policy)
    client = rules[4222]
    assert client is not None
    selected = [peer["podSelector"]["matchLabels"] for peer in client]
    assert any(
        all(pod_labels(first_install.get("Deployment", STREAM)).get(k) == v for k, v in s.items()) for s in selected
    )
    assert any(
        all(pod_labels(first_install.get("Deployment", f"{RELEASE}-ui")).get(k) == v for k, v in s.items())
        for s in selected
    )
    assert not any(
        all(pod_labels(first_install.get("Deployment", BACKEND)).get(k) == v for k, v in s.items()) for s in selected
    ), "the HTTP backend has no business with the broker"
    assert rules[1883] is None, "devices publish over MQTT from anywhere"
    (keda,) = rules[8222] or []
    assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert keda["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "keda-operator"}
    (prometheus,) = rules[7777] or []
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_the_consumers_admit_only_prometheus(first_install: Rendered):
    policy = first_install.get("NetworkPolicy", STREAM)
    rules = ingress_rules_by_port(policy)
    assert list(rules) == ["http"]
    (prometheus,) = rules["http"] or []
    assert prometheus["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}


# --- KEDA, on both sides of the CRD trap ---------------------------------------------------------------------------


def test_first_install_renders_no_keda_object_and_runs_the_fixed_replica_count(first_install: Rendered):
    """KEDA's CRDs arrive with this release: any keda.sh object in the same manifest would fail the install."""
    assert not [obj for obj in first_install.objects if obj["apiVersion"].startswith("keda.sh/")]
    deployment = first_install.get("Deployment", STREAM)
    assert deployment["spec"]["replicas"] == VALUES["stream"]["replicaCount"]


def test_first_install_notes_say_to_upgrade_once_keda_is_up(chart: Path):
    path = values_file(chart.parent, STREAM_VALUES, "notes")
    notes = helm("install", RELEASE, str(chart), "-n", NAMESPACE, "--dry-run=client", "-f", str(path)).stdout
    assert "NOT AUTOSCALED YET" in notes
    assert "helm upgrade" in notes
    assert f"port-forward svc/{NATS} 1883:1883" in notes


def test_once_keda_is_known_the_scaledobject_owns_the_replica_count(with_keda: Rendered):
    (scaled,) = with_keda.of_kind("ScaledObject")
    deployment = with_keda.get("Deployment", STREAM)
    assert "replicas" not in deployment["spec"], "KEDA's HPA owns the count; helm must not reset it"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": STREAM}
    scaling = VALUES["stream"]["autoscaling"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (scaling["minReplicas"], scaling["maxReplicas"])
    jetstream, cpu = spec["triggers"]
    environment = with_keda.get("ConfigMap", STREAM)["data"]
    assert jetstream["type"] == "nats-jetstream"
    assert jetstream["metadata"] == {
        "natsServerMonitoringEndpoint": f"{NATS}.{NAMESPACE}.svc:8222",
        "account": "$G",
        "stream": environment["STREAM_READINGS"],
        "consumer": environment["STREAM_CONSUMER"],
        "lagThreshold": str(scaling["lagThreshold"]),
        "activationLagThreshold": str(scaling["activationLagThreshold"]),
    }
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    resources = pod_spec(deployment)["containers"][0]["resources"]
    assert resources["requests"]["cpu"], "KEDA's CPU trigger needs a CPU request"


def test_the_scaledobject_validates_against_the_keda_model(with_keda: Rendered):
    (scaled,) = with_keda.of_kind("ScaledObject")
    model = keda_v1alpha1.ScaledObject.model_validate(scaled)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == scaled, "unknown fields"


def test_a_cluster_with_keda_already_gets_the_scaledobject_at_the_first_install(chart: Path):
    values = merged(STREAM_VALUES, {"keda": {"enabled": False}, "stream": {"autoscaling": {"minReplicas": 0}}})
    rendered = render(chart, values, extra=KEDA_KNOWN)
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0, "scale to zero: the backlog trigger wakes a consumer"


def test_fixed_replicas_without_autoscaling(chart: Path):
    values = merged(STREAM_VALUES, {"stream": {"autoscaling": {"enabled": False}, "replicaCount": 3}})
    rendered = render(chart, values, extra=KEDA_KNOWN)
    assert not rendered.of_kind("ScaledObject")
    assert rendered.get("Deployment", STREAM)["spec"]["replicas"] == 3
    assert 8222 not in ingress_rules_by_port(rendered.get("NetworkPolicy", NATS)), "no KEDA, no monitoring port"


def test_min_replicas_above_max_is_refused(chart: Path):
    values = merged(STREAM_VALUES, {"stream": {"autoscaling": {"minReplicas": 6, "maxReplicas": 5}}})
    assert "stream.autoscaling.minReplicas" in refusal(chart, values)


def test_the_ui_stream_view_is_pointed_at_the_bundled_nats_only_when_there_is_one(
    rendered: dict[str, Rendered], chart: Path
):
    ui = f"{RELEASE}-ui"
    assert "NATS_URL" not in rendered["defaults"].get("ConfigMap", ui)["data"], "no broker: the view waits"
    bundled = rendered["stream"].get("ConfigMap", ui)["data"]["NATS_URL"]
    assert bundled == rendered["stream"].get("ConfigMap", STREAM)["data"]["NATS_URL"], "the consumers' server"
    own = render(chart, {"ui": {"config": {"NATS_URL": "nats://nats.messaging.svc:4222"}}})
    assert own.get("ConfigMap", ui)["data"]["NATS_URL"] == "nats://nats.messaging.svc:4222"
