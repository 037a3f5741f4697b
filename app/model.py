"""The IsolationForest detector: configuration, training, scoring and the artifact on disk.

Score convention (the workshop clients rely on it): ``score = -decision_function(x)``, so **higher is more
anomalous** and a reading is flagged exactly when ``score > 0``. Flags are derived from scores, never computed
separately, so the two always agree.

The artifact is ``MODEL_DIR/MODEL_NAME`` (a joblib pickle of the fitted estimator) plus a JSON metadata file
beside it (same stem, ``.json``). The metadata holds the SHA-256 of the artifact: a truncated or swapped file is
detected before it is unpickled into service. Both files are written to a temporary name and renamed, so a crash
or a second replica never sees half a file, and training is serialised across processes with a file lock.
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from filelock import FileLock, Timeout
from sklearn.ensemble import IsolationForest

from app import FEATURES, __version__
from app.errors import ModelArtifactError, ModelUnavailableError
from app.forest import DEFAULT_BACKEND, Backend, CompiledForest
from app.forest_jit import CHAINS
from app.settings import Scorer
from app.sim import GridProfile, GridSimulator

logger = logging.getLogger(__name__)

TRAINING_START = datetime(2026, 1, 1, tzinfo=UTC)
"""Fixed start of the simulated training period: the same config always trains the same model (same version)."""
TRAINING_INTERVAL_S = 60.0
"""One simulated reading per minute, so the training set covers the daily load curve many times over."""
LOCK_TIMEOUT_S = 600.0
ARTIFACT_MODE = 0o644
"""How long a process waits for another one that is training into the same MODEL_DIR."""

_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class ModelConfig:
    """Feature order and IsolationForest parameters.

    Defaults were chosen by measurement (``gridwatch evaluate --sweep``, figures in the README), on simulated
    streams with 2 % anomalies:

    * ``max_samples=16384``: IsolationForest splits uniformly inside the range of each tree's subsample, so a
      reading far outside that range isolates no faster than the most extreme training reading. Small subsamples
      (scikit-learn's default of 256) therefore score a +20 % voltage spike like an ordinary evening peak: at a
      0.2 % false-positive rate recall was 0.26 with 256, 0.89 with 4096 and 0.99 with 16384 (ROC-AUC 0.986 ->
      0.9998). The cost is deeper trees (about 1,500 node visits per row instead of 870) and a 29 MB artifact.
    * ``contamination=0.002``: contamination sets the threshold at that quantile of the training scores, so it
      *is* the false-positive rate on normal readings. 0.002 measured precision 0.93 / recall 0.99; 0.001 kept
      precision (0.96) but lost current surges and frequency excursions (recall 0.94); 0.005 halved the false
      positives' margin (precision 0.82) for no recall gain; "auto" flags about a quarter of normal readings.
    """

    features: tuple[str, ...] = FEATURES
    n_estimators: int = 100
    max_samples: int = 16_384
    contamination: float = 0.002
    random_state: int = 42
    train_samples: int = 50_000

    def __post_init__(self) -> None:
        if not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be within (0, 0.5), got {self.contamination}")
        if self.max_samples > self.train_samples:
            raise ValueError(f"max_samples ({self.max_samples}) exceeds train_samples ({self.train_samples})")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "features" in known:
            known["features"] = tuple(known["features"])
        return cls(**known)


def training_data(config: ModelConfig, profile: GridProfile | None = None) -> np.ndarray:
    """Normal (anomaly-free) simulated readings in feature order; deterministic for a given config."""
    simulator = GridSimulator(
        profile=profile or GridProfile(),
        anomaly_rate=0.0,
        interval_s=TRAINING_INTERVAL_S,
        start=TRAINING_START,
        seed=config.random_state,
    )
    return simulator.batch(config.train_samples).features()


def train_isolation_forest(config: ModelConfig, X: np.ndarray | None = None) -> IsolationForest:
    """Fit an IsolationForest on ``X`` (default: ``training_data(config)``).

    The estimator is fitted on a plain array (no feature names), because requests arrive as arrays in
    ``config.features`` order; ``n_jobs=1`` keeps one worker process on one core, scaling is the HPA's job.
    """
    if X is None:
        X = training_data(config)
    estimator = IsolationForest(
        n_estimators=config.n_estimators,
        max_samples=config.max_samples,
        contamination=config.contamination,
        random_state=config.random_state,
        n_jobs=1,
    )
    return estimator.fit(X)


def predict_batch(estimator: IsolationForest, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score rows of ``X``: returns ``(flags, scores)`` with ``scores = -decision_function`` and
    ``flags = scores > 0``, so a flag is raised exactly when scikit-learn's ``predict`` says -1."""
    scores = -estimator.decision_function(X)
    return scores > 0.0, scores


def feature_statistics(X: np.ndarray, features: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per-feature training statistics kept in the metadata; the drift monitor compares live windows to them."""
    stats: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(features):
        values = X[:, column]
        stats[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)),
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {str(q): float(np.quantile(values, q)) for q in QUANTILES},
        }
    return stats


@dataclass
class Detector:
    """A loaded model ready to serve: the estimator, the metadata stored beside it, and its compiled form.

    The compiled form (``app.forest``) is built once here, when the model is loaded or trained, and is what
    ``predict_batch`` uses unless ``scorer`` says ``sklearn``.
    """

    estimator: IsolationForest
    metadata: dict[str, Any]
    path: Path | None = None
    trained_now: bool = False
    load_seconds: float = 0.0
    scorer: Scorer = Scorer.auto
    config: ModelConfig = field(init=False)
    forest: CompiledForest = field(init=False)

    def __post_init__(self) -> None:
        self.config = ModelConfig.from_dict(self.metadata.get("config", {}))
        self.forest = CompiledForest.from_sklearn(self.estimator)
        self.use(self.scorer)

    def use(self, scorer: Scorer) -> None:
        """Switch the scoring path (``auto`` resolves to numba if installed, else numpy)."""
        if scorer is Scorer.auto:
            scorer = Scorer(DEFAULT_BACKEND.value)
        if scorer is Scorer.numba and DEFAULT_BACKEND is not Backend.numba:
            raise ValueError("SCORER=numba but numba is not installed; use auto, numpy or sklearn")
        self.scorer = scorer

    def warm_up(self) -> None:
        """Score once per kernel so compilation (or loading numba's cache) happens now, not in a request."""
        row = np.array([[self.metadata["feature_stats"][name]["mean"] for name in self.features]])
        self.predict_batch(row)
        self.predict_batch(np.repeat(row, CHAINS, axis=0))

    @property
    def version(self) -> str:
        return str(self.metadata["model_version"])

    @property
    def features(self) -> tuple[str, ...]:
        return self.config.features

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flags, scores)`` for an ``(n, len(features))`` float array, equal to ``predict_batch``'s."""
        if self.scorer is Scorer.sklearn:
            return predict_batch(self.estimator, X)
        scores = -self.forest.decision_function(X, Backend(self.scorer.value))
        return scores > 0.0, scores


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
    evaluate: Callable[[Detector], dict[str, Any]] | None = None,
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
    evaluate: Callable[[Detector], dict[str, Any]] | None = None,
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

    lock_file = artifact.parent / f".{artifact.name}.lock"
    try:
        artifact.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_file, timeout=LOCK_TIMEOUT_S)
        with lock:
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
