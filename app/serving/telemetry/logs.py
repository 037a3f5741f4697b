"""Logging: JSON lines for log collectors (or plain text for a terminal), set up once per process.

Every record logged while a request is traced carries ``trace_id`` and ``span_id``, so a log line leads to its
trace and back. Used by the server and by every command that works on MODEL_DIR; it imports no web framework.

**In a serving worker, lines are formatted and written off the request path** (``background=True``): a logging call
only stamps the record (time, trace) and queues it; ``BackgroundLogWriter``'s thread formats the records with the
same formatter and writes all that are waiting in one system call. The access log writes a line per request, and
formatting plus a write per line took about a tenth of a worker's time under load. The lines and their order are
the same; a worker that exits normally writes every queued line first (``atexit``); one killed with SIGKILL loses
what it had not written yet, a few milliseconds of lines.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
from logging.handlers import QueueHandler

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


WRITER_BATCH = 512
"""At most this many records formatted and written per system call."""


class _Stop:
    """Put in the queue to stop the writer after the records before it."""


class BackgroundLogWriter:
    """Formats and writes, on its own thread, the records a ``QueueHandler`` queues, all waiting ones at a time."""

    def __init__(self, handler: logging.StreamHandler) -> None:
        self.handler = handler
        self.queue: queue.SimpleQueue[logging.LogRecord | _Stop] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gridwatch-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            records = [self.queue.get()]
            while len(records) < WRITER_BATCH:
                try:
                    records.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for record in records:
                if isinstance(record, _Stop):
                    stopping = True
                    continue
                try:
                    lines.append(self.handler.format(record) + self.handler.terminator)
                except Exception:  # as logging does: a record that cannot be formatted is reported, not fatal
                    self.handler.handleError(record)
            self._write("".join(lines))

    def _write(self, text: str) -> None:
        if not text:
            return
        try:
            self.handler.stream.write(text)
            self.handler.flush()
        except Exception:  # a closed or full stream: say so on stderr, as logging does, and keep going
            self.handler.handleError(logging.makeLogRecord({"msg": text}))

    def stop(self) -> None:
        """Write every record queued so far, then end the thread."""
        if self._thread.is_alive():
            self.queue.put(_Stop())
            self._thread.join(timeout=10)


class _QueueingHandler(QueueHandler):
    """Queues the record itself: ``QueueHandler.prepare`` would format it (and copy it) on the caller's thread,
    which is the work this handler exists to move off the request path."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_writer: BackgroundLogWriter | None = None


def configure_logging(level: str, fmt: str = "text", *, background: bool = False) -> None:
    """Route every logger (uvicorn's included) to stderr at ``level``, as JSON lines or text; with ``background``,
    through a ``BackgroundLogWriter`` (serving workers)."""
    global _writer  # noqa: PLW0603 - one writer per process, replaced when logging is configured again
    if _writer is not None:
        _writer.stop()
        _writer = None
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
    root: logging.Handler = handler
    if background:
        _writer = BackgroundLogWriter(handler)
        atexit.register(_writer.stop)
        root = _QueueingHandler(_writer.queue)
    root.addFilter(TraceContextFilter())  # on the caller's thread: the request's span is current there
    logging.basicConfig(level=level.upper(), handlers=[root], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
