"""Say precisely what is wrong with a ``/predict`` body that did not decode, FastAPI-style, by row and field.

This is the slow path, taken only after the typed decode in ``app.serving.edge.parsing`` failed, and it is built to
cost no more than that decode whatever the body holds: fields it does not need are skipped by msgspec's C scanner,
each reading is held as its raw bytes (``msgspec.Raw``) until it is checked, and objects are built only for the
readings whose errors are listed: the first ``MAX_REPORTED_ERRORS`` errors, then a count of the invalid readings.

JSON has no NaN or Infinity, but Python clients send them anyway (``json.dumps`` writes ``NaN``), so the answer
names the field that holds one: each such literal, found where the scanner stops, is replaced in a copy of the body
by a string of the same length that cannot be confused with a number, and the scan starts again. At most
``MAX_REPORTED_ERRORS`` of them are replaced, so a body full of them costs a bounded number of scans.
"""

from __future__ import annotations

import codecs
import functools
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from app.serving.edge.http_errors import BatchTooLargeError, InvalidReadingsError

MAX_REPORTED_ERRORS = 20
"""A batch of 10,000 broken rows gets a readable answer: the first errors, then a count of the invalid readings."""

_NON_FINITE = {b"NaN": "NaN", b"Infinity": "Infinity", b"-Infinity": "-Infinity"}
"""The literals Python's ``json.dumps`` writes for non-finite floats, none of them JSON."""

_STAND_IN = {literal: b'"' + b"\x7f" * (len(literal) - 2) + b'"' for literal in _NON_FINITE}
"""A same-length stand-in for each literal: a JSON string of DEL characters, which no client writes in a value."""
_PLACEHOLDER = {_STAND_IN[literal]: shown for literal, shown in _NON_FINITE.items()}

_SCAN_STOPPED_AT = re.compile(r"\(byte (\d+)\)")
_FIRST_BYTE = re.compile(rb"[ \t\r\n]*(.)", re.DOTALL)
_RAW = msgspec.json.Decoder(msgspec.Raw)
_ROWS = msgspec.json.Decoder(list[msgspec.Raw])
_ABSENT = msgspec.Raw(b"")


class _Envelope(msgspec.Struct, gc=False):
    """The document with only ``readings`` kept, undecoded: every other field is skipped."""

    readings: msgspec.Raw = _ABSENT


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def json_invalid(message: str) -> InvalidReadingsError:
    return InvalidReadingsError([{"type": "json_invalid", "loc": ["body"], "msg": message}])


def too_short() -> InvalidReadingsError:
    return InvalidReadingsError(
        [{"type": "too_short", "loc": ["body", "readings"], "msg": "must contain at least one reading"}]
    )


def too_many_readings(count: int, max_batch: int) -> BatchTooLargeError:
    return BatchTooLargeError(
        f"batch of {count} readings exceeds MAX_BATCH={max_batch}; split it into smaller requests"
    )


def explain_invalid_body(
    body: bytes, reading_decoder: msgspec.json.Decoder, features: Sequence[str], max_batch: int
) -> InvalidReadingsError | BatchTooLargeError:
    """The error to raise for a body the typed decode refused. ``reading_decoder`` decodes one valid reading."""
    try:
        document = _well_formed(body)
        readings = _readings_of(document)
        rows = _ROWS.decode(readings)
    except InvalidReadingsError as error:
        return error
    if len(rows) > max_batch:
        return too_many_readings(len(rows), max_batch)
    if not rows:
        return too_short()
    lenient = _lenient_reading_decoder(tuple(features))
    errors: list[dict[str, Any]] = []
    invalid = listed = 0
    for index, row in enumerate(rows):
        try:
            reading_decoder.decode(row)
            continue
        except (msgspec.ValidationError, msgspec.DecodeError):
            invalid += 1
        if listed == invalid - 1 and len(errors) < MAX_REPORTED_ERRORS:  # every invalid reading so far is listed
            row_errors = list(_reading_errors(index, row, lenient, features))
            if errors and len(errors) + len(row_errors) > MAX_REPORTED_ERRORS:
                continue  # whole readings are listed; a first one with more errors than the cap is cut short
            errors.extend(row_errors[:MAX_REPORTED_ERRORS])
            listed += 1
    if invalid > listed:
        errors.append(
            {
                "type": "too_many_errors",
                "loc": ["body", "readings"],
                "msg": f"{invalid} of {len(rows)} readings are invalid; the errors of the first {listed} are listed",
            }
        )
    return InvalidReadingsError(errors or [{"type": "value_error", "loc": ["body"], "msg": "invalid batch"}])


