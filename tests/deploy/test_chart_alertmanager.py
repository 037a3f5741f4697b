"""Where alerts go: the Alertmanager configuration kube-prometheus-stack loads, on a laptop and in production.

On a laptop the stack is the umbrella's subchart, configured by helm/gridwatch/values.yaml; in production it is its
own release of the upstream chart, configured by helm/gridwatch/values-stack-production.yaml (upstream keys at the
top level). Neither chart is downloadable here, so the stack's Secret is reproduced: kube-prometheus-stack's
templates/alertmanager/secret.yaml writes `toYaml .Values.alertmanager.config` under `alertmanager.yaml` (with
tplConfig false, the default, which both files keep), and Helm merges the given values over the chart's defaults: maps
key by key, lists replaced whole. For the laptop, a template added to the test's copy of the umbrella writes that same
`toYaml` from the umbrella's merged values; for production, a stand-in chart named kube-prometheus-stack does it from
the stack file merged over stand-in defaults that set every key of the upstream default to a marker, so a key the file
left out would show. The result is checked with the real amtool (`check-config`, `config routes test`) and, for the
inhibition rules, fed alerts in a real Alertmanager (Debian's prometheus-alertmanager).
"""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.deploy.support import CHART_DIR, NAMESPACE, Rendered, chart_copy, helm, render, template_args
from tests.support import ROOT, HttpProcess, require_tool

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
PRODUCTION = yaml.safe_load((CHART_DIR / "values-production.yaml").read_text())
STACK_FILE = CHART_DIR / "values-stack-production.yaml"
"""The production stack release's values (upstream keys): its Alertmanager configuration, Secrets and examples."""
STACK = yaml.safe_load(STACK_FILE.read_text())
RULES = ROOT / "prometheus-rules"

STACK_DEFAULT_KEYS: dict[str, set[str] | None] = {
    "global": {"resolve_timeout"},
    "inhibit_rules": None,
    "route": {"group_by", "group_wait", "group_interval", "repeat_interval", "receiver", "routes"},
    "receivers": None,
    "templates": None,
}
"""The keys kube-prometheus-stack 88.x's own default `alertmanager.config` sets (its values.yaml). A key the chart
left out would be merged in from there."""

STACK_ALERTS = {"TargetDown", "Watchdog"}
"""Alerts of kube-prometheus-stack's own rules that the routing and inhibition name."""


def secret_template(stack: str) -> str:
    """The Secret kube-prometheus-stack renders (templates/alertmanager/secret.yaml), reading the stack's values
    at ``stack``: ``.Values`` inside the stack's own chart, the umbrella's ``kube-prometheus-stack`` values above it."""
    return f"""\
{{{{- /* Test only: the Secret kube-prometheus-stack renders (templates/alertmanager/secret.yaml). */}}}}
{{{{- if or {stack}.alertmanager.tplConfig {stack}.alertmanager.stringConfig }}}}
{{{{- fail "tplConfig/stringConfig are not reproduced by this test" }}}}
{{{{- end }}}}
apiVersion: v1
kind: Secret
metadata:
  name: alertmanager-under-test
  namespace: {{{{ .Release.Namespace }}}}
data:
  alertmanager.yaml: {{{{ toYaml {stack}.alertmanager.config | b64enc | quote }}}}
"""


SECRET_TEMPLATE = f"""\
{{{{- $stack := index .Values "kube-prometheus-stack" }}}}
{{{{- if $stack.enabled }}}}
{secret_template("$stack")}{{{{- end }}}}
"""
"""The Secret as the umbrella renders it, only while the bundled stack is on."""

UPSTREAM_MARKER = "upstream-default-left-over"
STANDIN_DEFAULT_CONFIG = {
    "global": {"resolve_timeout": UPSTREAM_MARKER},
    "inhibit_rules": [{"source_matchers": [f'alertname = "{UPSTREAM_MARKER}"'], "target_matchers": ['severity = "x"']}],
    "route": {
        "group_by": [UPSTREAM_MARKER],
        "group_wait": UPSTREAM_MARKER,
        "group_interval": UPSTREAM_MARKER,
        "repeat_interval": UPSTREAM_MARKER,
        "receiver": UPSTREAM_MARKER,
        "routes": [{"receiver": UPSTREAM_MARKER}],
    },
    "receivers": [{"name": UPSTREAM_MARKER}],
    "templates": [UPSTREAM_MARKER],
}
"""The stand-in's default configuration: every key STACK_DEFAULT_KEYS lists, each holding a marker."""

