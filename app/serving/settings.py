"""Service configuration, read from the environment in this one place.

Every setting is an environment variable with a default that works on a laptop; the README's configuration
table and the Helm chart's values mirror this class. Invalid values stop the service at start-up with a message
naming the variable, instead of surfacing later as odd behaviour.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from app.common.api_key import checked_api_key, read_api_key_file
from app.scoring.settings import ScoringSettings


class TracesExporter(StrEnum):
    none = "none"
    console = "console"
    otlp = "otlp"


class Settings(ScoringSettings):
    """The HTTP service's settings: the scoring core's plus the server's, the edge's, the key and telemetry. Field
    names are the environment variable names (case-insensitive)."""

    host: str = Field("127.0.0.1", description="Interface to bind; the container image sets 0.0.0.0.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    workers: int = Field(
        1, ge=1, le=64, description="Uvicorn worker processes; in Kubernetes keep 1 and scale with replicas."
    )
    max_batch: int = Field(10_000, ge=1, description="Most readings accepted in one /predict request (else 413).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, checked before parsing (else 413).",
    )
    max_inflight: int = Field(
        64,
        ge=1,
        description="Most /predict requests one worker handles at once; beyond it, 503 with Retry-After at once.",
    )
    max_buffered_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Most bytes of request bodies one worker holds while they arrive; beyond it, 503 with Retry-After "
        "(bodies are read before a request takes its MAX_INFLIGHT slot, so slow senders cannot hold the slots).",
    )
    max_inflight_readings: int = Field(
        20_000,
        ge=1,
        description="Most readings one worker holds for scoring at once; a batch beyond it gets 503 with Retry-After "
        "at once (a single batch is always admitted when none is in flight).",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) read; beyond it, 431 and the connection closed.",
    )
    max_connections: int | None = Field(
        None,
        ge=16,
        description="Most client connections one worker keeps open; a new one beyond it closes the connection that has "
        "waited longest for its request head. Default: the open-file limit minus 128.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to deliver a complete request head (after opening, or after the first "
        "byte of a keep-alive request); else 408 (or, if it sent nothing, a plain close).",
    )
    body_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request body; a slower one gets 408."
    )
    graceful_timeout: float = Field(
        20.0,
        ge=0,
        description="Seconds SIGTERM waits for in-flight requests; keep below the pod's termination grace period.",
    )
    api_key: SecretStr | None = Field(
        None, description="If set, /predict and /model require it in the X-API-Key header (probes, metrics stay open)."
    )
    api_key_file: Path | None = Field(
        None, description="A file holding the API key (a mounted Secret); used instead of API_KEY when set."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser; empty turns CORS off."
    )
    prometheus_multiproc_dir: Path | None = Field(
        None,
        description="prometheus-client's multiprocess folder. Chosen and emptied by `gridwatch serve` when WORKERS>1.",
    )
    otel_traces_exporter: str | None = Field(
        None,
        description="Standard OpenTelemetry variable: none, console, otlp (comma-separated). Default: otlp when an "
        "OTLP endpoint is set, else none (tracing off).",
    )
    otel_exporter_otlp_endpoint: str | None = Field(None, description="Standard OpenTelemetry OTLP endpoint.")
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, description="Standard OpenTelemetry OTLP endpoint for traces only."
    )
    otel_exporter_otlp_protocol: str | None = Field(
        None, description="Standard OpenTelemetry OTLP protocol; only http/protobuf is shipped."
    )
    otel_service_name: str | None = Field(None, description="Standard OpenTelemetry service name (default gridwatch).")
    otel_sdk_disabled: bool = Field(False, description="Standard OpenTelemetry switch: true turns tracing off.")
    pod_name: str | None = Field(None, description="Set by the chart through the downward API.")
    node_name: str | None = Field(None, description="Set by the chart through the downward API.")

    @model_validator(mode="after")
    def _check_traces_exporter(self) -> Settings:
        self.traces_exporters()  # raises naming OTEL_TRACES_EXPORTER if it holds an unknown exporter
        return self

    _required_api_key: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _read_api_key(self) -> Settings:
        """Read the key once, at start-up: a key no client could send stops the service with a message
        (``app.common.api_key`` says which keys those are; the UI reads the file the same way)."""
        if self.api_key_file is not None:
            self._required_api_key = read_api_key_file(self.api_key_file)
        elif self.api_key is not None:
            key = self.api_key.get_secret_value().strip()
            if not key:
                raise ValueError("API_KEY is set but empty; unset it to turn the key off")
            self._required_api_key = checked_api_key(key, "API_KEY")
        return self

    def required_api_key(self) -> str | None:
        """The key /predict and /model require, or None when the API is open (the default)."""
        return self._required_api_key

    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def traces_exporters(self) -> tuple[TracesExporter, ...]:
        """Which span exporters to run, following the OpenTelemetry environment conventions.

        ``OTEL_TRACES_EXPORTER`` decides when set; otherwise traces go to OTLP when an OTLP endpoint is configured
        and nowhere (tracing off, no overhead) when not. ``OTEL_SDK_DISABLED=true`` turns everything off.
        """
        if self.otel_sdk_disabled:
            return ()
        if self.otel_traces_exporter is None:
            endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
            return (TracesExporter.otlp,) if endpoint else ()
        names = [name.strip().lower() for name in self.otel_traces_exporter.split(",") if name.strip()]
        try:
            exporters = tuple(TracesExporter(name) for name in names)
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={self.otel_traces_exporter!r}: supported exporters are none, console, otlp"
            ) from None
        return tuple(exporter for exporter in exporters if exporter is not TracesExporter.none)

    def instance_id(self) -> str:
        """Who answered: the pod (or host) name plus the process id, unique per worker process.

        Computed on call, not at start-up, because each uvicorn worker is its own process with its own pid.
        """
        return f"{self.pod_name or socket.gethostname()}:{os.getpid()}"
