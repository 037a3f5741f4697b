"""The JSON log formatter's short way to a line writes exactly what python-json-logger writes for the same record, and
every record it does not take goes through the library's own ``format``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from pythonjsonlogger.core import BaseJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter

from app.serving.telemetry.logs import ACCESS_LOGGER, JsonLinesFormatter, TraceContextFilter

ACCESS_FIELDS = {
    "method": "POST",
    "path": "/predict",
    "route": "/predict",
    "status": 200,
    "duration_ms": 0.312,
    "response_bytes": 3231,
    "client": "127.0.0.1:50412",
}


def record(
    msg: object = "%s %s %d %.1fms",
    args: tuple[object, ...] = ("POST", "/predict", 200, 0.3),
    extra: dict[object, object] | None = None,
    *,
    level: int = logging.INFO,
    exc_info: object = None,
    stack_info: str | None = None,
    name: str = ACCESS_LOGGER,
) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(
        name, level, "(unknown file)", 0, msg, args, exc_info, extra=extra, sinfo=stack_info
    )


def library_line(formatter: JsonLinesFormatter, made: logging.LogRecord) -> str:
    """What python-json-logger's own ``format`` writes for the record, with the same configuration."""
    return OrjsonFormatter.format(formatter, made)


RECORDS = {
    "access line": lambda: record(extra=ACCESS_FIELDS),
    "no extra fields": lambda: record("model %s loaded", ("282b91a35705",)),
    "no arguments, a literal percent": lambda: record("100% of the readings", ()),
    "unicode and quotes": lambda: record('feeder "Nørre-7" → %s', ("ok",), {"feeder": "Nørre-7", "note": 'a "b"'}),
    "odd values": lambda: record(
        "x", (), {"when": datetime(2026, 12, 4, tzinfo=UTC), "where": Path("/models"), "none": None}
    ),
    "private and reserved extras": lambda: record("x", (), {"_private": 1, "color_message": "\x1b[32mx", "kept": 2}),
    "a non-string key": lambda: record("x", (), {7: "seven", "after": True}),
    "warning": lambda: record("slow scrape", (), {"seconds": 2.5}, level=logging.WARNING),
    "uvicorn's logger": lambda: record("Started server process [%d]", (12,), name="uvicorn.error"),
}


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_the_short_way_writes_the_librarys_line(make):
    formatter = JsonLinesFormatter()
    made = make()
    assert formatter.format(made) == library_line(formatter, made)


def test_trace_ids_added_by_the_filter_are_written_where_the_library_writes_them(monkeypatch):
    class Context:
        is_valid, trace_id, span_id = True, 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7

    class Span:
        def get_span_context(self) -> Context:
            return Context()

    monkeypatch.setattr("app.serving.telemetry.logs.trace.get_current_span", Span)
    formatter, made = JsonLinesFormatter(), record(extra=ACCESS_FIELDS)
    TraceContextFilter().filter(made)
    line = formatter.format(made)
    assert line == library_line(formatter, made)
    assert list(orjson.loads(line))[-3:] == ["trace_id", "span_id", "time"]


def test_the_access_line_keeps_its_fields_in_order():
    made = record(extra=ACCESS_FIELDS)
    fields = orjson.loads(JsonLinesFormatter().format(made))
    assert list(fields) == ["level", "logger", "message", *ACCESS_FIELDS, "time"]
    assert fields["message"] == "POST /predict 200 0.3ms"
    assert datetime.fromisoformat(fields["time"]) == datetime.fromtimestamp(made.created, tz=UTC)


def test_a_record_formatted_twice_gives_the_same_line():
    """A second handler formats the record again, with ``message`` already among its attributes."""
    formatter, made = JsonLinesFormatter(), record(extra=ACCESS_FIELDS)
    assert formatter.format(made) == formatter.format(made) == library_line(formatter, made)


def test_a_plain_record_takes_the_short_way(monkeypatch):
    def fail(*_: object) -> None:
        raise AssertionError("the library's add_fields ran")

    monkeypatch.setattr(BaseJsonFormatter, "add_fields", fail)
    assert orjson.loads(JsonLinesFormatter().format(record(extra=ACCESS_FIELDS)))["status"] == 200


def raised() -> tuple[type[BaseException], BaseException, object]:
    try:
        raise ValueError("boom")
    except ValueError as error:
        return ValueError, error, error.__traceback__


OTHER_RECORDS = {
    "an exception": lambda: record("failed", (), exc_info=raised()),
    "a stack": lambda: record("here", (), stack_info="Stack (most recent call last):\n  x"),
    "a dict message": lambda: record({"event": "swap", "version": "abc"}, ()),
}


@pytest.mark.parametrize("make", OTHER_RECORDS.values(), ids=OTHER_RECORDS.keys())
def test_other_records_go_through_the_librarys_format(make, monkeypatch):
    formatter, made = JsonLinesFormatter(), make()
    calls = []
    original = BaseJsonFormatter.add_fields

    def counted(self: BaseJsonFormatter, *args: object) -> None:
        calls.append(1)
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(BaseJsonFormatter, "add_fields", counted)
    line = formatter.format(made)
    assert calls == [1]
    assert line == library_line(formatter, made)


def test_a_record_missing_a_standard_attribute_goes_through_the_library(monkeypatch):
    """The short way finds extra fields by their place after ``LogRecord``'s own; a record whose own attributes were
    tampered with is not guessed at."""
    formatter, made = JsonLinesFormatter(), record(extra=ACCESS_FIELDS)
    del made.funcName
    calls = []
    original = BaseJsonFormatter.add_fields
    monkeypatch.setattr(BaseJsonFormatter, "add_fields", lambda self, *a: (calls.append(1), original(self, *a)))
    line = formatter.format(made)
    assert calls == [1]
    assert list(orjson.loads(line)) == ["level", "logger", "message", *ACCESS_FIELDS, "time"]
