"""OpenTelemetry tracing, configured only through the standard ``OTEL_*`` environment variables.

Off by default (no exporter, no instrumentation, no overhead: the SDK is not even imported).
``OTEL_TRACES_EXPORTER`` picks ``console`` and/or ``otlp``; without it, setting ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
enough to send traces over OTLP/HTTP. ``OTEL_SERVICE_NAME`` names the service (default ``gridwatch``). The SDK itself
reads the rest
(``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, the OTLP endpoint, headers and timeouts,
``OTEL_BSP_*``).

Each request gets a server span from the FastAPI instrumentation (``/metrics``, ``/health``, ``/livez`` and the
Open Inference Protocol's ``/v2/health/...`` are not traced: probes and scrapes would drown the real traffic), and
scoring gets a child span with the batch size and the number of anomalies.

**Per worker process.** Uvicorn starts each worker as a fresh process and calls ``create_app`` there, and has no
post-fork hook. The tracer provider and the instrumentation are set up in ``create_app`` because the FastAPI
instrumentation has to wrap the middleware stack before Starlette builds it, which happens on the first ASGI call
(the lifespan itself). The parts that must not cross a fork, the exporters and the batch processors' background
threads, are started in the lifespan (``Tracing.start``) and flushed and stopped when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace

from app import __version__
from app.serving.settings import Settings, TracesExporter

if TYPE_CHECKING:  # the SDK and the instrumentation are imported only when tracing is on (lean default start)
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

UNTRACED_URLS = r"/metrics$,/health$,/livez$,/v2/health/"
"""Regexes (FastAPI instrumentation syntax) of the routes that are never traced."""
DEFAULT_SERVICE_NAME = "gridwatch"


@dataclass
class Tracing:
    """A worker's tracer provider and the exporters it sends spans to."""

    provider: TracerProvider
    exporters: Sequence[SpanExporter]
    batch: bool = True
    """Batch spans in a background thread (production); False exports each span as it ends (tests)."""
    _started: bool = field(default=False, init=False)

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("gridwatch", __version__)

    def start(self) -> None:
        """Attach the exporters; called in the worker's lifespan, after the process exists for good."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415

        if self._started:
            return
        for exporter in self.exporters:
            processor = BatchSpanProcessor(exporter) if self.batch else SimpleSpanProcessor(exporter)
            self.provider.add_span_processor(processor)
        self._started = True

    def shutdown(self) -> None:
        """Flush pending spans and stop the processors (end of the lifespan)."""
        self.provider.shutdown()


def _exporter(kind: TracesExporter, settings: Settings) -> SpanExporter:
    if kind is TracesExporter.console:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    protocol = (settings.otel_exporter_otlp_protocol or "http/protobuf").lower()
    if protocol != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: GridWatch ships the OTLP/HTTP exporter, use http/protobuf "
            "(port 4318 on an OpenTelemetry Collector)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter()


def build_tracing(
    settings: Settings,
    instance: str,
    *,
    exporters: Sequence[SpanExporter] | None = None,
    batch: bool = True,
) -> Tracing | None:
    """A ``Tracing`` for this worker, or None when tracing is off.

    ``exporters`` replaces what the environment asks for (tests pass an in-memory exporter).
    """
    if exporters is None:
        exporters = [_exporter(kind, settings) for kind in settings.traces_exporters()]
    if not exporters:
        return None
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    attributes = {
        SERVICE_NAME: settings.otel_service_name or DEFAULT_SERVICE_NAME,
        SERVICE_VERSION: __version__,
        SERVICE_INSTANCE_ID: instance,
    }
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler from OTEL_TRACES_SAMPLER
    return Tracing(provider=provider, exporters=list(exporters), batch=batch)


def instrument(app: FastAPI, tracing: Tracing) -> None:
    """Give every request a server span (except ``UNTRACED_URLS``); the ASGI send/receive spans are left out."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.provider,
        excluded_urls=UNTRACED_URLS,
        exclude_spans=["receive", "send"],
    )
