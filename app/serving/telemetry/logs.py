"""Logging: JSON lines for log collectors (or plain text for a terminal), set up once per process.

Every record logged while a request is traced carries ``trace_id`` and ``span_id``, so a log line leads to its
trace and back. Used by the server and by every command that works on MODEL_DIR; it imports no web framework.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

ACCESS_LOGGER = "gridwatch.access"
"""The logger of the access log (``app.serving.edge.middleware``), one line per request."""
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, as tracing back-ends show them) when a sampled span is current."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def configure_logging(level: str, fmt: str = "text") -> None:
    """Route every logger (uvicorn's included) to stderr at ``level``, as JSON lines or text.

    Neither format prints where a call was made from, nor the thread or process: logging is told not to gather
    them (the optimisations of the logging documentation), which saves the access log a stack walk and three
    look-ups per request (docs/performance.md).
    """
    logging._srcfile = None  # no sys._getframe() walk per record (findCaller)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            OrjsonFormatter(  # orjson: the access log writes a line per request, json.dumps cost twice as much
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601 in UTC
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured duplicate
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(TraceContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
