"""Logging: JSON lines for log collectors (or plain text for a terminal), set up once per process.

Every record logged while a request is traced carries ``trace_id`` and ``span_id``, so a log line leads to its
trace and back. Used by the server and by every command that works on MODEL_DIR; it imports no web framework.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

ACCESS_LOGGER = "gridwatch.access"
"""The logger of the access log (``app.serving.edge.middleware``), one line per request."""
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD_ATTRIBUTES = list(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__)
"""The attributes ``LogRecord`` sets itself, in the order it sets them: whatever follows them in a record's
``__dict__`` was added later (``extra``, filters, the formatter's ``message``). A dict keeps insertion order, so
the last of them in its place means none was removed before it."""
_LAST_RECORD_ATTRIBUTE = len(_RECORD_ATTRIBUTES) - 1


class JsonLinesFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter as GridWatch configures it (``level``, ``logger``, ``message``, the
    record's extra fields, ``time`` in ISO 8601 UTC), with a shorter way to the same line for a plain record.

    The library builds every line in general steps: defaults, required and static fields, a scan of the record's
    twenty-odd standard attributes for extra ones, renames. For a record with a string message and no exception or
    stack (the access log's, one per request) this builds the same document directly, scanning only the attributes
    added after ``LogRecord``'s own. Anything else (an exception, a dict message, a record whose first attributes are
    not ``LogRecord``'s) goes through the library's own ``format``. ``tests/serving/test_json_lines.py`` holds the
    two to the same bytes.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601 in UTC
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured duplicate
        )

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        names = list(attributes)
        if (
            record.exc_info
            or record.exc_text
            or record.stack_info
            or not isinstance(record.msg, str)
            or len(names) <= _LAST_RECORD_ATTRIBUTE
            or names[_LAST_RECORD_ATTRIBUTE] != _RECORD_ATTRIBUTES[_LAST_RECORD_ATTRIBUTE]
        ):
            return super().format(record)
        record.message = message = record.getMessage()
        line: dict[Any, Any] = {"level": record.levelname, "logger": record.name, "message": message}
        skip, rename = self._skip_fields, self.rename_fields
        for name in names[_LAST_RECORD_ATTRIBUTE + 1 :]:  # the library's rule for extra fields (merge_record_extra)
            if name in skip or (hasattr(name, "startswith") and name.startswith("_")):
                continue
            line[rename.get(name, name)] = attributes[name]
        line["time"] = datetime.fromtimestamp(record.created, tz=UTC)
        return orjson.dumps(line, default=self.json_default, option=orjson.OPT_NON_STR_KEYS).decode("utf8")


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, as tracing back-ends show them) when a sampled span is current."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class LoopFlushedStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` that, on an event loop's thread, formats and writes its lines once per loop iteration.

    ``StreamHandler`` formats each record as it comes and flushes after it: a system call per access line, and the
    formatting code run once per request between the parsing, the scoring and the socket, each time with cold caches
    (in the live worker an access line cost twice what it costs in a loop). Here a record logged on the event loop's
    thread below WARNING is kept, and a callback the loop runs right after the work at hand formats every kept record
    in order and writes them in one call: on an idle server a line still leaves as soon as its request is done.
    Warnings and errors, and lines from other threads, are written at once, after the kept ones, so the order stays
    the order of logging; ``flush`` (``logging.shutdown`` at exit too) writes the kept ones.

    A kept record is formatted a moment later, as ``QueueHandler`` leaves its extra fields to be formatted later:
    what it refers to must not change within the loop iteration (the access log's fields are numbers and strings).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._kept: list[logging.LogRecord] = []
        self._flushing_on: asyncio.AbstractEventLoop | None = None
        """The loop whose callback will write the kept records (a loop that stopped first leaves them to the next)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Called with the handler's lock held (``Handler.handle``)."""
        if record.levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop's thread: nobody would flush later
                pass
            else:
                if not self._kept or self._flushing_on is not loop:
                    self._flushing_on = loop
                    loop.call_soon(self.flush)
                self._kept.append(record)
                return
        self._kept.append(record)  # after the kept ones, then all of them at once
        self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            kept, self._kept = self._kept, []
            for record in kept:
                self._write(record)
            super().flush()

    def _write(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # as StreamHandler.emit: a record that cannot be written is reported, not fatal
            self.handleError(record)


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
        handler.setFormatter(JsonLinesFormatter())  # orjson: json.dumps cost the access log twice as much
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(TraceContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
