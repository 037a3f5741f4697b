"""What a readings message may hold (app.stream.messages): every refusal named, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.stream.messages import MAX_READINGS_PER_MESSAGE, Refusal, decode

READING = {"voltage": 231.2, "current": 12.5, "frequency": 50.01}


def test_a_single_reading_with_timestamp_and_sensor():
    decoded = decode(json.dumps({**READING, "timestamp": "2026-12-03T10:00:00Z", "sensor_id": 7}).encode())
    assert decoded.rejected == []
    (reading,) = decoded.readings
    assert reading.values == (231.2, 12.5, 50.01)
    assert reading.timestamp == 1_796_292_000.0
    assert reading.timestamp_text == "2026-12-03T10:00:00Z"
    assert reading.sensor_id == "7"


def test_epoch_seconds_and_no_timestamp_are_accepted():
    assert decode(json.dumps({**READING, "timestamp": 1_796_292_000}).encode()).readings[0].timestamp == 1_796_292_000
    assert decode(json.dumps(READING).encode()).readings[0].timestamp is None


def test_a_batch_scores_its_good_readings_and_refuses_only_the_bad_ones():
    bad = {"voltage": True, "current": 1.0, "frequency": 50.0}
    decoded = decode(json.dumps({"readings": [READING, bad, {"voltage": 1.0}, READING]}).encode())
    assert [reading.index for reading in decoded.readings] == [0, 3]
    assert [(item.index, item.reason) for item in decoded.rejected] == [
        (1, Refusal.invalid_value),
        (2, Refusal.missing_field),
    ]
    assert json.loads(decoded.rejected[0].payload) == bad
    assert "current, frequency" in decoded.rejected[1].detail


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", Refusal.not_json),
        (b'{"voltage": NaN, "current": 1, "frequency": 50}', Refusal.not_json),
        (b"[]", Refusal.bad_shape),
        (b'{"readings": []}', Refusal.bad_shape),
        (b'{"readings": {"voltage": 1}}', Refusal.bad_shape),
        (b'{"voltage": 1, "current": 1}', Refusal.missing_field),
        (b'{"voltage": "230", "current": 1, "frequency": 50}', Refusal.invalid_value),
        (b'{"voltage": 1e999, "current": 1, "frequency": 50}', Refusal.not_json),
        (b'{"voltage": 230, "current": 1, "frequency": 50, "timestamp": "2026-12-03 10:00"}', Refusal.invalid_value),
        (b'{"voltage": 230, "current": 1, "frequency": 50, "timestamp": false}', Refusal.invalid_value),
    ],
)
def test_each_refusal_names_its_reason(body: bytes, reason: Refusal):
    decoded = decode(body)
    assert decoded.readings == []
    (rejected,) = decoded.rejected
    assert rejected.reason is reason
    assert rejected.detail
    assert rejected.payload == body  # the whole message is dead-lettered as it came


def test_too_many_readings_in_one_message_are_refused_whole():
    body = json.dumps({"readings": [READING] * (MAX_READINGS_PER_MESSAGE + 1)}).encode()
    assert decode(body).rejected[0].reason is Refusal.bad_shape


@given(st.binary(max_size=200))
def test_any_bytes_decode_without_raising(body: bytes):
    decoded = decode(body)
    assert len(decoded.readings) + len(decoded.rejected) >= 1
