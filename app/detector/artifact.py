"""The model on disk: written atomically, verified before use, and loaded for serving without scikit-learn.

A model in ``MODEL_DIR`` is three files named after ``MODEL_NAME`` (default ``iso_forest.joblib``):

* ``iso_forest.joblib``: the fitted scikit-learn estimator (a pickle), for training, evaluation and
  ``SCORER=sklearn``;
* ``iso_forest.npz``: the same forest compiled for serving (plain NumPy arrays: thresholds, node records, leaf
  values, feature names; ``app.detector.forest``), loaded in milliseconds without scikit-learn and never unpickled;
* ``iso_forest.json``: the metadata, holding the SHA-256 of both. A truncated or swapped file is detected before
  it is used.

Every file is written to a temporary name and renamed, so a crash or a second replica never sees half a file, and
training is serialised across processes with a file lock. Which version to load, and what to do when it cannot
be, is ``app.detector.loading``'s job; this module only reads and checks the files it is given.

This module imports neither scikit-learn nor joblib.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from app.detector.errors import ModelArtifactError
from app.detector.forest import CompiledForest
from app.detector.model import Detector, ModelConfig

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0
"""How long a process waits for another one that is training into the same MODEL_DIR."""
ARTIFACT_MODE = 0o644
"""Files readable by a server running under another uid than the trainer."""

NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""The errnos that mean MODEL_DIR cannot be written (as opposed to a failing disk)."""

Evaluator = Callable[[Detector], dict[str, Any]]
"""Scores a freshly trained detector for its metadata (``app.detector.evaluate.evaluation_for_metadata``)."""

MAX_METADATA_BYTES = 16 * 1024 * 1024
"""A metadata file is a few kilobytes; one larger than this is refused before it is read (not parsed whole)."""
HASH_CHUNK_BYTES = 1024 * 1024


@contextmanager
def training_lock(artifact: Path) -> Iterator[None]:
    """Hold the file lock that serialises every write into ``artifact``'s folder across processes.

    Every writer holds it, so a temporary file found once it is taken is the leftover of a writer that was killed
    mid-write (a 30 MB one on a 256 MiB emptyDir): it is removed, and the log says so.
    """
    with FileLock(artifact.parent / f".{artifact.name}.lock", timeout=LOCK_TIMEOUT_S):
        for leftover in artifact.parent.glob(f".{artifact.stem}.*.tmp"):
            size = leftover.stat().st_size
            leftover.unlink(missing_ok=True)
            logger.warning("removed %s (%d bytes), left by a writer that did not finish", leftover.name, size)
        yield


def metadata_path(artifact: Path) -> Path:
    """Where the JSON metadata of ``artifact`` lives: same folder, same stem, ``.json``."""
    return artifact.with_suffix(".json")


