"""Recorded readings from a file (CSV or Parquet), checked before anything is trained or evaluated on them.

A grid operator's data is never as clean as the simulator's: a meter that reported ``n/a``, an empty cell, a column
named ``Voltage`` instead of ``voltage``, an export cut off after the header. Each of these gets one message that
names the file, the column and the first rows concerned, with a count of the rest, and never a traceback; rows with
bad values are refused unless the caller asks for them to be dropped (``--drop-invalid``).

The file holds one reading per row: the model's features (``voltage``, ``current``, ``frequency``) are required,
``is_anomaly`` (true/false, 1/0, yes/no) and ``anomaly_kind`` are optional labels, and every other column, a
``timestamp`` included, is ignored. CSV is read with the standard library; Parquet needs pyarrow, which only the
``training`` extra installs, so the serving image stays lean.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.common.columns import KIND, LABEL
from app.detector.errors import GridWatchError

FORMATS = ("csv", "parquet")
MAX_LISTED_PROBLEMS = 5
"""A file with 40,000 bad cells gets a readable message: the first few, then a count."""

_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n", ""})


class DataFileError(GridWatchError):
    """A data file that cannot be used as it is; the message says what to fix."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class RecordedReadings:
    """The usable rows of a data file, in file order."""

    X: np.ndarray
    """``(n, len(features))`` float64, every value finite."""
    is_anomaly: np.ndarray | None
    """Boolean labels, or None when the file has no ``is_anomaly`` column."""
    anomaly_kind: tuple[str | None, ...] | None
    """The labelled kind of each anomalous row (None for normal rows), or None without an ``anomaly_kind`` column."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the rows came from, as stored in the model metadata: file name, format, SHA-256, row counts."""

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def labelled(self) -> bool:
        return self.is_anomaly is not None

    def rows(self, selected: np.ndarray) -> RecordedReadings:
        """The rows where ``selected`` (a boolean mask or an index array) holds, with the same source."""
        kinds = None if self.anomaly_kind is None else tuple(np.asarray(self.anomaly_kind, dtype=object)[selected])
        labels = None if self.is_anomaly is None else self.is_anomaly[selected]
        return RecordedReadings(X=self.X[selected], is_anomaly=labels, anomaly_kind=kinds, source=self.source)


def read_readings(
    path: Path,
    features: Sequence[str],
    *,
    drop_invalid: bool = False,
    require_labels: bool = False,
    min_rows: int = 1,
) -> RecordedReadings:
    """Read and check ``path``; raises ``DataFileError`` naming what is wrong.

    ``drop_invalid`` leaves out rows with a missing, non-numeric or non-finite feature value (or an unreadable
    label) instead of refusing the file; the count of dropped rows is kept in ``source``. ``min_rows`` applies to
    the rows that remain.
    """
    file_format = _format_of(path)
    columns, total = (_read_csv if file_format == "csv" else _read_parquet)(path, features)
    missing = [name for name in (*features, *([LABEL] if require_labels else [])) if name not in columns]
    if missing:
        found = ", ".join(sorted(columns)) or "none"
        raise DataFileError(path, f"missing column(s) {', '.join(missing)} (found: {found})")
    if total == 0:
        raise DataFileError(path, "no readings: the file has a header but no rows")

    problems: list[str] = []
    invalid = np.zeros(total, dtype=bool)
    matrix = np.empty((total, len(features)), dtype=np.float64)
    for index, name in enumerate(features):
        values, bad = _numbers(columns[name])
        matrix[:, index] = values
        invalid |= bad
        problems += [f"row {row + 1} {name}={_show(columns[name][row])}" for row in np.flatnonzero(bad)[:10]]
    labels = None
    if LABEL in columns:
        labels, bad = _booleans(columns[LABEL])
        invalid |= bad
        problems += [f"row {row + 1} {LABEL}={_show(columns[LABEL][row])}" for row in np.flatnonzero(bad)[:10]]

    dropped = int(invalid.sum())
    if dropped and not drop_invalid:
        listed = "; ".join(sorted(problems, key=_row_number)[:MAX_LISTED_PROBLEMS])
        raise DataFileError(
            path,
            f"{dropped} of {total} rows have a missing, non-numeric or non-finite value ({listed}"
            f"{'; ...' if dropped > MAX_LISTED_PROBLEMS else ''}); fix them, or pass --drop-invalid to leave "
            "those rows out",
        )
    keep = ~invalid
    kinds = None
    if KIND in columns:
        kinds = tuple(_kind(value) for value, kept in zip(columns[KIND], keep, strict=True) if kept)
    readings = RecordedReadings(
        X=np.ascontiguousarray(matrix[keep]),
        is_anomaly=None if labels is None else labels[keep],
        anomaly_kind=kinds,
        source={
            "source": "file",
            "file": path.name,
            "format": file_format,
            "sha256": _sha256(path),
            "rows": total,
            "dropped_invalid": dropped,
        },
    )
    if len(readings) < min_rows:
        after = f" after dropping {dropped} invalid" if dropped else ""
        raise DataFileError(path, f"too few readings: {len(readings)}{after}, at least {min_rows} are needed")
    return readings


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "pq":
        suffix = "parquet"
    if suffix not in FORMATS:
        raise DataFileError(path, f"unknown format {path.suffix or '(no extension)'!r}: name it .csv or .parquet")
    if not path.is_file():
        raise DataFileError(path, "no such file" if not path.exists() else "not a file")
    return suffix


