"""The model on disk: an artifact and its metadata, written atomically, verified before use.

The artifact is ``MODEL_DIR/MODEL_NAME`` (a joblib pickle of the fitted estimator) plus a JSON metadata file
beside it (same stem, ``.json``). The metadata holds the SHA-256 of the artifact: a truncated or swapped file is
detected before it is unpickled into service. Both files are written to a temporary name and renamed, so a crash
or a second replica never sees half a file, and training is serialised across processes with a file lock.

``load_detector`` is the one entry every command uses (serve, train, evaluate, bench): load and verify, or train
when allowed, then pick the scorer.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from filelock import FileLock, Timeout
from sklearn.ensemble import IsolationForest

from app import __version__
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.model import (
    TRAINING_INTERVAL_S,
    TRAINING_START,
    Detector,
    ModelConfig,
    feature_statistics,
    train_isolation_forest,
    training_data,
)
from app.detector.scorer import Scorer
from app.sim import GridProfile

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0
"""How long a process waits for another one that is training into the same MODEL_DIR."""
ARTIFACT_MODE = 0o644
"""Files readable by a server running under another uid than the trainer."""

_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}

Evaluator = Callable[[Detector], dict[str, Any]]
"""Scores a freshly trained detector for its metadata (``app.detector.evaluate.evaluation_for_metadata``)."""


def training_lock(artifact: Path) -> FileLock:
    """The file lock that serialises training into ``artifact``'s folder across processes."""
    return FileLock(artifact.parent / f".{artifact.name}.lock", timeout=LOCK_TIMEOUT_S)


def metadata_path(artifact: Path) -> Path:
    """Where the JSON metadata of ``artifact`` lives: same folder, same stem, ``.json``."""
    return artifact.with_suffix(".json")


