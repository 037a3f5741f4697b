"""Write simulated readings as the data files ``gridwatch train --data`` and ``evaluate --data`` read.

So the whole loop (record, train, evaluate, promote) can be shown without a real feeder: the columns are those a
recorded export has (``timestamp``, ``voltage``, ``current``, ``frequency``) plus the simulator's labels
(``is_anomaly``, ``anomaly_kind``). Files are written to a temporary name and renamed, so a reader never sees half.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.common.columns import COLUMNS
from app.detector.artifact import atomic_write_bytes


def write_readings(records: Sequence[dict[str, Any]], path: Path, file_format: str) -> None:
    """Write ``records`` to ``path`` as csv, parquet, jsonl, json or a request body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_readings(records, file_format))


def encode_readings(records: Sequence[dict[str, Any]], file_format: str) -> bytes:
    """``records`` in one of ``gridwatch simulate``'s formats, as the bytes a file or standard output gets."""
    if file_format == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**record, "anomaly_kind": record.get("anomaly_kind") or ""} for record in records)
        return text.getvalue().encode()
    if file_format == "parquet":
        return _parquet(records)
    if file_format == "jsonl":
        return "".join(json.dumps(record) + "\n" for record in records).encode()
    if file_format == "json":
        return (json.dumps(list(records), indent=2) + "\n").encode()
    return (json.dumps({"readings": list(records)}) + "\n").encode()


def _parquet(records: Sequence[dict[str, Any]]) -> bytes:
    try:
        import pyarrow as pa  # noqa: PLC0415 (optional: only the training extra installs it)
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise ValueError(
            "writing Parquet needs pyarrow, which the `training` extra installs (`uv sync --extra training`); "
            "or use --format csv"
        ) from None
    columns = {name: [record.get(name) for record in records] for name in COLUMNS}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()