STANDIN_SECRET_TEMPLATE = secret_template(".Values")

STACK_RELEASE = "monitoring"
STACK_NAMESPACE = "monitoring"


@pytest.fixture(scope="module")
def stack_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart = chart_copy(tmp_path_factory.mktemp("alertmanager"))
    (chart / "templates" / "alertmanager-under-test.yaml").write_text(SECRET_TEMPLATE)
    return chart


@pytest.fixture(scope="module")
def standin_stack_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chart named kube-prometheus-stack that renders only the Alertmanager Secret, over marker defaults."""
    chart = tmp_path_factory.mktemp("standin") / "kube-prometheus-stack"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": "kube-prometheus-stack", "version": "88.6.2"})
    )
    defaults = {"alertmanager": {"tplConfig": False, "stringConfig": "", "config": STANDIN_DEFAULT_CONFIG}}
    (chart / "values.yaml").write_text(yaml.safe_dump(defaults))
    (chart / "templates" / "secret.yaml").write_text(STANDIN_SECRET_TEMPLATE)
    return chart


def stack_release_secret(chart: Path, *values: Path) -> dict[str, Any]:
    """The Alertmanager Secret of the stand-in stack released as in production, with these values files."""
    files = [arg for path in values for arg in ("--values", str(path))]
    output = helm(*template_args(chart, None, release=STACK_RELEASE, namespace=STACK_NAMESPACE, extra=files)).stdout
    return Rendered([doc for doc in yaml.safe_load_all(output) if doc]).get("Secret", "alertmanager-under-test")


@pytest.fixture(scope="module")
def configs(
    stack_chart: Path, standin_stack_chart: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], Path]]:
    """Each value set's Alertmanager configuration: as parsed, and as the file Alertmanager would read.

    defaults: the umbrella's bundled stack (values.yaml); production: the stack release (values-stack-production.yaml).
    """
    folder = tmp_path_factory.mktemp("configs")
    secrets = {
        "defaults": render(stack_chart).get("Secret", "alertmanager-under-test"),
        "production": stack_release_secret(standin_stack_chart, STACK_FILE),
    }
    found = {}
    for name, secret in secrets.items():
        text = base64.b64decode(secret["data"]["alertmanager.yaml"]).decode()
        path = folder / f"{name}.yaml"
        path.write_text(text)
        found[name] = (yaml.safe_load(text), path)
    return found


CONFIG_SETS = ("defaults", "production")


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("amtool"), *args], capture_output=True, text=True, check=False, timeout=60)


def receiver_of(config_file: Path, labels: dict[str, str]) -> str:
    result = amtool(
        "config", "routes", "test", f"--config.file={config_file}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def receivers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {receiver["name"]: receiver for receiver in config["receivers"]}


def integrations(receiver: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for key, value in receiver.items() if key.endswith("_configs") for entry in value]


def file_settings(node: Any) -> list[str]:
    """Every `*_file` value anywhere in a receiver (credentials read from files)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k.endswith("_file") and isinstance(v, str)] + [
            found for v in node.values() for found in file_settings(v)
        ]
    if isinstance(node, list):
        return [found for v in node for found in file_settings(v)]
    return []


def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from routes(child)


# --- the configuration as the stack would load it ----------------------------------------------------------------


def test_the_chart_sets_every_key_of_the_stacks_default_so_nothing_of_it_remains(configs):
    for name, alertmanager in (
        ("values.yaml", VALUES["kube-prometheus-stack"]["alertmanager"]),
        ("values-stack-production.yaml", STACK["alertmanager"]),
    ):
        assert "tplConfig" not in alertmanager, f"{name}: kept false, {{{{ }}}} reach Alertmanager untouched"
        assert "stringConfig" not in alertmanager, name
        config = alertmanager["config"]
        for key, inner in STACK_DEFAULT_KEYS.items():
            assert key in config, f"{name}: {key}"
            if inner:
                assert inner <= set(config[key]), f"{name}: {key}"
    assert set(STANDIN_DEFAULT_CONFIG) == set(STACK_DEFAULT_KEYS), "the stand-in sets every default key"
    for key, inner in STACK_DEFAULT_KEYS.items():
        assert inner is None or inner == set(STANDIN_DEFAULT_CONFIG[key]), key
    _, path = configs["production"]
    assert UPSTREAM_MARKER not in path.read_text(), "nothing of the stack's default survives in production"


