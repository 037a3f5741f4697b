"""Dashboards and alert rules reach the cluster unchanged: the chart reads grafana-dashboards/ and prometheus-rules/
through symlinks (no copies), and the rendered ConfigMaps and PrometheusRule hold exactly the files' content.

Two layers: the wiring is proven on small files these tests write (so it is tested whatever the folders hold), and
the real folders are checked file by file: whatever dashboards and rule files exist are rendered, parsed, and the
rules pass `promtool check rules`.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import JOB, RELEASE, Rendered, chart_copy, pod_spec, render
from tests.support import ROOT, require_tool

DASHBOARDS = ROOT / "grafana-dashboards"
RULES = ROOT / "prometheus-rules"
VALUES = yaml.safe_load((ROOT / "helm" / "gridwatch" / "values.yaml").read_text())

SAMPLE_RULES = """\
groups:
  - name: sample-availability
    rules:
      - alert: SampleBackendDown
        expr: up{job="gridwatch-backend"} == 0
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.instance }} is down"
          description: 'Value {{ $value | humanize }} for 2 minutes: "quoted" text.'
  - name: sample-recording
    interval: 30s
    rules:
      - record: job:requests:rate5m
        expr: sum by (job) (rate(requests_total[5m]))
"""
SECOND_RULES = """\
groups:
  - name: sample-latency
    rules:
      - alert: SampleSlow
        expr: histogram_quantile(0.99, sum by (le) (rate(request_latency_seconds_bucket[5m]))) > 0.1
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: p99 above 100 ms
"""
UNIT_TEST = """\
rule_files: [../sample.yaml]
tests: []
"""


def _sample_dashboard(title: str) -> str:
    # Written as a person would (indented, unicode, a trailing newline) to prove the bytes survive unchanged.
    return (
        json.dumps(
            {
                "title": title,
                "uid": title.lower().replace(" ", "-"),
                "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
                "panels": [{"title": "Latenz \u2013 p99 \u00b5s", "datasource": {"uid": "${datasource}"}}],
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )


@pytest.fixture(scope="module")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sources")
    dashboards, rules = root / "dashboards", root / "rules"
    (rules / "tests").mkdir(parents=True)
    dashboards.mkdir()
    (dashboards / "GridWatch_Overview.json").write_text(_sample_dashboard("GridWatch Overview"))
    (dashboards / "model-quality.json").write_text(_sample_dashboard("Model quality"))
    (dashboards / "notes.md").write_text("not a dashboard\n")
    (rules / "sample.yaml").write_text(SAMPLE_RULES)
    (rules / "second.yml").write_text(SECOND_RULES)
    (rules / "tests" / "sample_test.yaml").write_text(UNIT_TEST)
    return dashboards, rules


@pytest.fixture(scope="module")
def sample_render(tmp_path_factory: pytest.TempPathFactory, sample_sources: tuple[Path, Path]) -> Rendered:
    dashboards, rules = sample_sources
    return render(chart_copy(tmp_path_factory.mktemp("chart"), dashboards=dashboards, rules=rules))


@pytest.fixture(scope="module")
def real_render(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(chart_copy(tmp_path_factory.mktemp("chart")))


def dashboard_configmaps(objects: Rendered) -> dict[str, dict[str, Any]]:
    """Dashboard ConfigMaps keyed by the file name they carry."""
    label = VALUES["monitoring"]["dashboards"]["label"]
    found = {}
    for configmap in objects.of_kind("ConfigMap"):
        if configmap["metadata"]["labels"].get(label) is not None:
            (file_name,) = configmap["data"]
            found[file_name] = configmap
    return found


def rule_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")], key=lambda p: p.name)


def expected_groups(folder: Path) -> list[dict[str, Any]]:
    return [group for path in rule_files(folder) for group in (yaml.safe_load(path.read_text()) or {})["groups"]]


def check_dashboards(objects: Rendered, folder: Path) -> None:
    dashboards = VALUES["monitoring"]["dashboards"]
    stack_sidecar = VALUES["kube-prometheus-stack"]["grafana"]["sidecar"]["dashboards"]
    configmaps = dashboard_configmaps(objects)
    files = sorted(folder.glob("*.json"))
    assert set(configmaps) == {path.name for path in files}, "one ConfigMap per dashboard file, no more"
    for path in files:
        configmap = configmaps[path.name]
        assert configmap["data"][path.name] == path.read_text(), f"{path.name} changed on its way into the chart"
        assert configmap["metadata"]["labels"][stack_sidecar["label"]] == stack_sidecar["labelValue"]
        assert configmap["metadata"]["annotations"] == {stack_sidecar["folderAnnotation"]: dashboards["folder"]}
        assert len(configmap["metadata"]["name"]) <= 63
        dashboard = json.loads(configmap["data"][path.name])
        assert "__inputs" not in dashboard, f"{path.name}: exported for sharing, not provisioning"
    names = [cm["metadata"]["name"] for cm in configmaps.values()]
    assert len(names) == len(set(names))


def check_rules(objects: Rendered, folder: Path, tmp_path: Path) -> None:
    groups = expected_groups(folder)
    rules = objects.of_kind("PrometheusRule")
    if not groups:
        assert rules == [], "no rule files, no PrometheusRule"
        return
    (rule,) = rules
    assert rule["spec"]["groups"] == groups, "the PrometheusRule holds exactly the files' groups, in file order"
    rendered_file = tmp_path / "rendered-rules.yaml"
    rendered_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rendered_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    test_pod = objects.get("Pod", f"{RELEASE}-test-prometheus-target")
    environment = {e["name"]: e.get("value") for e in pod_spec(test_pod)["containers"][0]["env"]}
    assert environment["RULE_GROUPS"].split(",") == [group["name"] for group in groups]


def test_sample_dashboards_become_labelled_configmaps_byte_for_byte(sample_render: Rendered, sample_sources):
    check_dashboards(sample_render, sample_sources[0])
    assert len(dashboard_configmaps(sample_render)) == 2, "notes.md is not a dashboard"
    assert f"{RELEASE}-dashboard-gridwatch-overview" in sample_render.names("ConfigMap")


def test_sample_rules_become_one_prometheusrule_without_the_unit_tests(
    sample_render: Rendered, sample_sources, tmp_path: Path
):
    check_rules(sample_render, sample_sources[1], tmp_path)
    (rule,) = sample_render.of_kind("PrometheusRule")
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert names == ["sample-availability", "sample-recording", "sample-latency"]
    annotations = rule["spec"]["groups"][0]["rules"][0]["annotations"]
    assert annotations["summary"] == "{{ $labels.instance }} is down", "alert templates pass through untouched"


def test_real_dashboards_are_all_in_the_chart(real_render: Rendered):
    check_dashboards(real_render, DASHBOARDS)


def test_real_rules_are_all_in_the_chart_and_pass_promtool(real_render: Rendered, tmp_path: Path):
    check_rules(real_render, RULES, tmp_path)


def test_real_rule_files_pass_promtool_as_they_are():
    files = rule_files(RULES)
    if not files:
        assert not list(RULES.glob("*.y*ml")), "rule files must end in .yaml or .yml"
        return
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", *map(str, files)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_backend_job_name_everywhere():
    """Rules and dashboards select the backend by job; the chart, compose and local Prometheus must all name it so."""
    job = JOB
    selected = set()
    for path in [*RULES.glob("*.yaml"), *DASHBOARDS.glob("*.json")]:
        selected |= set(re.findall(r'job\s*=\s*\\?"([^"\\]+)\\?"', path.read_text()))
    # and the stream consumers' own metrics by "gridwatch-stream", the job of the stream's ServiceMonitor; the
    # training CronJob's series by kube-state-metrics' job (kube-prometheus-stack names it so).
    assert selected == {job, "gridwatch-stream", "kube-state-metrics"}
    for config in (ROOT / "docker" / "prometheus" / "prometheus.yml", ROOT / "docker" / "prometheus-local.yml"):
        jobs = {entry["job_name"] for entry in yaml.safe_load(config.read_text())["scrape_configs"]}
        assert job in jobs, config


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    assert match, duration
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def test_the_retention_holds_every_window_the_rules_read():
    """A rule over a window longer than the retention never sees its whole window: the slowest SLO burn-rate tier
    (3 days) would never fire on the laptop default. Production keeps the 30-day SLO window itself."""
    windows = {
        window
        for path in RULES.glob("*.yaml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        for window in re.findall(r"\[(\d+[smhd])\]", rule["expr"])
    }
    longest = max(_seconds(window) for window in windows)
    assert longest == 3 * 86400
    chart = ROOT / "helm" / "gridwatch"
    # values.yaml: the umbrella's bundled stack; values-stack-production.yaml: production's stack release (upstream
    # keys at the top level).
    for values, section, at_least in (
        ("values.yaml", "kube-prometheus-stack", longest),
        ("values-stack-production.yaml", None, 30 * 86400),
    ):
        stack = yaml.safe_load((chart / values).read_text())
        spec = (stack[section] if section else stack)["prometheus"]["prometheusSpec"]
        assert _seconds(spec["retention"]) > at_least, values
