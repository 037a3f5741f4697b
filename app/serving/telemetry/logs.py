"""Logging: JSON lines for log collectors (or plain text for a terminal), set up once per process.

Every record logged while a request is traced carries ``trace_id`` and ``span_id``, so a log line leads to its
trace and back. Used by the server and by every command that works on MODEL_DIR; it imports no web framework.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

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


class LoopFlushedStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` on a buffered stream that, on an event loop's thread, flushes once per loop iteration.

    ``StreamHandler`` flushes after every record: a system call per access line. Here a line written on the event
    loop's thread is flushed by a callback the loop runs right after the work at hand, so the lines of all the
    requests answered in one iteration leave in one write, and on an idle server a line leaves as soon as its request
    is done. Warnings and errors, and lines from other threads, are flushed at once, as before.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # as StreamHandler.emit: a record that cannot be written is reported, not fatal
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop's thread: nobody would flush later
            self.flush()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        self.flush()


def configure_logging(level: str, fmt: str = "text", *, loop_flushed: bool = False) -> None:
    """Route every logger (uvicorn's included) to stderr at ``level``, as JSON lines or text; ``loop_flushed``
    (serving workers): through a ``LoopFlushedStreamHandler``.

    Neither format prints where a call was made from, nor the thread or process: logging is told not to gather
    them (the optimisations of the logging documentation), which saves the access log a stack walk and three
    look-ups per request (docs/performance.md).
    """
    logging._srcfile = None  # no sys._getframe() walk per record (findCaller)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.StreamHandler = logging.StreamHandler(sys.stderr)
    if loop_flushed:  # stderr's own buffer, not flushed at each line: the handler decides when
        stream = open(sys.stderr.fileno(), "w", buffering=64 * 1024, encoding="utf-8", closefd=False)  # noqa: SIM115
        handler = LoopFlushedStreamHandler(stream)
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