def test_the_production_release_leaves_alerting_to_the_stack_release():
    """values-production.yaml has no Alertmanager of its own: the stack release's file holds the configuration."""
    assert PRODUCTION["kube-prometheus-stack"] == {"enabled": False}
    assert "alertmanager" in STACK, "upstream keys, at the top level"
    assert "kube-prometheus-stack" not in STACK, "upstream keys, at the top level"


def test_the_stand_in_shows_a_default_key_the_file_leaves_out(standin_stack_chart: Path, tmp_path: Path):
    """The marker check above can fail: a stack file without `templates` keeps the stand-in's default."""
    partial = copy.deepcopy(STACK)
    del partial["alertmanager"]["config"]["templates"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(partial))
    secret = stack_release_secret(standin_stack_chart, path)
    assert UPSTREAM_MARKER in base64.b64decode(secret["data"]["alertmanager.yaml"]).decode()


@pytest.mark.parametrize("value_set", CONFIG_SETS)
def test_amtool_check_config_accepts_the_rendered_configuration(configs, value_set: str):
    _, path = configs[value_set]
    result = amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_production_changes_the_receivers_not_the_routing(configs):
    default, _ = configs["defaults"]
    production, _ = configs["production"]
    assert production["route"] == default["route"]
    assert production["inhibit_rules"] == default["inhibit_rules"]
    assert set(receivers(production)) == set(receivers(default)) == {"null", "pager", "ticket", "heartbeat"}


ROUTING = [
    ({"alertname": "GridWatchBackendDown", "severity": "critical", "namespace": NAMESPACE}, "pager"),
    ({"alertname": "KubeAPIDown", "severity": "critical", "namespace": "kube-system"}, "pager"),
    ({"alertname": "GridWatchTargetDown", "severity": "warning", "namespace": NAMESPACE}, "ticket"),
    ({"alertname": "TargetDown", "severity": "warning", "job": "gridwatch"}, "ticket"),
    ({"alertname": "Watchdog", "severity": "none"}, "heartbeat"),
    ({"alertname": "InfoInhibitor", "severity": "none"}, "null"),
    ({"alertname": "KubeQuotaAlmostFull", "severity": "info"}, "null"),
]


@pytest.mark.parametrize("value_set", CONFIG_SETS)
@pytest.mark.parametrize(("labels", "receiver"), ROUTING, ids=[labels["alertname"] for labels, _ in ROUTING])
def test_amtool_routes_each_severity_to_its_receiver(configs, value_set: str, labels: dict, receiver: str):
    _, path = configs[value_set]
    assert receiver_of(path, labels) == receiver
    verified = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={path}",
        f"--verify.receivers={receiver}",
        *map("=".join, labels.items()),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_route_check_catches_a_wrong_receiver(configs):
    _, path = configs["production"]
    wrong = amtool(
        "config", "routes", "test", f"--config.file={path}", "--verify.receivers=ticket", "severity=critical"
    )
    assert wrong.returncode != 0


def test_in_production_critical_alerts_page_and_the_heartbeat_beats(configs):
    config, path = configs["production"]
    by_name = receivers(config)
    assert receiver_of(path, {"severity": "critical", "alertname": "AnythingCritical"}) == "pager"
    for route in routes(config["route"]):
        if any(re.fullmatch(r'severity\s*=~?\s*"?critical"?', m) for m in route.get("matchers", [])):
            assert route["receiver"] != "null"
            assert not route.get("continue"), "the page is the end of the road"
    for name in ("pager", "ticket", "heartbeat"):
        assert integrations(by_name[name]), f"{name} sends somewhere in production"
    assert integrations(by_name["null"]) == []
    assert all(entry.get("send_resolved") for entry in integrations(by_name["pager"])), "the pager hears the all-clear"
    (watchdog,) = [r for r in routes(config["route"]) if 'alertname = "Watchdog"' in r.get("matchers", [])]
    assert watchdog["receiver"] == "heartbeat"
    assert time_seconds(watchdog["repeat_interval"]) <= 300, "a heartbeat every few minutes at most"
    assert time_seconds(watchdog["group_interval"]) <= time_seconds(watchdog["repeat_interval"])


def time_seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([smhd])", duration))


def test_on_a_laptop_the_receivers_are_empty(configs):
    config, _ = configs["defaults"]
    assert all(integrations(receiver) == [] for receiver in config["receivers"]), "no paging from kind"
    assert VALUES["kube-prometheus-stack"]["alertmanager"]["alertmanagerSpec"]["secrets"] == []


# --- credentials come from a mounted Secret, never from values ----------------------------------------------------


