"""Turn a ``/predict`` body into the model's input array; when that fails, ``app.serving.edge.body_errors`` says why.

The body is decoded by msgspec into typed structs that hold only the model's features: every other field of the
document or of a reading (``timestamp``, ``sensor_id``, or megabytes of padding) is skipped by the C decoder
without becoming a Python object, and a value that is not a JSON number fails at once. So a valid batch costs one
small struct per reading, and a body crafted to expand into millions of objects costs nothing but the scan.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from app.serving.edge.body_errors import explain_invalid_body, json_invalid, too_many_readings, too_short

MIN_READING_BYTES = 40
"""The fewest bytes a reading takes in a body: ``{"voltage":1,"current":1,"frequency":1}`` is 40."""
INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size (about 1,000 readings) are parsed on the event loop; bigger ones in the thread pool.

Parsing costs about a microsecond per reading and holds the GIL either way, but on the event loop a burst of big
bodies is parsed back to back before the loop polls again, and the probes wait behind all of them; in a thread the
loop gets the GIL back every few milliseconds. Small bodies stay inline: a thread hop costs more than parsing them."""


def most_readings(body: bytes, max_batch: int, min_reading_bytes: int = MIN_READING_BYTES) -> int:
    """An upper bound of the readings ``body`` can hold, known before parsing it, so that work can be refused
    before it is done (``MAX_INFLIGHT_READINGS``). Real bodies, with decimals and spaces, hold about 60 bytes a
    reading, so the bound overestimates them by half at most. ``min_reading_bytes`` is the fewest bytes a reading
    takes in the body's format."""
    return max(1, min(len(body) // min_reading_bytes, max_batch))


class _BatchDecoder:
    """A decoder of ``{"readings": [{feature: number, ...}, ...]}`` for one model's features, and the getter that
    turns a decoded reading into its row of the array."""

    def __init__(self, features: tuple[str, ...]) -> None:
        # Positional field names, each renamed to its feature: a feature need not be a Python identifier.
        fields = [(f"f{i}", float, msgspec.field(name=name)) for i, name in enumerate(features)]
        # Types built at run time, so typed as Any: the static checker cannot know their fields.
        reading: Any = msgspec.defstruct("Reading", fields, gc=False)
        batch: Any = msgspec.defstruct("Batch", [("readings", list[reading])], gc=False)
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(batch)
        self.reading_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reading)
        self.row: Callable[[Any], Any] = operator.attrgetter(*(name for name, _, _ in fields))
        self.width = len(features)


@functools.lru_cache(maxsize=8)
def _batch_decoder(features: tuple[str, ...]) -> _BatchDecoder:
    return _BatchDecoder(features)


def parse_readings(body: bytes, features: Sequence[str], max_batch: int) -> np.ndarray:
    """Decode and validate a ``{"readings": [...]}`` body into an ``(n, len(features))`` float64 array.

    Rows keep their order. Extra fields in a reading (``timestamp``, ``sensor_id``...) are ignored. Raises
    ``InvalidReadingsError`` (-> 422) naming the first problems by row and field, or ``BatchTooLargeError``
    (-> 413) beyond ``max_batch`` rows.
    """
    batch = _batch_decoder(tuple(features))
    if not body.isascii():  # the scan skips ignored strings without checking them: JSON must be UTF-8 throughout
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise json_invalid(f"the body is not UTF-8 (byte {error.start})") from None
    try:
        readings = batch.decoder.decode(body).readings
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise explain_invalid_body(body, batch.reading_decoder, features, max_batch) from None
    if len(readings) > max_batch:
        raise too_many_readings(len(readings), max_batch)
    if not readings:
        raise too_short()
    # msgspec refuses numbers beyond a double's range ("1e400"), and JSON has no NaN: every value is finite.
    # Filled straight from the readings' values: a list of row tuples first, then np.array of it, took half again.
    values = map(batch.row, readings)
    flat = values if batch.width == 1 else itertools.chain.from_iterable(values)
    X = np.fromiter(flat, dtype=np.float64, count=len(readings) * batch.width)
    return X.reshape(len(readings), batch.width)
