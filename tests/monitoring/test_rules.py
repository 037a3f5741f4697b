"""The Prometheus rule files: promtool accepts them, their unit tests pass, and each alert is complete and tested."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from tests.monitoring.support import (
    CHART_RECORDED,
    KUBERNETES_METRICS,
    RULE_TESTS_DIR,
    RULES_DIR,
    RUNBOOK_URL_BASE,
    alerting_rules,
    recording_rules,
    rule_files,
    runbook_anchors,
)
from tests.support import require_tool

ALERTS = alerting_rules()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]


def unit_tests() -> list[dict]:
    return [
        test for path in sorted(RULE_TESTS_DIR.glob("*.yaml")) for test in yaml.safe_load(path.read_text())["tests"]
    ]


def test_promtool_accepts_the_rule_files():
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, rule_files())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == len(ALERTS) + len(recording_rules())


RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(path: Path):
    """One promtool run per file (the day-long scenarios take seconds each), so a failure names its file."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False, cwd=RULES_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda path: path.name)
def test_unit_tests_evaluate_groups_in_file_order(path: Path):
    """promtool evaluates rule groups in random order unless told: an alert could read the recorded series of the
    previous step, or none at all when the step is longer than the 5-minute lookback. Every test file runs the
    groups as they are written, recording rules first."""
    test = yaml.safe_load(path.read_text())
    files = [RULE_TESTS_DIR / name for name in test["rule_files"]]
    groups = [group["name"] for file in files for group in yaml.safe_load(file.read_text())["groups"]]
    assert sorted(file.resolve() for file in files) == [file.resolve() for file in rule_files()]
    assert files[0].name == "gridwatch-recording.yaml", "recording rules before the alerts that read them"
    assert test["group_eval_order"] == groups


def test_rule_folder_holds_rule_files_only():
    """The chart and compose load prometheus-rules/*.yaml as rule files: unit tests must stay in tests/."""
    for path in rule_files():
        content = yaml.safe_load(path.read_text())
        assert set(content) == {"groups"}, f"{path.name} is not a plain rule file"
    for path in RULE_TESTS_DIR.glob("*.yaml"):
        assert "rule_files" in yaml.safe_load(path.read_text()), f"{path.name} is not a promtool test file"
    assert not list(RULES_DIR.glob("*.yml")), "use .yaml, which is what the chart globs"


def test_group_names_are_unique_across_files():
    """The chart puts every file's groups into one PrometheusRule, where a repeated group name is an error."""
    names = [group["name"] for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]]
    assert len(names) == len(set(names)), sorted(names)


def test_recording_rules_are_named_level_metric_operations():
    names = [rule["record"] for rule in recording_rules()]
    assert len(names) == len(set(names))
    for name in names:
        level, metric, operations = name.split(":")
        assert re.fullmatch(r"[a-z_]+", level), name
        assert re.fullmatch(r"[a-z_]+", metric), name
        assert re.fullmatch(r"[a-z0-9_]+", operations), name


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every series selector of an expression, from its syntax tree (inside functions, ranges and joins too)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def test_every_rule_selects_the_gridwatch_job():
    """The scrape job is `gridwatch` everywhere (chart ServiceMonitor, compose, tests), `gridwatch-stream` for the
    stream consumers' own metrics: an unscoped selector
    would mix in another application's `requests_total`. Recorded series are scoped by their own rule, and
    `ALERTS` (Prometheus' own) is selected by alert name."""
    recorded = {rule["record"] for rule in recording_rules()}
    for rule in [*recording_rules(), *ALERTS]:
        for selector in selectors(rule["expr"]):
            if selector.name in recorded:
                continue
            matchers = {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}
            if selector.name == "ALERTS":
                assert any(name == "alertname" for name, _, _ in matchers), rule
                continue
            if selector.name in CHART_RECORDED:
                continue
            where = rule.get("alert") or rule["record"]
            # The stream consumers' own metrics are scraped as job "gridwatch-stream" (docs/streaming.md), the
            # Kubernetes objects' by kube-state-metrics.
            job = "gridwatch-stream" if selector.name.startswith("stream_") else "gridwatch"
            if selector.name in KUBERNETES_METRICS:
                job = "kube-state-metrics"
            assert ("job", "MatchOp.Equal", job) in matchers, f"{selector.name} in {where}"


def test_the_selector_check_sees_every_selector():
    """What the check above relies on: selectors inside ranges, functions and joins, recorded names with colons."""
    expr = 'rate(a{job="gridwatch"}[5m]) and on () absent(up{job="x"}) / on () group_left () (1 - slo:b_c:ratio)'
    assert [s.name for s in selectors(expr)] == ["a", "up", "slo:b_c:ratio"]


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_alert_has_severity_value_and_runbook(rule: dict):
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "$value" in annotations["description"], "the description carries the measured value"
    assert rule.get("for"), "every alert waits a justified `for:` before firing"
    url = annotations["runbook_url"]
    assert url == f"{RUNBOOK_URL_BASE}#{rule['alert'].lower()}"
    assert url.split("#", 1)[1] in runbook_anchors(), f"docs/runbook.md has no heading for {rule['alert']}"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_is_unit_tested_firing_and_silent(alert: str):
    """Each alert has a promtool case where it fires and one where it stays silent (a healthy or boundary series)."""
    cases = [case for test in unit_tests() for case in test.get("alert_rule_test", []) if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), f"no unit test shows {alert} firing"
    assert any(not case.get("exp_alerts") for case in cases), f"no unit test shows {alert} silent"


@pytest.mark.parametrize("alert", sorted(set(ALERT_NAMES) - {"GridWatchBackendAbsent"}))
def test_alert_carries_the_namespace(alert: str):
    """Alertmanager groups and inhibits by namespace (GridWatchBackendDown silences the per-target alerts of its
    namespace): every alert the unit tests show firing carries it. GridWatchBackendAbsent has no target to take it
    from."""
    fired = [
        expected
        for test in unit_tests()
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
        for expected in case.get("exp_alerts") or []
    ]
    assert fired
    assert all(expected["exp_labels"].get("namespace") for expected in fired), alert


def test_runbook_documents_the_slo_and_idle_traffic():
    anchors = runbook_anchors()
    assert {"the-latency-slo", "the-availability-slo", "burn-rate-alerts-tiers-and-minimum-traffic"} <= anchors
    text = (RULES_DIR.parent / "docs" / "runbook.md").read_text()
    assert "Idle traffic is not an alert" in text
