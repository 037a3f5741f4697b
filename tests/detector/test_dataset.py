"""Recorded readings from CSV and Parquet files: what a usable file gives, and the message each broken one gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import FEATURES
from app.detector.dataset import DataFileError, read_readings
from app.sim import GridSimulator
from app.tools.data_files import write_readings

HEADER = "timestamp,voltage,current,frequency,is_anomaly,anomaly_kind,sensor_id\n"


def write(tmp_path: Path, text: str, name: str = "readings.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(*lines: str) -> str:
    return HEADER + "".join(line + "\n" for line in lines)


GOOD = "2026-01-01T00:00:00Z,230.1,10.2,50.01,false,,m-1"
SPIKE = "2026-01-01T00:00:01Z,280.0,10.2,50.01,true,voltage_spike,m-1"


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_a_simulated_file_reads_back_exactly_with_its_labels(tmp_path: Path, file_format: str):
    batch = GridSimulator(seed=4, anomaly_rate=0.1).batch(500)
    path = tmp_path / f"readings.{file_format}"
    write_readings(batch.to_records(), path, file_format)
    readings = read_readings(path, FEATURES)
    np.testing.assert_array_equal(readings.X, batch.features())
    np.testing.assert_array_equal(readings.is_anomaly, batch.is_anomaly)
    assert readings.anomaly_kind == batch.anomaly_kind
    assert readings.source["rows"] == 500
    assert readings.source["format"] == file_format
    assert len(readings.source["sha256"]) == 64


def test_other_columns_are_ignored_and_labels_are_optional(tmp_path: Path):
    path = write(tmp_path, "meter,frequency,voltage,current\nm-1,50.0,230.0,10.0\nm-2,49.9,231.0,11.0\n")
    readings = read_readings(path, FEATURES)
    assert readings.X.tolist() == [[230.0, 10.0, 50.0], [231.0, 11.0, 49.9]]
    assert readings.is_anomaly is None
    assert readings.anomaly_kind is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("voltage,frequency\n230,50\n", "missing column(s) current (found: frequency, voltage)"),
        ("", "empty file: expected a header row"),
        (HEADER, "no readings: the file has a header but no rows"),
        (HEADER + "2026,230,10\n", "line 2 has 3 fields, the header has 7"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused_naming_what_is_wrong(tmp_path: Path, text: str, message: str):
    with pytest.raises(DataFileError, match=re_escape(message)):
        read_readings(write(tmp_path, text), FEATURES)


def test_bad_values_are_counted_with_the_first_rows_named(tmp_path: Path):
    bad = [GOOD.replace("230.1", value) for value in ("n/a", "", "nan", "inf")]
    path = write(tmp_path, rows(GOOD, *bad, GOOD, GOOD.replace("false", "maybe")))
    with pytest.raises(DataFileError) as refused:
        read_readings(path, FEATURES)
    message = str(refused.value)
    assert "5 of 7 rows have a missing, non-numeric or non-finite value" in message
    assert "row 2 voltage='n/a'; row 3 voltage=''; row 4 voltage='nan'; row 5 voltage='inf'" in message
    assert "row 7 is_anomaly='maybe'" in message
    assert "--drop-invalid" in message


def test_drop_invalid_leaves_the_bad_rows_out_and_counts_them(tmp_path: Path):
    path = write(tmp_path, rows(GOOD, GOOD.replace("10.2", "x"), SPIKE))
    readings = read_readings(path, FEATURES, drop_invalid=True)
    assert readings.X.tolist() == [[230.1, 10.2, 50.01], [280.0, 10.2, 50.01]]
    assert readings.is_anomaly.tolist() == [False, True]
    assert readings.anomaly_kind == (None, "voltage_spike")
    assert readings.source["dropped_invalid"] == 1


def test_too_few_rows_after_dropping_are_refused(tmp_path: Path):
    path = write(tmp_path, rows(GOOD, GOOD.replace("10.2", "x")))
    with pytest.raises(DataFileError, match="too few readings: 1 after dropping 1 invalid, at least 5 are needed"):
        read_readings(path, FEATURES, drop_invalid=True, min_rows=5)


def test_labels_can_be_required(tmp_path: Path):
    path = write(tmp_path, "voltage,current,frequency\n230,10,50\n")
    with pytest.raises(DataFileError, match="missing column"):
        read_readings(path, FEATURES, require_labels=True)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("readings.xlsx", b"PK", "unknown format '.xlsx': name it .csv or .parquet"),
        ("missing.csv", None, "no such file"),
        ("binary.csv", b"\xff\xfe\x00v\x00o", "not UTF-8 text"),
        ("broken.parquet", b"PAR1 not really", "not readable as Parquet"),
    ],
)
def test_unreadable_files_are_refused_with_a_message(tmp_path: Path, name: str, content: bytes | None, message: str):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataFileError, match=re_escape(message)):
        read_readings(path, FEATURES)


def test_parquet_columns_of_text_and_nulls_are_checked_like_csv(tmp_path: Path):
    import pyarrow as pa  # the training extra, installed by `make sync` and CI
    import pyarrow.parquet as pq

    path = tmp_path / "readings.parquet"
    table = pa.table(
        {"voltage": ["230.5", "abc", None], "current": [10.0, 11.0, 12.0], "frequency": [50.0, 50.0, None]}
    )
    pq.write_table(table, path)
    with pytest.raises(DataFileError, match=re_escape("2 of 3 rows")) as refused:
        read_readings(path, FEATURES)
    assert "row 2 voltage='abc'" in str(refused.value)
    assert "row 3 frequency=None" in str(refused.value) or "row 3 voltage=None" in str(refused.value)
    assert read_readings(path, FEATURES, drop_invalid=True).X.tolist() == [[230.5, 10.0, 50.0]]


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
