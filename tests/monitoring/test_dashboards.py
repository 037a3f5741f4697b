"""The Grafana dashboards: valid for the Grafana of kube-prometheus-stack, navigable, and built on real metrics.

Whether each expression parses and returns data is proven against a real Prometheus in test_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.scoring.shadow import ShadowScorer
from tests.monitoring.support import (
    CHART_RECORDED,
    KUBERNETES_METRICS,
    PROMETHEUS_METRICS,
    all_queries,
    dashboards,
    metric_names,
    panels,
    queries,
    recording_rules,
    rules,
)
from tests.support import ROOT

DASHBOARDS = dashboards()
EXPECTED = {
    "gridwatch-service.json": ("gridwatch-service", "GridWatch / Service"),
    "gridwatch-detector.json": ("gridwatch-detector", "GridWatch / Detector"),
    "gridwatch-capacity.json": ("gridwatch-capacity", "GridWatch / Capacity"),
    "gridwatch-stream.json": ("gridwatch-stream", "GridWatch / Stream"),
}
JOBS = {name: 'job="gridwatch-stream"' if name == "gridwatch-stream.json" else 'job="gridwatch"' for name in EXPECTED}
"""The job each dashboard's variables select: the stream consumers' own, or the HTTP backend's."""
# Classic JSON model. Grafana 13.2 (kube-prometheus-stack 88.6.2 ships Grafana chart 12.11, app 13.2) migrates an older
# schemaVersion on load; 39 is Grafana 11.0's, old enough for every Grafana still supported.
SCHEMA_VERSION = 39


def test_the_four_dashboards_exist_with_fixed_uid_and_title():
    assert {name: (board["uid"], board["title"]) for name, board in DASHBOARDS.items()} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_is_provisionable(name: str):
    """What Grafana's sidecar provisioning needs: no import-time inputs, no fixed id, a known schema."""
    board = DASHBOARDS[name]
    assert "__inputs" not in board
    assert "__requires" not in board
    assert board["id"] is None
    assert board["schemaVersion"] == SCHEMA_VERSION
    assert "gridwatch" in board["tags"]
    ids = [panel["id"] for panel in board["panels"]] + [
        p["id"] for row in board["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids are unique"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variables_for_datasource_namespace_and_pod(name: str):
    variables = {variable["name"]: variable for variable in DASHBOARDS[name]["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == "prometheus", "kube-prometheus-stack's Prometheus datasource uid"
    for scoped in ("namespace", "pod"):
        variable = variables[scoped]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*", "All must also match series without the label (compose, laptop)"
        assert JOBS[name] in variable["definition"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_queries_the_datasource_variable_and_sets_a_unit(name: str):
    for panel in panels(DASHBOARDS[name]):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("description"), f"{title}: say what it shows and what to look for"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title} has no unit"
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", title
            assert target["expr"].strip(), title


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_fit_the_grid_without_overlapping(name: str):
    occupied: dict[tuple[int, int], str] = {}
    for panel in DASHBOARDS[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_links_to_the_other_dashboards_and_alert_annotations(name: str):
    board = DASHBOARDS[name]
    links = [link for link in board["links"] if link["type"] == "dashboards"]
    assert links, "a links row to the other GridWatch dashboards"
    assert all("gridwatch" in link["tags"] and link["includeVars"] and link["keepTime"] for link in links)
    alerts = [a for a in board["annotations"]["list"] if "ALERTS{" in a.get("expr", "")]
    assert alerts, "firing alerts are marked on the graphs"
    assert alerts[0]["enable"]
    assert 'alertname=~"GridWatch.*"' in alerts[0]["expr"]


def test_each_dashboard_has_its_subject():
    """Guards against a panel quietly dropped: each dashboard shows what the issue asks of it."""
    metrics = {
        name: set().union(*(metric_names(q.expr) for q in queries(name, board))) for name, board in DASHBOARDS.items()
    }
    assert {
        "requests_total",
        "request_latency_seconds_bucket",
        "requests_in_flight",
        "inference_latency_seconds_bucket",
        "batch_size_readings_bucket",
        "readings_scored_total",
    } <= metrics["gridwatch-service.json"]
    assert {
        "anomalies_total",
        "anomaly_ratio_window",
        "feature_drift_score",
        "feature_window_mean",
        "model_info",
    } <= metrics["gridwatch-detector.json"]
    assert {
        "kube_deployment_spec_replicas",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "kube_pod_container_resource_requests",
        "kube_pod_container_resource_limits",
        "readings_scored_total",
    } <= metrics["gridwatch-capacity.json"]
    assert {
        "stream_readings_consumed_total",
        "stream_results_published_total",
        "stream_consumer_pending",
        "stream_consumer_ack_pending",
        "stream_end_to_end_latency_seconds_bucket",
        "stream_redeliveries_total",
        "stream_dead_letters_total",
        "stream_connected",
        "stream_results_duplicate_total",
        "stream_failed_batches_total",
        "stream_reconnects_total",
        "anomalies_total",
        "readings_scored_total",
        "up",
    } <= metrics["gridwatch-stream.json"]
    stream_queries = [q.expr for q in queries("gridwatch-stream.json", DASHBOARDS["gridwatch-stream.json"])]
    assert all('job="gridwatch-stream"' in expr for expr in stream_queries if "ALERTS" not in expr)
    (by_reason,) = [
        panel for panel in panels(DASHBOARDS["gridwatch-stream.json"]) if panel["title"] == "Dead letters by reason"
    ]
    assert "sum by (reason)" in by_reason["targets"][0]["expr"]


def test_increase_counts_each_event_once_per_step():
    """Grafana evaluates a range panel once per step ($__interval). increase() over a wider window counts each event
    in several steps: $__rate_interval is at least four scrape intervals, so a heatmap of increase over it showed each
    request about four times. A per-step increase() spans exactly its step, and the panel's minimum step holds four
    of the chart's 15 s scrapes (an increase needs two samples); an increase over the dashboard's $__range is one
    total, read as the last value; instant queries (30-day budgets) are one value."""
    per_step = []
    for board in DASHBOARDS.values():
        for panel in panels(board):
            for target in panel["targets"]:
                if target.get("instant"):
                    continue
                for window in re.findall(r"\bincrease\([^()]*\[([^\]]+)\]", target["expr"]):
                    assert window in {"$__interval", "$__range"}, f"{panel['title']}: increase over {window}"
                    if window == "$__range":
                        assert panel["options"]["reduceOptions"]["calcs"] == ["lastNotNull"], panel["title"]
                    else:
                        assert duration_seconds(panel["interval"]) >= 4 * 15, panel["title"]
                        per_step.append(panel["title"])
    assert "/predict latency distribution" in per_step
    (heatmap,) = [panel for panel in panels(DASHBOARDS["gridwatch-service.json"]) if panel["type"] == "heatmap"]
    assert heatmap["targets"][0]["format"] == "heatmap", "Grafana turns cumulative le buckets into per-bucket counts"


def duration_seconds(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh])", text).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


def test_service_dashboard_shows_each_slo_budget_and_burn_rate_per_window():
    """The SLO row reads the objectives and the error ratios the alerts read (recording rules), one bar per window."""
    board = DASHBOARDS["gridwatch-service.json"]
    rows = [panel for panel in board["panels"] if panel["type"] == "row"]
    (slo_row,) = [row for row in rows if row["title"].startswith("SLOs")]
    below = sorted(
        (panel for panel in board["panels"] if panel["type"] != "row"),
        key=lambda panel: (panel["gridPos"]["y"], panel["gridPos"]["x"]),
    )
    next_row_y = min(row["gridPos"]["y"] for row in rows if row["gridPos"]["y"] > slo_row["gridPos"]["y"])
    slo_panels = [panel for panel in below if slo_row["gridPos"]["y"] < panel["gridPos"]["y"] < next_row_y]
    recorded = {rule["record"] for rule in recording_rules()}
    windows = [
        rule["record"].rsplit("_rate", 1)[1]
        for rule in recording_rules()
        if rule["record"].startswith("namespace:predict_errors:ratio_rate")
    ]
    assert windows == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    for slo, ratio in (("latency", "namespace:predict_slow_requests"), ("availability", "namespace:predict_errors")):
        objective = f"slo:predict_{slo}_objective:ratio"
        assert objective in recorded
        budget = [p for p in slo_panels if p["type"] == "stat" and slo in p["title"].lower()]
        burn = [p for p in slo_panels if p["type"] == "bargauge" and slo in p["title"].lower()]
        assert len(budget) == len(burn) == 1, [p["title"] for p in slo_panels]
        ((budget_target,),) = [budget[0]["targets"]]
        assert "[30d]" in budget_target["expr"]
        assert objective in budget_target["expr"]
        assert budget_target["instant"], "one 30-day evaluation, not one per step"
        exprs = [target["expr"] for target in burn[0]["targets"]]
        assert [metric_names(expr) for expr in exprs] == [{f"{ratio}:ratio_rate{w}", objective} for w in windows]


def exported_metric_names(client: TestClient) -> set[str]:
    """Sample names of a real /metrics answer, after traffic that touches every labelled series."""
    client.post("/predict", json={"readings": [{"voltage": 231.0, "current": 12.0, "frequency": 50.0}]})
    client.post("/predict", json={"readings": [{"voltage": "x"}]})
    client.get("/health")
    ShadowScorer().use(client.app.state.model.get().detector)  # a challenger, so its labelled series exist
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {sample.name for family in families for sample in family.samples}


def stream_metric_names() -> set[str]:
    """Sample names of the stream consumer's own metrics (``app.stream.metrics``), which its /metrics serves beside
    the scoring core's. Read in a child process: importing them here would add them to this process's registry,
    where the HTTP service's tests would then find series the service never exports."""
    code = (
        "import app.stream.metrics\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "print(generate_latest(REGISTRY).decode())"
    )
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_dashboards_and_rules_use_only_exported_metrics(client: TestClient):
    """Every metric a dashboard or rule names is one the service exports, a recording rule, Prometheus' own
    (`up`, `ALERTS`), or a Kubernetes metric from the explicit list."""
    exported = exported_metric_names(client) | stream_metric_names()
    assert {"requests_total", "request_latency_seconds_bucket", "feature_drift_score"} <= exported
    assert {"stream_consumer_pending", "stream_dead_letters_total"} <= exported
    recorded = {rule["record"] for rule in recording_rules()}
    allowed = exported | recorded | PROMETHEUS_METRICS | KUBERNETES_METRICS | CHART_RECORDED
    used = {str(query): metric_names(query.expr) for query in all_queries()}
    used |= {rule.get("alert") or rule["record"]: metric_names(rule["expr"]) for rule in rules()}
    unknown = {where: names - allowed for where, names in used.items() if names - allowed}
    assert not unknown, f"metrics the service does not export: {unknown}"
    # the allowlist of Kubernetes metrics carries no GridWatch name by mistake
    assert not (KUBERNETES_METRICS & exported)


def test_metric_names_come_from_every_selector():
    """The extraction the check above relies on sees selectors inside functions, subqueries, joins and __name__."""
    expr = (
        'sum(rate(a_total{job="gridwatch"}[5m])) / on (namespace) group_left () max_over_time(b[$__range:1m]) '
        'and {__name__="c"} or label_replace(d, "x", "$1", "y", "(.*)") unless absent(e)'
    )
    assert metric_names(expr) == {"a_total", "b", "c", "d", "e"}