def _read_csv(path: Path, features: Sequence[str]) -> tuple[dict[str, list[Any]], int]:
    """The wanted columns as lists of strings, and the row count. Column names are matched exactly."""
    wanted = {*features, LABEL, KIND}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataFileError(path, "empty file: expected a header row naming the columns")
            _refuse_repeated(path, [name.strip() for name in header], wanted)
            positions = {name.strip(): index for index, name in enumerate(header) if name.strip() in wanted}
            columns: dict[str, list[Any]] = {name: [] for name in positions}
            width = len(header)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line, as spreadsheets write at the end
                if len(row) != width:
                    raise DataFileError(path, f"line {line} has {len(row)} fields, the header has {width}")
                for name, index in positions.items():
                    columns[name].append(row[index])
    except UnicodeDecodeError as error:
        raise DataFileError(path, f"not UTF-8 text (byte {error.start}): is it really a CSV file?") from None
    except csv.Error as error:
        raise DataFileError(path, f"not readable as CSV: {error}") from None
    except OSError as error:
        raise DataFileError(path, f"cannot be read: {error.strerror or error}") from None
    total = len(next(iter(columns.values()))) if columns else 0
    return columns, total


def _read_parquet(path: Path, features: Sequence[str]) -> tuple[dict[str, list[Any] | np.ndarray], int]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 (optional: only the training extra installs it)
    except ImportError:
        raise DataFileError(
            path,
            "reading Parquet needs pyarrow, which the `training` extra installs "
            "(`uv sync --extra training`, or `pip install 'gridwatch[training]'`); or export the data as CSV",
        ) from None
    import pyarrow as pa  # noqa: PLC0415

    try:
        parquet = pq.ParquetFile(path)
        _refuse_repeated(path, parquet.schema_arrow.names, {*features, LABEL, KIND})
        names = [name for name in parquet.schema_arrow.names if name in {*features, LABEL, KIND}]
        table = parquet.read(columns=names)
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(path, f"not readable as Parquet: {error}") from None
    columns: dict[str, list[Any] | np.ndarray] = {}
    for name in names:
        column = table.column(name)
        kind = column.type
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and column.null_count == 0:
            columns[name] = column.to_numpy().astype(np.float64 if name != LABEL else np.int64)
        else:
            columns[name] = column.to_pylist()
    return columns, table.num_rows


def _refuse_repeated(path: Path, header: Sequence[str], wanted: set[str]) -> None:
    """A column GridWatch reads must be named once: with two, which one trains the model would be a guess."""
    twice = sorted({name for name in header if name in wanted and list(header).count(name) > 1})
    if twice:
        raise DataFileError(path, f"the header names {', '.join(twice)} more than once; keep one column of each")


def _numbers(values: list[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column as float64 (NaN where unusable) and the mask of unusable cells: empty, not a number, not finite."""
    if isinstance(values, np.ndarray):
        numbers = values.astype(np.float64)
    else:
        try:  # fast: NumPy parses a whole column of well-formed text at C speed
            numbers = np.array(values, dtype=np.float64)
        except (ValueError, TypeError):
            numbers = np.array([_number(value) for value in values], dtype=np.float64)
    return numbers, ~np.isfinite(numbers)


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return float("nan")
    try:
        return float(value)
    except (ValueError, TypeError):
        return float("nan")


def _booleans(values: list[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(len(values), dtype=bool)
    bad = np.zeros(len(values), dtype=bool)
    for row, value in enumerate(values):
        text = str(value).strip().lower() if value is not None else ""
        if isinstance(value, bool | np.bool_):
            labels[row] = bool(value)
        elif text in _TRUE:
            labels[row] = True
        elif text not in _FALSE:
            bad[row] = True
    return labels, bad


def _kind(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _row_number(problem: str) -> int:
    return int(problem.split()[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