def mounted_secret_paths() -> dict[str, str]:
    names = STACK["alertmanager"]["alertmanagerSpec"]["secrets"]
    return {name: f"/etc/alertmanager/secrets/{name}/" for name in names}


def check_credentials_come_from_the_mounted_secret(receiver_list: list[dict[str, Any]]) -> set[str]:
    """The keys of the mounted Secret these receivers read; fails on a credential given in the values."""
    mounts = mounted_secret_paths()
    keys = set()
    for path in file_settings(receiver_list):
        (name,) = [name for name, prefix in mounts.items() if path.startswith(prefix)]
        keys.add(path.removeprefix(mounts[name]))
    for entry in (e for receiver in receiver_list for e in integrations(receiver)):
        for secret_field in ("routing_key", "service_key", "api_url", "auth_password", "credentials", "api_key"):
            assert secret_field not in entry, f"{secret_field} in the values: use {secret_field}_file"
        authorization = entry.get("http_config", {}).get("authorization", {})
        assert "credentials" not in authorization, "credentials in the values: use credentials_file"
    return keys


def test_production_receivers_read_their_credentials_from_the_mounted_secret(configs):
    config, _ = configs["production"]
    keys = check_credentials_come_from_the_mounted_secret(config["receivers"])
    assert keys, "the webhooks authenticate with a token from the Secret"
    text = STACK_FILE.read_text()
    (secret,) = mounted_secret_paths()
    for key in keys:
        expected = f"kubectl -n {STACK_NAMESPACE} create secret generic {secret} --from-literal={key}="
        assert expected in text, "the file says how to create it, in the stack's namespace"


def receiver_examples() -> list[dict[str, Any]]:
    """The commented receiver examples of values-stack-production.yaml, uncommented."""
    text = STACK_FILE.read_text()
    block = text.split("# BEGIN receiver examples\n", 1)[1].split("# END receiver examples", 1)[0]
    lines = [line.strip().removeprefix("#")[1:] if line.strip() != "#" else "" for line in block.splitlines()]
    return yaml.safe_load("\n".join(lines))


EXAMPLE_KINDS = {"pagerduty_configs", "slack_configs", "email_configs"}


def test_the_documented_receiver_examples_pass_amtool(configs, tmp_path: Path):
    examples = receiver_examples()
    assert {key for example in examples for key in example if key.endswith("_configs")} == EXAMPLE_KINDS
    config, _ = configs["production"]
    check_credentials_come_from_the_mounted_secret(examples)
    for index, example in enumerate(examples):
        variant = copy.deepcopy(config)
        variant["receivers"] = [example if r["name"] == example["name"] else r for r in variant["receivers"]]
        path = tmp_path / f"example-{index}.yaml"
        path.write_text(yaml.safe_dump(variant, sort_keys=False))
        result = amtool("check-config", str(path))
        assert result.returncode == 0, f"{example}:\n{result.stdout}{result.stderr}"


def test_amtool_refuses_a_broken_configuration(configs, tmp_path: Path):
    """The check above can fail: a route to a receiver nobody defined."""
    config, _ = configs["production"]
    broken = copy.deepcopy(config)
    broken["route"]["routes"][1]["receiver"] = "pagr"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = amtool("check-config", str(path))
    assert result.returncode != 0
    assert "pagr" in result.stdout + result.stderr


# --- inhibition ----------------------------------------------------------------------------------------------------


def matcher_alertnames(matchers: list[str]) -> set[str]:
    names: set[str] = set()
    for matcher in matchers:
        match = re.fullmatch(r'\s*alertname\s*(=~|=)\s*"([^"]*)"\s*', matcher)
        if match:
            alternatives = match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)]
            assert all(re.fullmatch(r"[A-Za-z]+", name) for name in alternatives), matcher
            names.update(alternatives)
    return names