def build_metadata(
    estimator: IsolationForest,
    config: ModelConfig,
    X: np.ndarray,
    *,
    artifact_bytes: bytes,
    artifact_name: str,
    training_seconds: float,
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    digest = hashlib.sha256(artifact_bytes).hexdigest()
    return {
        "model": "isolation_forest",
        "model_version": digest[:12],
        "artifact": {"file": artifact_name, "sha256": digest, "bytes": len(artifact_bytes)},
        "trained_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "training_seconds": round(training_seconds, 3),
        "versions": {
            "gridwatch": __version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "config": config.to_dict(),
        "training": {
            "samples": int(X.shape[0]),
            "source": "simulator",
            "interval_s": TRAINING_INTERVAL_S,
            "start": TRAINING_START.isoformat(),
            "profile": GridProfile().to_dict(),
        },
        "threshold": {
            "score": 0.0,
            "rule": "anomaly when score > 0, score = -decision_function",
            "offset": float(estimator.offset_),
        },
        "feature_stats": feature_statistics(X, config.features),
        "evaluation": evaluation,
    }


def train_model(
    config: ModelConfig,
    artifact: Path,
    *,
    evaluate: Evaluator | None = None,
) -> Detector:
    """Train, evaluate (if ``evaluate`` is given) and save atomically to ``artifact``. Returns the new detector.

    The caller holds the training lock (``ensure_model`` does); this function only writes files atomically.
    """
    started = time.perf_counter()
    X = training_data(config)
    estimator = train_isolation_forest(config, X)
    training_seconds = time.perf_counter() - started
    artifact_bytes = _dump(estimator)
    metadata = build_metadata(
        estimator,
        config,
        X,
        artifact_bytes=artifact_bytes,
        artifact_name=artifact.name,
        training_seconds=training_seconds,
        evaluation=None,
    )
    detector = Detector(estimator, metadata, path=artifact, trained_now=True, load_seconds=training_seconds)
    if evaluate is not None:
        metadata["evaluation"] = evaluate(detector)
    save_artifact(artifact, artifact_bytes, metadata)
    logger.info(
        "trained model %s in %.2fs (%d samples) and saved it to %s",
        metadata["model_version"],
        training_seconds,
        X.shape[0],
        artifact,
    )
    return detector


def _dump(estimator: IsolationForest) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


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


def save_artifact(artifact: Path, artifact_bytes: bytes, metadata: dict[str, Any]) -> None:
    """Write the artifact, then its metadata, each atomically.

    A reader between the two renames sees a hash mismatch and re-reads under the training lock (see
    ``ensure_model``), so it never serves a model with the wrong metadata.
    """
    artifact.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(artifact, artifact_bytes)
    atomic_write_bytes(metadata_path(artifact), json.dumps(metadata, indent=2, sort_keys=True).encode())


def load_model(artifact: Path) -> Detector:
    """Load and verify an artifact; raises ``ModelArtifactError`` naming the file if it must not be used.

    Checks, in order: both files exist; the metadata is JSON; the artifact's SHA-256 matches the metadata (a
    truncated copy or a half-finished write fails here, before unpickling); it unpickles into an
    IsolationForest; it was trained with this scikit-learn version (pickles are only supported within one
    version); it expects the configured number of features.
    """
    started = time.perf_counter()
    meta_file = metadata_path(artifact)
    if not artifact.is_file():
        raise ModelArtifactError(artifact, "file not found")
    if not meta_file.is_file():
        raise ModelArtifactError(artifact, f"metadata file {meta_file} not found")
    try:
        metadata = json.loads(meta_file.read_text())
        expected_digest = metadata["artifact"]["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelArtifactError(artifact, f"metadata {meta_file} is unreadable: {exc}") from exc
    payload = artifact.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected_digest:
        raise ModelArtifactError(
            artifact,
            f"SHA-256 {digest[:12]} does not match {expected_digest[:12]} recorded in {meta_file.name} "
            f"({len(payload)} bytes on disk, {metadata['artifact'].get('bytes')} expected): "
            "truncated, modified or half-written",
        )
    trained_with = metadata.get("versions", {}).get("sklearn")
    if trained_with != sklearn.__version__:
        raise ModelArtifactError(
            artifact,
            f"trained with scikit-learn {trained_with}, this process runs {sklearn.__version__}; "
            "scikit-learn pickles are only valid within one version",
        )
    try:
        estimator = joblib.load(io.BytesIO(payload))
    except Exception as exc:  # unpickling can fail in many ways; all mean the same to us
        raise ModelArtifactError(artifact, f"cannot be unpickled: {exc!r}") from exc
    if not isinstance(estimator, IsolationForest):
        raise ModelArtifactError(artifact, f"holds a {type(estimator).__name__}, not an IsolationForest")
    detector = Detector(estimator, metadata, path=artifact)
    if estimator.n_features_in_ != len(detector.features):
        raise ModelArtifactError(
            artifact,
            f"expects {estimator.n_features_in_} features, the metadata lists {len(detector.features)}",
        )
    detector.load_seconds = time.perf_counter() - started
    logger.info("loaded model %s from %s in %.2fs", detector.version, artifact, detector.load_seconds)
    return detector


def ensure_model(
    artifact: Path,
    *,
    train_if_missing: bool,
    config: ModelConfig | None = None,
    evaluate: Evaluator | None = None,
) -> Detector:
    """Load ``artifact``, or train and save it when it is missing or unusable and ``train_if_missing`` is set.

    Without ``train_if_missing``, a missing artifact raises ``ModelUnavailableError`` and a bad one raises
    ``ModelArtifactError``; a bad artifact is never used. With it, training happens under a file lock in the
    model folder: of several processes starting at once on an empty shared folder, one trains and the others
    wait and then load its artifact. A rejected artifact is kept as ``<name>.rejected`` for inspection.
    """
    config = config or ModelConfig()
    try:
        return load_model(artifact)
    except ModelArtifactError as first_error:
        if not train_if_missing:
            if not artifact.exists():
                raise ModelUnavailableError(
                    f"no model at {artifact} and TRAIN_IF_MISSING is off: train one with `gridwatch train`"
                ) from first_error
            raise
        problem = first_error

    try:
        artifact.parent.mkdir(parents=True, exist_ok=True)
        with training_lock(artifact):
            try:  # another process may have finished training while we waited for the lock
                return load_model(artifact)
            except ModelArtifactError as error:
                problem = error
            if artifact.exists():
                logger.warning("replacing unusable model: %s", problem)
                artifact.replace(artifact.with_name(artifact.name + ".rejected"))
            else:
                logger.info("no model at %s, training one", artifact)
            return train_model(config, artifact, evaluate=evaluate)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise ModelUnavailableError(
            f"MODEL_DIR {artifact.parent} is not writable ({exc.strerror}) and holds no usable model "
            f"({problem.reason}); mount a writable volume or provide a trained model"
        ) from exc
    except Timeout as exc:
        raise ModelUnavailableError(
            f"waited {LOCK_TIMEOUT_S:.0f}s for another process training into {artifact.parent}"
        ) from exc


def load_detector(
    artifact: Path, *, train_if_missing: bool, scorer: Scorer = Scorer.auto, warm_up: bool = False
) -> Detector:
    """The detector every command starts from: ``ensure_model`` (training evaluated like ``gridwatch train``),
    switched to ``scorer``, and with ``warm_up`` its kernels compiled now rather than in the first request."""
    from app.detector.evaluate import evaluation_for_metadata  # noqa: PLC0415 - sklearn.metrics only to train

    detector = ensure_model(artifact, train_if_missing=train_if_missing, evaluate=evaluation_for_metadata)
    detector.use(scorer)
    if warm_up:
        detector.warm_up()
    return detector
