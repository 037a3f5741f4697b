"""Helpers of the detector's tests."""

from __future__ import annotations

import json
from pathlib import Path

from app.detector.artifact import metadata_path


def rewrite_metadata(model_file: Path, /, **changes: object) -> None:
    """Change top-level fields of ``model_file``'s metadata file in place, as a hand edit or a damaged copy would."""
    metadata = json.loads(metadata_path(model_file).read_text())
    metadata.update(changes)
    metadata_path(model_file).write_text(json.dumps(metadata))