def alert_names(folder: Path) -> set[str]:
    return {
        rule["alert"]
        for path in sorted(folder.glob("*.y*ml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    }


def test_routing_and_inhibition_name_only_alerts_that_exist():
    """A renamed or removed alert must not leave a dead inhibition behind (it would silently stop silencing).

    Needs the alerts GridWatchNoModelLoaded, GridWatchBackendRestarting and GridWatchRequestsShed of issue 14 in
    prometheus-rules/."""
    config = VALUES["kube-prometheus-stack"]["alertmanager"]["config"]
    named = set()
    for rule in config["inhibit_rules"]:
        named |= matcher_alertnames(rule.get("source_matchers", [])) | matcher_alertnames(
            rule.get("target_matchers", [])
        )
    for route in routes(config["route"]):
        named |= matcher_alertnames(route.get("matchers", []))
    unknown = named - alert_names(RULES) - STACK_ALERTS
    assert unknown == set(), f"inhibition or routing names alerts no rule file defines: {sorted(unknown)}"


class AlertmanagerProcess(HttpProcess):
    """Debian's prometheus-alertmanager with the given configuration, alone (no cluster), on a free port."""

    def __init__(self, binary: str, config: Path, data: Path) -> None:
        super().__init__(ready_path="/-/ready", log_name="alertmanager", ready_timeout=60)
        self.binary, self.config, self.data = binary, config, data

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]


OUTAGES = {
    # Every backend of namespace "a" is down: its per-pod alerts and the stack's TargetDown for the job are silenced.
    "a-down": {"alertname": "GridWatchBackendDown", "severity": "critical", "namespace": "a"},
    "a-target": {"alertname": "GridWatchTargetDown", "severity": "warning", "namespace": "a", "instance": "10.0.0.1"},
    "a-stack-target": {"alertname": "TargetDown", "severity": "warning", "namespace": "a", "job": "gridwatch"},
    "a-restarting": {"alertname": "GridWatchBackendRestarting", "severity": "warning", "namespace": "a"},
    "a-shed": {"alertname": "GridWatchRequestsShed", "severity": "warning", "namespace": "a"},
    "a-no-model": {"alertname": "GridWatchNoModelLoaded", "severity": "critical", "namespace": "a"},
    # ...but not another job's TargetDown there, nor anything in namespace "b".
    "a-other-job": {"alertname": "TargetDown", "severity": "warning", "namespace": "a", "job": "coredns"},
    "b-target": {"alertname": "GridWatchTargetDown", "severity": "warning", "namespace": "b", "instance": "10.0.1.1"},
    # No model anywhere in namespace "c": the per-pod warnings are part of it.
    "c-no-model": {"alertname": "GridWatchNoModelLoaded", "severity": "critical", "namespace": "c"},
    "c-pod": {"alertname": "GridWatchModelNotLoaded", "severity": "warning", "namespace": "c", "instance": "10.0.2.1"},
    "d-pod": {"alertname": "GridWatchModelNotLoaded", "severity": "warning", "namespace": "d", "instance": "10.0.3.1"},
    # A critical tier silences the warning tier of the same alert and namespace only.
    "e-critical": {"alertname": "GridWatchErrorBudgetBurn", "severity": "critical", "namespace": "e"},
    "e-warning": {"alertname": "GridWatchErrorBudgetBurn", "severity": "warning", "namespace": "e"},
    "f-warning": {"alertname": "GridWatchErrorBudgetBurn", "severity": "warning", "namespace": "f"},
}
INHIBITED = {"a-target", "a-stack-target", "a-restarting", "a-shed", "a-no-model", "c-pod", "e-warning"}


def alert_states(url: str) -> dict[str, bool]:
    """Each posted alert's key: whether Alertmanager reports it inhibited."""
    answer = httpx2.get(f"{url}/api/v2/alerts", params={"active": "true", "inhibited": "true"})
    answer.raise_for_status()
    keys = {tuple(sorted(labels.items())): key for key, labels in OUTAGES.items()}
    return {
        keys[tuple(sorted(alert["labels"].items()))]: bool(alert["status"]["inhibitedBy"]) for alert in answer.json()
    }


@pytest.mark.slow
def test_one_outage_one_notification_in_a_real_alertmanager(configs, tmp_path: Path):
    """The inhibition rules at work (the same in production, whose receivers would try to send)."""
    _, path = configs["defaults"]
    binary = require_tool("prometheus-alertmanager")
    with AlertmanagerProcess(binary, path, tmp_path / "data") as alertmanager:
        posted = httpx2.post(
            f"{alertmanager.url}/api/v2/alerts", json=[{"labels": labels} for labels in OUTAGES.values()]
        )
        assert posted.status_code == 200, posted.text
        # The inhibitor learns of firing source alerts a moment after they arrive: wait until every expected
        # inhibition shows (each proves its source is known), then every other alert must still be active.
        deadline = time.monotonic() + 30
        states = alert_states(alertmanager.url)
        while not all(states.get(key) for key in INHIBITED) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling interval
            states = alert_states(alertmanager.url)
    assert set(states) == set(OUTAGES), "every posted alert is listed"
    assert {key for key, inhibited in states.items() if inhibited} == INHIBITED, alertmanager.log()