def _well_formed(body: bytes) -> bytes | bytearray:
    """``body``, with its NaN and Infinity literals replaced by placeholders, once the scanner accepts it as JSON.

    Raises ``InvalidReadingsError`` naming what makes it malformed: a byte-order mark, a byte that is not UTF-8,
    too deep a nesting, more non-finite literals than are listed, or the scanner's own reason."""
    document: bytes | bytearray = body
    for _ in range(MAX_REPORTED_ERRORS + 1):
        try:
            _RAW.decode(document)
            return document
        except RecursionError:
            raise json_invalid("malformed JSON: nested too deeply") from None
        except msgspec.DecodeError as error:
            start, literal = _non_finite_literal_at(document, str(error))
            if literal is None:
                raise _malformed(body, str(error)) from None
        if isinstance(document, bytes):  # the first stand-in: copy the body once, then edit the copy in place
            document = bytearray(document)
        document[start : start + len(literal)] = _STAND_IN[literal]
    raise json_invalid(f"malformed JSON: more than {MAX_REPORTED_ERRORS} NaN or Infinity literals; send finite numbers")


def _non_finite_literal_at(document: bytes | bytearray, reason: str) -> tuple[int, bytes | None]:
    """Where the scanner stopped, and the non-finite literal that starts there, if one does."""
    found = _SCAN_STOPPED_AT.search(reason)
    if found is None:
        return 0, None
    stopped = int(found.group(1))
    for start in (stopped - 1, stopped):  # "-Infinity" stops the scanner at its "I", past the sign
        for literal in _NON_FINITE:
            if start >= 0 and document[start : start + len(literal)] == literal:
                return start, literal
    return stopped, None


def _malformed(body: bytes, reason: str) -> InvalidReadingsError:
    if body.startswith(codecs.BOM_UTF8):
        return json_invalid("the body starts with a byte-order mark: send UTF-8 without one")
    reason = reason.removeprefix("JSON is malformed: ")
    return json_invalid(f"malformed JSON: {reason[:1].lower()}{reason[1:]}")


def _readings_of(document: bytes | bytearray) -> msgspec.Raw:
    """The raw ``readings`` array of a well-formed document, or the error naming why there is none."""
    if _first_byte(document) != b"{":
        raise InvalidReadingsError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": f'expected a JSON object {{"readings": [...]}}, got {_json_type(document)}',
                }
            ]
        )
    readings = _ENVELOPE.decode(document).readings
    if not len(readings):
        raise InvalidReadingsError([{"type": "missing", "loc": ["body", "readings"], "msg": "field required"}])
    if _first_byte(readings) != b"[":
        raise InvalidReadingsError(
            [
                {
                    "type": "list_type",
                    "loc": ["body", "readings"],
                    "msg": f"must be an array of readings, got {_json_type(readings)}",
                }
            ]
        )
    return readings


@functools.lru_cache(maxsize=8)
def _lenient_reading_decoder(features: tuple[str, ...]) -> msgspec.json.Decoder:
    """A decoder of one reading that keeps each feature's raw value (empty if absent) and skips the rest."""
    fields = [(f"f{i}", msgspec.Raw, msgspec.field(name=name, default=_ABSENT)) for i, name in enumerate(features)]
    return msgspec.json.Decoder(msgspec.defstruct("RawReading", fields, gc=False))


def _reading_errors(
    row: int, reading: msgspec.Raw, lenient: msgspec.json.Decoder, features: Sequence[str]
) -> Iterator[dict[str, Any]]:
    if _first_byte(reading) != b"{":
        yield {
            "type": "model_attributes_type",
            "loc": ["body", "readings", row],
            "msg": f"each reading must be a JSON object, got {_json_type(reading)}",
        }
        return
    values = lenient.decode(reading)
    for index, name in enumerate(features):
        value: msgspec.Raw = getattr(values, f"f{index}")
        loc = ["body", "readings", row, name]
        if not len(value):
            yield {"type": "missing", "loc": loc, "msg": "field required"}
        elif (literal := _PLACEHOLDER.get(bytes(value))) is not None:
            yield {"type": "finite_number", "loc": loc, "msg": f"must be a finite number, got {literal}"}
        elif (kind := _json_type(value)) != "number":
            yield {"type": "float_type", "loc": loc, "msg": f"must be a number, got {kind}"}
        elif not _finite(value):
            text = bytes(value).decode()
            yield {"type": "finite_number", "loc": loc, "msg": f"must be a finite number, got {_excerpt(text)}"}


def _finite(number: msgspec.Raw) -> bool:
    try:
        return math.isfinite(msgspec.json.decode(number, type=float))
    except msgspec.ValidationError:  # "Number out of range": beyond a double, like 1e400
        return False


def _first_byte(raw: bytes | bytearray | msgspec.Raw) -> bytes:
    """The first byte of a JSON value, which tells its type: the value itself need not be decoded."""
    found = _FIRST_BYTE.match(memoryview(raw))
    return found.group(1) if found else b""


def _json_type(raw: bytes | bytearray | msgspec.Raw) -> str:
    """The JSON name of a raw value's type, plus a short excerpt for strings and booleans, for error messages."""
    first = _first_byte(raw)
    if first == b'"':
        if bytes(raw).strip() in _PLACEHOLDER:
            return "number"
        return f"string {_excerpt(repr(msgspec.json.decode(raw, type=str)))}"
    names = {b"{": "object", b"[": "array", b"t": "boolean true", b"f": "boolean false", b"n": "null"}
    return names.get(first, "number")


def _excerpt(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
