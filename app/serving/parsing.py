"""Turn a ``/predict`` body into the model's input array, or say precisely what is wrong with it.

The request path is hot, so valid batches go through a fast path: orjson decodes the body, one list per
feature is pulled out, ``set(map(type, ...))`` checks every value is a real JSON number at C speed, and NumPy
builds the array; no object is created per reading. Only when that fails does the slow path walk the batch
value by value to name each problem by row and field (``readings[3].voltage: ...``), FastAPI-style.

JSON has no NaN or Infinity, but Python clients send them anyway (``json.dumps`` writes ``NaN``), and a number
like ``1e400`` overflows a double. orjson rejects such documents outright; the slow path re-reads them with the
standard library (which accepts those tokens) so the answer can name the offending field instead of a column.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from app.serving.errors import BatchTooLargeError, InvalidReadingsError

MAX_REPORTED_ERRORS = 20
"""A batch of 10,000 broken rows gets a readable answer: the first errors, then a count of the rest."""

_NUMBER_TYPES = frozenset({int, float})  # exact types: bool is a subclass of int but is not a reading
_MISSING = object()


MIN_READING_BYTES = 40
"""The fewest bytes a reading takes in a body: ``{"voltage":1,"current":1,"frequency":1}`` is 40."""


def most_readings(body: bytes, max_batch: int) -> int:
    """An upper bound of the readings ``body`` can hold, known before parsing it, so that work can be refused
    before it is done (``MAX_INFLIGHT_READINGS``). Real bodies, with decimals and spaces, hold about 60 bytes a
    reading, so the bound overestimates them by half at most."""
    return max(1, min(len(body) // MIN_READING_BYTES, max_batch))


def parse_readings(body: bytes, features: Sequence[str], max_batch: int) -> np.ndarray:
    """Decode and validate a ``{"readings": [...]}`` body into an ``(n, len(features))`` float64 array.

    Rows keep their order. Extra fields in a reading (``timestamp``, ``sensor_id``...) are ignored. Raises
    ``InvalidReadingsError`` (-> 422) listing each problem, or ``BatchTooLargeError`` (-> 413) beyond
    ``max_batch`` rows.
    """
    document = _decode(body)
    readings = _readings_list(document)
    if len(readings) > max_batch:
        raise BatchTooLargeError(
            f"batch of {len(readings)} readings exceeds MAX_BATCH={max_batch}; split it into smaller requests"
        )
    X = _fast_array(readings, features)
    if X is None:
        raise InvalidReadingsError(_find_errors(readings, features))
    return X


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        if body.startswith(codecs.BOM_UTF8):
            raise _json_invalid("the body starts with a byte-order mark: send UTF-8 without one") from None
        try:  # json.loads(bytes) would guess UTF-16 or UTF-32 and accept them: decode strictly first
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _json_invalid(f"the body is not UTF-8 (byte {error.start})") from None
        try:  # accepts NaN, Infinity and 1e400, so validation can name the field that holds them
            return json.loads(text)
        except (ValueError, RecursionError):
            raise _json_invalid(f"malformed JSON: {fast_error}") from None


def _json_invalid(message: str) -> InvalidReadingsError:
    return InvalidReadingsError([{"type": "json_invalid", "loc": ["body"], "msg": message}])


def _readings_list(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise InvalidReadingsError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": f'expected a JSON object {{"readings": [...]}}, got {_json_type(document)}',
                }
            ]
        )
    readings = document.get("readings", _MISSING)
    if readings is _MISSING:
        raise InvalidReadingsError([{"type": "missing", "loc": ["body", "readings"], "msg": "field required"}])
    if not isinstance(readings, list):
        raise InvalidReadingsError(
            [
                {
                    "type": "list_type",
                    "loc": ["body", "readings"],
                    "msg": f"must be an array of readings, got {_json_type(readings)}",
                }
            ]
        )
    if not readings:
        raise InvalidReadingsError(
            [{"type": "too_short", "loc": ["body", "readings"], "msg": "must contain at least one reading"}]
        )
    return readings


def _fast_array(readings: list[Any], features: Sequence[str]) -> np.ndarray | None:
    """The array if every reading is an object with a finite number for every feature, else None."""
    try:
        columns = [[reading[name] for reading in readings] for name in features]
    except (KeyError, TypeError):  # a missing field, or a reading that is not an object
        return None
    for column in columns:
        if not set(map(type, column)) <= _NUMBER_TYPES:
            return None
    try:
        X = np.array(columns, dtype=np.float64).T
    except OverflowError:  # an integer beyond the range of a double
        return None
    if not np.isfinite(X).all():
        return None
    return np.ascontiguousarray(X)


def _find_errors(readings: list[Any], features: Sequence[str]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    total = 0
    for row, reading in enumerate(readings):
        for error in _reading_errors(row, reading, features):
            total += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(error)
    if total > len(errors):
        errors.append(
            {
                "type": "too_many_errors",
                "loc": ["body", "readings"],
                "msg": f"{total - len(errors)} more errors not listed",
            }
        )
    return errors


def _reading_errors(row: int, reading: Any, features: Sequence[str]) -> list[dict[str, Any]]:
    if not isinstance(reading, dict):
        return [
            {
                "type": "model_attributes_type",
                "loc": ["body", "readings", row],
                "msg": f"each reading must be a JSON object, got {_json_type(reading)}",
            }
        ]
    errors = []
    for name in features:
        loc = ["body", "readings", row, name]
        value = reading.get(name, _MISSING)
        if value is _MISSING:
            errors.append({"type": "missing", "loc": loc, "msg": "field required"})
        elif type(value) not in _NUMBER_TYPES:
            errors.append({"type": "float_type", "loc": loc, "msg": f"must be a number, got {_json_type(value)}"})
        elif not _finite(value):
            errors.append(
                {
                    "type": "finite_number",
                    "loc": loc,
                    "msg": f"must be a finite number, got {_excerpt(repr(value))}",
                }
            )
    return errors


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # int too large for a double
        return False


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, plus a short excerpt, for error messages."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, str):
        return f"{name} {_excerpt(repr(value))}"
    if isinstance(value, bool):
        return f"{name} {str(value).lower()}"
    return name


def _excerpt(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
