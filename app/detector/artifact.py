"""The model on disk: written atomically, verified before use, and loaded for serving without scikit-learn.

A model in ``MODEL_DIR`` is three files named after ``MODEL_NAME`` (default ``iso_forest.joblib``):

* ``iso_forest.joblib``: the fitted scikit-learn estimator (a pickle), for training, evaluation and
  ``SCORER=sklearn``;
* ``iso_forest.npz``: the same forest compiled for serving (plain NumPy arrays: thresholds, node records, leaf
  values, feature names; ``app.detector.forest``), loaded in milliseconds without scikit-learn and never unpickled;
* ``iso_forest.json``: the metadata, holding the SHA-256 of both. A truncated or swapped file is detected before
  it is used.

Every file is written to a temporary name and renamed, so a crash or a second replica never sees half a file, and
training is serialised across processes with a file lock. ``load_detector`` is the one entry every command uses
(serve, evaluate, bench); a server that must train or convert a model does it in a child process
(``app.detector.prepare``), so the serving process itself never imports scikit-learn.

This module imports neither scikit-learn nor joblib.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.forest import CompiledForest
from app.detector.model import Detector, ModelConfig
from app.detector.scorer import Scorer

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0
"""How long a process waits for another one that is training into the same MODEL_DIR."""
ARTIFACT_MODE = 0o644
"""Files readable by a server running under another uid than the trainer."""

NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""The errnos that mean MODEL_DIR cannot be written (as opposed to a failing disk)."""

Evaluator = Callable[[Detector], dict[str, Any]]
"""Scores a freshly trained detector for its metadata (``app.detector.evaluate.evaluation_for_metadata``)."""

PREPARE_UNAVAILABLE = 2
PREPARE_ARTIFACT_ERROR = 3
"""Exit codes of ``app.detector.prepare`` for the two named errors, so the server raises the same one."""


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
        metadata = json.loads(meta_file.read_text())
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
        if not (_finite_number(mean) and _finite_number(std) and std > 0):
            raise ModelArtifactError(artifact, f"metadata feature_stats lack a finite mean and positive std for {name}")
    return config


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verified_bytes(artifact: Path, path: Path, metadata: dict[str, Any], entry: str) -> bytes:
    """The bytes of ``path``, checked against the SHA-256 recorded under ``metadata[entry]``."""
    try:
        expected = metadata[entry]["sha256"]
    except (KeyError, TypeError) as exc:
        raise ModelArtifactError(artifact, f"metadata {metadata_path(artifact).name} records no {entry}") from exc
    if not path.is_file():
        raise ModelArtifactError(artifact, f"{path.name}: file not found")
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(artifact, f"{path.name} cannot be read: {exc.strerror}") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected:
        raise ModelArtifactError(
            artifact,
            f"{path.name}: SHA-256 {digest[:12]} does not match {str(expected)[:12]} recorded in "
            f"{metadata_path(artifact).name} ({len(payload)} bytes on disk, {metadata[entry].get('bytes')} "
            "expected): truncated, modified or half-written",
        )
    return payload


def load_forest(artifact: Path) -> Detector:
    """The serving detector: the compiled forest beside ``artifact``, verified, without scikit-learn.

    Checks, in order: the metadata is a JSON object naming the forest file and its SHA-256; the file's hash
    matches; its arrays are what the kernels expect; the feature names the metadata lists are the ones the forest
    was trained on (the verified forest carries them, so an edited metadata cannot reorder the columns).
    """
    started = time.perf_counter()
    metadata = read_metadata(artifact)
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


def prepare_in_child(artifact: Path, *, train_if_missing: bool) -> None:
    """Train, or convert an old model, in a child process (``python -m app.detector.prepare``), so that this
    process never imports scikit-learn. The child's log lines are logged here; its failure is raised here as the
    same named error."""
    command = [sys.executable, "-m", "app.detector.prepare", str(artifact)]
    if train_if_missing:
        command.append("--train-if-missing")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    last = ""
    for line in process.stderr:
        if line.strip():
            last = line.strip()
            logger.info("model preparation: %s", last)
    code = process.wait()
    if code == PREPARE_ARTIFACT_ERROR:
        raise ModelArtifactError(artifact, last)
    if code != 0:
        reason = last if code == PREPARE_UNAVAILABLE else f"model preparation failed (exit {code}): {last}"
        raise ModelUnavailableError(reason)
    logger.info("model prepared in a child process in %.1fs", time.perf_counter() - started)


def load_detector(
    artifact: Path,
    *,
    train_if_missing: bool,
    scorer: Scorer = Scorer.auto,
    warm_up: bool = False,
    with_estimator: bool = False,
) -> Detector:
    """The detector every command starts from, switched to ``scorer``, and with ``warm_up`` its kernels compiled
    now rather than in the first request.

    Serving (the default) loads the compiled forest; if it is missing or unusable, a child process trains (when
    ``train_if_missing``) or converts the model, and the forest is loaded again. ``with_estimator`` (evaluation, the
    benchmark) and ``SCORER=sklearn`` load the scikit-learn estimator in this process instead.
    """
    from app.detector.registry import ModelStore, RegistryError  # noqa: PLC0415 (it builds on this module)

    store = ModelStore.of(artifact)
    if with_estimator or scorer is Scorer.sklearn:
        detector = _load_with_estimator(artifact, train_if_missing=train_if_missing)
    else:
        try:
            active = store.active_artifact()
            detector = load_forest(active)
        except RegistryError as error:
            raise ModelUnavailableError(str(error)) from error
        except ModelArtifactError as problem:
            if not train_if_missing and not active.exists() and not forest_path(active).exists():
                raise ModelUnavailableError(
                    f"no model at {active} and TRAIN_IF_MISSING is off: train one with `gridwatch train`"
                ) from problem
            logger.info("%s; preparing it in a child process", problem)
            started = time.perf_counter()
            prepare_in_child(artifact, train_if_missing=train_if_missing)
            try:
                detector = load_forest(store.active_artifact())
            except ModelArtifactError as still:  # a read-only folder the child could not write the forest into
                logger.warning("%s; compiling the forest in this process, which loads scikit-learn", still)
                detector = _load_with_estimator(artifact, train_if_missing=False)
            detector.trained_now = True  # obtained by training (or converting) it, not by loading it
            detector.load_seconds = time.perf_counter() - started
    detector.use(scorer)
    if warm_up:
        detector.warm_up()
    return detector


def _load_with_estimator(artifact: Path, *, train_if_missing: bool) -> Detector:
    # Imported here: scikit-learn (and its SciPy) only where the estimator itself is wanted.
    from app.detector.evaluate import evaluation_for_metadata  # noqa: PLC0415
    from app.detector.training import ensure_model  # noqa: PLC0415

    return ensure_model(artifact, train_if_missing=train_if_missing, evaluate=evaluation_for_metadata)
