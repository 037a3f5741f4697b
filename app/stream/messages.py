"""What a readings message may hold, and the one reason a refused one is dead-lettered with.

A message holds one reading ``{"voltage", "current", "frequency"}`` (plus an optional ``timestamp``, RFC 3339 or
epoch seconds, and optional ids such as ``sensor_id``), or a batch ``{"readings": [reading, ...]}``. Each reading
of a batch is judged on its own: the good ones are scored, each bad one is dead-lettered with its reason, so one
broken sensor never holds back the feeder's other readings. A body that is not a JSON object is refused whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from app import FEATURES

MAX_READINGS_PER_MESSAGE = 10_000
"""The most readings one message may carry, like MAX_BATCH for /predict."""


class Refusal(StrEnum):
    """Why a message or a reading was dead-lettered: the ``reason`` label of ``stream_dead_letters_total``."""

    not_json = "not_json"
    """The body is not JSON (or not UTF-8, or holds NaN or Infinity, which JSON has no word for)."""
    bad_shape = "bad_shape"
    """JSON, but neither a reading nor ``{"readings": [...]}`` (or too many readings)."""
    missing_field = "missing_field"
    invalid_value = "invalid_value"
    """A feature that is not a finite number, or a timestamp that is neither RFC 3339 nor epoch seconds."""
    max_deliveries = "max_deliveries"
    """Scoring or publishing failed on every one of STREAM_MAX_DELIVER deliveries."""


@dataclass(frozen=True)
class Reading:
    """One valid reading: its features in model order, and what identifies it."""

    index: int
    """Its position in the message (0 for a single reading)."""
    values: tuple[float, ...]
    timestamp: float | None
    """Epoch seconds, when the reading carries a timestamp."""
    timestamp_text: str | None
    """The timestamp as sent, echoed in the result."""
    sensor_id: str | None


@dataclass(frozen=True)
class Rejected:
    """A reading (or a whole message, ``index`` None) that is dead-lettered, with what it held and why."""

    index: int | None
    reason: Refusal
    detail: str
    payload: bytes


@dataclass(frozen=True)
class Decoded:
    readings: list[Reading]
    rejected: list[Rejected]


def decode(body: bytes) -> Decoded:
    """The readings of one message and the parts of it that are refused; never raises for bad input."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return Decoded([], [Rejected(None, Refusal.not_json, f"not JSON: {error}", body)])
    if not isinstance(document, dict):
        detail = 'JSON, but not an object: expected a reading or {"readings": [...]}'
        return Decoded([], [Rejected(None, Refusal.bad_shape, detail, body)])
    if "readings" not in document:
        return _one(0, document, body)
    items = document["readings"]
    if not isinstance(items, list) or not items:
        return Decoded([], [Rejected(None, Refusal.bad_shape, '"readings" must be a non-empty array', body)])
    if len(items) > MAX_READINGS_PER_MESSAGE:
        detail = f"{len(items)} readings in one message, more than {MAX_READINGS_PER_MESSAGE}"
        return Decoded([], [Rejected(None, Refusal.bad_shape, detail, body)])
    readings: list[Reading] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        one = _one(index, item, None)
        readings += one.readings
        rejected += one.rejected
    return Decoded(readings, rejected)


def _one(index: int, item: Any, body: bytes | None) -> Decoded:
    def refuse(reason: Refusal, detail: str) -> Decoded:
        payload = body if body is not None else orjson.dumps(item)
        return Decoded([], [Rejected(index if body is None else None, reason, detail, payload)])

    if not isinstance(item, dict):
        return refuse(Refusal.bad_shape, f"reading {index} is not a JSON object")
    missing = [name for name in FEATURES if name not in item]
    if missing:
        return refuse(Refusal.missing_field, f"reading {index} has no {', '.join(missing)}")
    values = []
    for name in FEATURES:
        value = item[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return refuse(Refusal.invalid_value, f"reading {index}: {name}={value!r} is not a finite number")
        values.append(float(value))
    try:
        timestamp, text = _timestamp(item.get("timestamp"))
    except ValueError as error:
        return refuse(Refusal.invalid_value, f"reading {index}: {error}")
    sensor = item.get("sensor_id")
    return Decoded([Reading(index, tuple(values), timestamp, text, None if sensor is None else str(sensor))], [])


def _timestamp(value: Any) -> tuple[float | None, str | None]:
    """(epoch seconds, as sent) of an RFC 3339 string or epoch seconds; (None, None) when absent."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise ValueError(f"timestamp={value!r} is neither RFC 3339 nor epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"timestamp={value!r} is not finite")
        return float(value), str(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp={value!r} is neither RFC 3339 nor epoch seconds") from None
        if moment.tzinfo is None:
            raise ValueError(f"timestamp={value!r} has no time zone")
        return moment.timestamp(), value
    raise ValueError(f"timestamp={value!r} is neither RFC 3339 nor epoch seconds")