def forest_path(artifact: Path) -> Path:
    """Where the compiled forest of ``artifact`` lives: same folder, same stem, ``.npz``."""
    return artifact.with_suffix(".npz")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one.

    The bytes go to a temporary file in the same folder (same filesystem, so the rename is atomic), are flushed
    to disk, and the file is renamed over ``path``; the folder is synced so the rename survives a power cut.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a model folder shared by a trainer and a server with another uid needs 0644.
        os.fchmod(descriptor, ARTIFACT_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_metadata(artifact: Path, metadata: dict[str, Any]) -> None:
    atomic_write_bytes(metadata_path(artifact), json.dumps(metadata, indent=2, sort_keys=True).encode())


def _file_entry(path: Path, data: bytes) -> dict[str, Any]:
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def save_artifact(artifact: Path, artifact_bytes: bytes, forest: CompiledForest, metadata: dict[str, Any]) -> None:
    """Write the estimator, its compiled forest, then the metadata naming both, each atomically.

    A reader between the renames sees a hash mismatch and re-reads under the training lock, so it never serves a
    model with the wrong metadata.
    """
    artifact.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(artifact, artifact_bytes)
    save_forest(artifact, forest, metadata)


def save_forest(artifact: Path, forest: CompiledForest, metadata: dict[str, Any]) -> None:
    """Write the compiled forest beside ``artifact``, then the metadata with its entry (``forest``)."""
    data = forest.to_npz()
    target = forest_path(artifact)
    atomic_write_bytes(target, data)
    metadata["forest"] = _file_entry(target, data)
    _write_metadata(artifact, metadata)


def read_metadata(artifact: Path) -> dict[str, Any]:
    """The metadata of ``artifact``, or ``ModelArtifactError`` if it is missing or not a JSON object."""
    meta_file = metadata_path(artifact)
    if not meta_file.is_file():
        raise ModelArtifactError(artifact, f"metadata file {meta_file} not found")
    try:
        with meta_file.open("rb") as handle:
            text = handle.read(MAX_METADATA_BYTES + 1)
        if len(text) > MAX_METADATA_BYTES:
            raise ModelArtifactError(artifact, f"metadata {meta_file} is larger than {MAX_METADATA_BYTES} bytes")
        metadata = json.loads(text)
    except OSError as exc:
        raise ModelArtifactError(artifact, f"metadata {meta_file} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelArtifactError(artifact, f"metadata {meta_file} is unreadable: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelArtifactError(artifact, f"metadata {meta_file} is not a JSON object")
    return metadata


def check_metadata(artifact: Path, metadata: dict[str, Any]) -> ModelConfig:
    """The configuration, once every field serving reads is known to be there and sound; ``ModelArtifactError``
    otherwise, so that a damaged metadata is retrained (or reported) instead of crashing the worker later."""
    try:
        config = ModelConfig.from_dict(metadata.get("config", {}))
    except (TypeError, ValueError) as exc:
        raise ModelArtifactError(artifact, f"metadata config is invalid: {exc}") from exc
    if not isinstance(metadata.get("model_version"), str):
        raise ModelArtifactError(artifact, "metadata has no model_version")
    stats = metadata.get("feature_stats")
    for name in config.features:
        entry = stats.get(name) if isinstance(stats, dict) else None
        mean, std = (entry.get("mean"), entry.get("std")) if isinstance(entry, dict) else (None, None)
        if not (_finite_number(mean) and _finite_number(std) and std is not None and std > 0):
            raise ModelArtifactError(artifact, f"metadata feature_stats lack a finite mean and positive std for {name}")
    return config


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verified_bytes(artifact: Path, path: Path, metadata: dict[str, Any], entry: str) -> bytes:
    """The bytes of ``path``, checked against the size and SHA-256 recorded under ``metadata[entry]``.

    The size is compared before anything is read, and the file is read in chunks up to the recorded size at
    most: a forest file far larger than its metadata says (a 3 GiB sparse file once took a worker to 2.6 GB, over
    its memory limit, at every restart) is refused for the cost of a ``stat``.
    """
    expected, size = _recorded(artifact, metadata, entry)
    try:
        on_disk = path.stat().st_size
    except FileNotFoundError as exc:
        raise ModelArtifactError(artifact, f"{path.name}: file not found") from exc
    except OSError as exc:
        raise ModelArtifactError(artifact, f"{path.name} cannot be read: {exc.strerror}") from exc
    if on_disk != size:
        raise ModelArtifactError(
            artifact,
            f"{path.name} holds {on_disk} bytes, {metadata_path(artifact).name} records {size}: truncated, "
            "modified or half-written",
        )
    digest = hashlib.sha256()
    payload = bytearray()
    try:
        with path.open("rb") as handle:
            while len(payload) <= size and (chunk := handle.read(HASH_CHUNK_BYTES)):
                digest.update(chunk)
                payload += chunk
    except OSError as exc:
        raise ModelArtifactError(artifact, f"{path.name} cannot be read: {exc.strerror}") from exc
    if digest.hexdigest() != expected or len(payload) != size:
        raise ModelArtifactError(
            artifact,
            f"{path.name}: SHA-256 {digest.hexdigest()[:12]} does not match {expected[:12]} recorded in "
            f"{metadata_path(artifact).name}: truncated, modified or half-written",
        )
    return bytes(payload)


def _recorded(artifact: Path, metadata: dict[str, Any], entry: str) -> tuple[str, int]:
    """The SHA-256 and size ``metadata[entry]`` records for a file, or ``ModelArtifactError`` if it records none."""
    record = metadata.get(entry)
    expected = record.get("sha256") if isinstance(record, dict) else None
    size = record.get("bytes") if isinstance(record, dict) else None
    if not isinstance(expected, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ModelArtifactError(artifact, f"metadata {metadata_path(artifact).name} records no {entry} size and hash")
    return expected, size


def load_forest(artifact: Path, *, version: str | None = None) -> Detector:
    """The serving detector: the compiled forest beside ``artifact``, verified, without scikit-learn.

    Checks, in order: the metadata is a JSON object naming the forest file and its size and SHA-256, and (given
    ``version``, the name of the version folder it was found in) that very version; the file's size and hash
    match; its arrays are what the kernels expect; the feature names the metadata lists are the ones the forest
    was trained on (the verified forest carries them, so an edited metadata cannot reorder the columns).
    """
    started = time.perf_counter()
    metadata = read_metadata(artifact)
    if version is not None and metadata.get("model_version") != version:
        raise ModelArtifactError(
            artifact,
            f"the metadata names version {metadata.get('model_version')!r}, its folder is {version!r}: a renamed "
            "or edited copy",
        )
    entry = metadata.get("forest")
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or Path(name).name != name:
        raise ModelArtifactError(artifact, "the metadata names no compiled forest (saved by an older GridWatch)")
    payload = verified_bytes(artifact, artifact.parent / name, metadata, "forest")
    try:
        forest = CompiledForest.from_npz(payload)
    except Exception as exc:  # a damaged archive fails in many ways (zip, dtype, missing array); all mean the same
        raise ModelArtifactError(artifact, f"{name} is not a usable compiled forest: {exc}") from exc
    listed = check_metadata(artifact, metadata).features
    if listed != forest.features:
        raise ModelArtifactError(
            artifact, f"the metadata lists features {list(listed)}, the forest was trained on {list(forest.features)}"
        )
    detector = Detector(forest, metadata, path=artifact, load_seconds=time.perf_counter() - started)
    logger.info("loaded model %s from %s in %.3fs", detector.version, name, detector.load_seconds)
    return detector
