"""Reading the monitoring-as-code files for tests: rules, dashboards, their PromQL, and the metric names it uses.

``prometheus-rules/*.yaml`` (rule files) and ``grafana-dashboards/*.json`` are the single source that the chart and
the compose stack read; these helpers let the tests check them against what the service really exports, with
promtool, and against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.support import ROOT

RULES_DIR = ROOT / "prometheus-rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
DASHBOARDS_DIR = ROOT / "grafana-dashboards"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL_BASE = "https://github.com/gridwatch/gridwatch/blob/main/docs/runbook.md"

PROMETHEUS_METRICS = frozenset({"up", "ALERTS"})
"""Series Prometheus itself makes: the scrape health of every target, and the state of every alert."""

KUBERNETES_METRICS = frozenset(
    {
        # kube-state-metrics (kube-prometheus-stack's subchart)
        "kube_cronjob_created",
        "kube_cronjob_spec_suspend",
        "kube_cronjob_status_last_successful_time",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas",
        "kube_deployment_status_replicas_available",
        "kube_horizontalpodautoscaler_info",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "kube_horizontalpodautoscaler_spec_min_replicas",
        "kube_horizontalpodautoscaler_spec_target_metric",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_status_target_metric",
        "kube_pod_container_resource_limits",
        "kube_pod_container_resource_requests",
        "kube_pod_container_status_restarts_total",
        # cAdvisor, scraped through the kubelet by kube-prometheus-stack
        "container_cpu_cfs_periods_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    }
)
"""Kubernetes metrics the Capacity dashboard and the training alert may use (checked for syntax only in dashboards: no
cluster in the tests; the alert's are promtool-tested)."""

CHART_RECORDED = frozenset({"namespace_cronjob:training_max_success_age_seconds:setting"})
"""Series the chart records per release rather than the shared rule files: settings a rule compares with
(templates/monitoring/prometheusrule-training.yaml; tests/deploy/test_chart_training.py proves the names match)."""

GRAFANA_WINDOWS = {"$__rate_interval": "15s", "$__interval": "15s", "$__range": "10m"}
"""Grafana's range variables, as short windows that fit a test Prometheus scraping every second."""


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel target, a template variable or an annotation."""

    dashboard: str
    where: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.where}: {self.expr}"


def rule_files() -> list[Path]:
    """The rule files the chart and compose load: top-level ``*.yaml`` only (tests live in tests/)."""
    return sorted(RULES_DIR.glob("*.yaml"))


def rules() -> list[dict[str, Any]]:
    return [
        rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels(panel)
        else:
            yield panel


def _variable_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query (``label_values(expr, label)``, ``query_result(expr)``)."""
    if match := re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip(), re.DOTALL):
        return match.group(1)
    if match := re.fullmatch(r"query_result\((.*)\)", query.strip(), re.DOTALL):
        return match.group(1)
    return query


def queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL expression of a dashboard: panel targets, query variables and annotations."""
    found = [
        Query(name, f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            found.append(Query(name, f"variable {variable['name']}", _variable_expr(query)))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(Query(name, f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def all_queries() -> list[Query]:
    return [query for name, dashboard in dashboards().items() for query in queries(name, dashboard)]


def substitute(expr: str) -> str:
    """An expression as Grafana would send it: template variables set to All (``.*``), ranges to test windows."""
    for variable, window in GRAFANA_WINDOWS.items():
        expr = expr.replace(variable, window)
    expr = re.sub(r"\$\{?(namespace|pod|deployment)\}?", ".*", expr)
    assert "$__" not in expr, f"unsubstituted Grafana range in {expr}"
    assert not re.search(r"\$\{?[a-z]", expr), f"unsubstituted template variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects, read from its syntax tree (promql-parser), never by regex."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(substitute(expr)), pre_visit=visit)
    return names


def is_gridwatch_only(expr: str) -> bool:
    """True if an expression needs nothing but the service's metrics, recording rules and Prometheus' own series."""
    return not (metric_names(expr) & KUBERNETES_METRICS)


def runbook_anchors() -> set[str]:
    """GitHub's anchors of docs/runbook.md's headings (lower case, punctuation dropped, spaces to dashes)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors
