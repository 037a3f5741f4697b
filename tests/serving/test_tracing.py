"""OpenTelemetry: spans and their relation, configuration by OTEL_* variables, trace ids in the logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from app.detector.model import Detector
from app.serving.app import create_app
from app.serving.settings import Settings
from app.serving.telemetry.logs import ACCESS_LOGGER, TraceContextFilter
from app.serving.telemetry.tracing import build_tracing
from tests.support import ServerProcess

NORMAL = {"voltage": 230.4, "current": 11.2, "frequency": 50.003}
EXTREME = {"voltage": 410.0, "current": 200.0, "frequency": 45.0}


@pytest.fixture
def traced(settings: Settings, detector: Detector):
    exporter = InMemorySpanExporter()
    with TestClient(create_app(settings, detector=detector, span_exporters=[exporter])) as client:
        yield client, exporter


def test_predict_has_a_server_span_with_an_inference_child(traced, detector: Detector):
    client, exporter = traced
    client.post("/predict", json={"readings": [NORMAL, EXTREME, EXTREME]})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, inference = spans["POST /predict"], spans["score_batch"]
    assert server.kind is SpanKind.SERVER
    assert inference.parent is not None
    assert inference.parent.span_id == server.context.span_id
    assert inference.context.trace_id == server.context.trace_id
    assert inference.attributes["gridwatch.batch_size"] == 3
    assert inference.attributes["gridwatch.anomalies"] == 2
    assert inference.attributes["gridwatch.model_version"] == detector.version
    assert server.attributes["http.route"] == "/predict"
    assert server.resource.attributes["service.name"] == "gridwatch"


def test_probes_and_scrapes_are_not_traced(traced):
    client, exporter = traced
    for path in ("/metrics", "/health", "/livez"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()
    client.get("/model")
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /model"]


def test_rejected_request_is_traced_without_inference(traced):
    client, exporter = traced
    client.post("/predict", json={"readings": []})
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /predict"
    # Old or stable HTTP semantic conventions, depending on OTEL_SEMCONV_STABILITY_OPT_IN.
    status = span.attributes.get("http.response.status_code", span.attributes.get("http.status_code"))
    assert status == 422


def test_access_log_lines_carry_the_trace_id(traced, caplog: pytest.LogCaptureFixture):
    client, exporter = traced
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(TraceContextFilter())
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        client.post("/predict", json={"readings": [NORMAL]})
        client.get("/health")
    finally:
        access.removeHandler(handler)
    predict, health = records
    (server,) = [s for s in exporter.get_finished_spans() if s.name == "POST /predict"]
    assert predict.trace_id == format(server.context.trace_id, "032x")
    assert predict.route == "/predict"
    assert predict.status == 200
    assert predict.duration_ms > 0
    assert not hasattr(health, "trace_id")  # /health is not traced


def settings_from(env: dict[str, str]) -> Settings:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("OTEL_"):
                patch.delenv(key)
        for key, value in {**clean, **env}.items():
            patch.setenv(key, value)
        return Settings()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
    ],
)
def test_exporters_follow_the_standard_variables(env: dict[str, str], expected: tuple[str, ...]):
    assert tuple(e.value for e in settings_from(env).traces_exporters()) == expected


def test_unknown_exporter_is_refused_at_start():
    with pytest.raises(ValidationError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        settings_from({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_tracing_is_off_by_default_and_builds_the_requested_exporters():
    assert build_tracing(settings_from({}), "host:1") is None
    tracing = build_tracing(settings_from({"OTEL_TRACES_EXPORTER": "console,otlp"}), "host:1")
    assert tracing is not None
    assert [type(e) for e in tracing.exporters] == [ConsoleSpanExporter, OTLPSpanExporter]
    named = build_tracing(settings_from({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "feeder-7"}), "h:1")
    assert named.provider.resource.attributes["service.name"] == "feeder-7"
    assert named.provider.resource.attributes["service.instance.id"] == "h:1"


def test_grpc_protocol_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="http/protobuf"):
        build_tracing(settings_from({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), "h:1")


@pytest.mark.slow
def test_real_server_logs_json_with_trace_ids_matching_exported_spans(model_dir: Path):
    """A real `gridwatch serve`: JSON log lines on stderr, spans from the console exporter on stdout."""
    env = {
        "MODEL_DIR": str(model_dir),
        "TRAIN_IF_MISSING": "0",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    server = ServerProcess(env=env)
    with server:
        httpx2.post(f"{server.url}/predict", json={"readings": [NORMAL, EXTREME]})
    output = server.log()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith('{"level"')]
    access = [line for line in lines if line["logger"] == "gridwatch.access"]
    (predict,) = [line for line in access if line["path"] == "/predict"]
    assert predict["status"] == 200
    assert predict["route"] == "/predict"
    health = [line for line in access if line["path"] == "/health"]
    assert health
    assert all("trace_id" not in line for line in health)
    # The console exporter prints each span as a JSON object; the access line's trace id is among them.
    assert f'"trace_id": "0x{predict["trace_id"]}"' in output


def test_otlp_exporter_is_imported_only_when_used():
    code = "import sys, app.serving.app; print('opentelemetry.exporter.otlp.proto.http' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
