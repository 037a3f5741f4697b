"""Training, and the scikit-learn side of the artifact: the pickled estimator, checked and unpickled, and the
serving form compiled from it.

Everything here imports scikit-learn, so only training, evaluation, the benchmark and ``SCORER=sklearn`` come
here; a serving process loads the compiled forest through ``app.detector.artifact`` and, when it has to train or
convert an old model, does it in a child process (``app.detector.prepare``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from filelock import Timeout
from sklearn.ensemble import IsolationForest

from app import __version__
from app.detector.artifact import (
    LOCK_TIMEOUT_S,
    NOT_WRITABLE,
    Evaluator,
    check_metadata,
    forest_path,
    load_forest,
    metadata_path,
    read_metadata,
    save_artifact,
    save_forest,
    training_lock,
    verified_bytes,
)
from app.detector.dataset import DataFileError, RecordedReadings
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.evaluate import evaluate_recorded
from app.detector.forest import CompiledForest
from app.detector.model import (
    TRAINING_INTERVAL_S,
    TRAINING_START,
    Detector,
    ModelConfig,
    feature_statistics,
    training_data,
)
from app.detector.registry import ModelStore, RegistryError
from app.sim import GridProfile

logger = logging.getLogger(__name__)


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


def build_metadata(
    estimator: IsolationForest,
    config: ModelConfig,
    X: np.ndarray,
    *,
    artifact_bytes: bytes,
    artifact_name: str,
    training_seconds: float,
    evaluation: dict[str, Any] | None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of a freshly trained model (the compiled forest's entry is added by ``save_forest``)."""
    digest = hashlib.sha256(artifact_bytes).hexdigest()
    return {
        "model": "isolation_forest",
        "model_version": digest[:12],
        "artifact": {"file": artifact_name, "sha256": digest, "bytes": len(artifact_bytes)},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "training_seconds": round(training_seconds, 3),
        "versions": {
            "gridwatch": __version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "config": config.to_dict(),
        "training": {"samples": int(X.shape[0]), **(source or simulator_source())},
        "threshold": {
            "score": 0.0,
            "rule": "anomaly when score > 0, score = -decision_function",
            "offset": float(estimator.offset_),
        },
        "feature_stats": feature_statistics(X, config.features),
        "evaluation": evaluation,
    }


def simulator_source() -> dict[str, Any]:
    """How the default training set is drawn, as the metadata records it."""
    return {
        "source": "simulator",
        "interval_s": TRAINING_INTERVAL_S,
        "start": TRAINING_START.isoformat(),
        "profile": GridProfile().to_dict(),
    }


MIN_TRAINING_ROWS = 1_000
"""Fewer normal readings than this make thresholds at a 0.2 % contamination meaningless (two readings decide it)."""


def recorded_training(
    readings: RecordedReadings, config: ModelConfig, *, holdout: float
) -> tuple[ModelConfig, dict[str, Any], RecordedReadings | None]:
    """The configuration and ``train_model`` arguments that train on recorded readings, and the held-out rows.

    Labelled anomalies are left out of training. With labels, the last ``holdout`` share of the rows (the most
    recent, in a file in time order) is kept out of training and evaluated on, and that evaluation is stored in
    the metadata; without labels every row trains and the metadata holds no evaluation.
    """
    if not readings.labelled or holdout <= 0.0:
        train, evaluation_rows = readings, None
    else:
        split = round(len(readings) * (1.0 - holdout))
        train, evaluation_rows = readings.rows(np.arange(split)), readings.rows(np.arange(split, len(readings)))
    normal = train.X if train.is_anomaly is None else train.X[~train.is_anomaly]
    if normal.shape[0] < MIN_TRAINING_ROWS:
        raise DataFileError(
            Path(readings.source.get("file", "data")),
            f"too few normal readings to train on: {normal.shape[0]}, at least {MIN_TRAINING_ROWS} are needed",
        )
    _refuse_constant_columns(Path(readings.source.get("file", "data")), normal, config.features)
    config = replace(config, train_samples=normal.shape[0], max_samples=min(config.max_samples, normal.shape[0]))
    source = {
        **readings.source,
        "excluded_anomalies": int(len(train) - normal.shape[0]),
        "holdout_rows": 0 if evaluation_rows is None else len(evaluation_rows),
    }
    evaluate = None
    if evaluation_rows is not None and len(evaluation_rows):
        held_out = evaluation_rows

        def evaluate(detector: Detector) -> dict[str, Any]:
            return {**evaluate_recorded(detector, held_out).to_dict(), "on": "holdout"}

    return config, {"X": normal, "source": source, "evaluate": evaluate}, evaluation_rows


def _refuse_constant_columns(path: Path, X: np.ndarray, features: tuple[str, ...]) -> None:
    """A column with one value throughout (a recorder rounding frequency to 50.0) gives a model whose drift and
    warm-up statistics are undefined and that no server loads: refused before training, naming the column."""
    flat = [name for column, name in enumerate(features) if np.ptp(X[:, column]) == 0.0]
    if flat:
        raise DataFileError(
            path,
            f"{', '.join(flat)} holds the same value in every reading used for training; a model cannot be trained "
            "on a column with zero spread (is the recorder rounding it?)",
        )


def train_model(
    config: ModelConfig,
    artifact: Path,
    *,
    evaluate: Evaluator | None = None,
    X: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> Detector:
    """Train, evaluate (if ``evaluate`` is given) and save atomically: the estimator to ``artifact``, its compiled
    forest beside it, then the metadata. Returns the new detector.

    ``X`` is the training set (default: the simulator's, ``training_data(config)``), ``source`` how it was obtained
    (kept in the metadata). The caller holds the training lock (``ensure_model`` does); this function only writes
    files atomically.
    """
    started = time.perf_counter()
    X = training_data(config) if X is None else X
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
        source=source,
    )
    detector = Detector.from_estimator(
        estimator, metadata, path=artifact, trained_now=True, load_seconds=training_seconds
    )
    metadata["threshold"]["contamination_offsets"] = contamination_offsets(detector, X)
    if evaluate is not None:
        metadata["evaluation"] = evaluate(detector)
    save_artifact(artifact, artifact_bytes, detector.forest, metadata)
    logger.info(
        "trained model %s in %.2fs (%d samples) and saved it to %s",
        metadata["model_version"],
        training_seconds,
        X.shape[0],
        artifact,
    )
    return detector


CONTAMINATION_GRID = tuple(
    round(float(value), 4)
    for value in (*np.arange(1, 100) * 0.0001, *np.arange(10, 100) * 0.001, *np.arange(10, 50) * 0.01)
)
"""The contaminations whose thresholds are stored with a model: 0.0001 steps to 1 %, 0.001 to 10 %, 0.01 to 49 %."""


def contamination_offsets(detector: Detector, X: np.ndarray) -> dict[str, list[float]]:
    """Where the threshold would sit for each contamination of ``CONTAMINATION_GRID``, from the training scores.

    Contamination only places the threshold at that quantile of the training set's scores, so with this table
    ``gridwatch evaluate --sweep`` shows what another contamination would flag without the training data, which for
    a model trained on a recorded file may no longer be at hand. Scores come from the compiled forest (fast).
    """
    _, scores = detector.predict_batch(X)
    offsets = np.percentile(scores, 100.0 * (1.0 - np.asarray(CONTAMINATION_GRID)))
    return {"contamination": list(CONTAMINATION_GRID), "score": [float(value) for value in offsets]}


def _dump(estimator: IsolationForest) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


def load_model(artifact: Path, *, version: str | None = None) -> Detector:
    """Load and verify the scikit-learn artifact; raises ``ModelArtifactError`` naming the file if it must not be
    used.

    Checks, in order: both files exist; the metadata is JSON; the artifact's size and SHA-256 match the metadata (a
    truncated copy or a half-finished write fails here, before unpickling); it was trained with this scikit-learn
    version (pickles are only supported within one version); it unpickles into an IsolationForest; it expects the
    configured number of features. A model saved with its compiled forest must also compile to exactly that
    forest: the column order comes from the verified forest file, never from the metadata's list, which no hash
    covers (an edited order once served wrong scores). A model from before compiled forests is compiled in
    memory; nothing is written here.
    """
    started = time.perf_counter()
    metadata = read_metadata(artifact)
    features = check_metadata(artifact, metadata).features
    if version is not None and metadata.get("model_version") != version:
        raise ModelArtifactError(
            artifact, f"the metadata names version {metadata.get('model_version')!r}, not {version!r}"
        )
    payload = verified_bytes(artifact, artifact, metadata, "artifact")
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
    if estimator.n_features_in_ != len(features):
        raise ModelArtifactError(
            artifact, f"expects {estimator.n_features_in_} features, the metadata lists {len(features)}"
        )
    if metadata.get("forest") is not None:
        served = load_forest(artifact, version=version)
        if not CompiledForest.from_sklearn(estimator, served.features).same_trees(served.forest):
            raise ModelArtifactError(artifact, "the estimator and the compiled forest beside it are different models")
        detector = Detector(served.forest, metadata, estimator, path=artifact)
    else:
        detector = Detector.from_estimator(estimator, metadata, path=artifact)
    detector.load_seconds = time.perf_counter() - started
    logger.info("loaded model %s from %s in %.2fs", detector.version, artifact, detector.load_seconds)
    return detector


def _with_serving_forest(detector: Detector) -> Detector:
    """Write the compiled forest of a model saved before compiled forests existed (its metadata records none),
    under the training lock so two writers never interleave. A model whose recorded forest is damaged never gets
    here: ``load_model`` refuses it, and its hashes are never rewritten."""
    artifact = detector.path
    assert artifact is not None
    if detector.metadata.get("forest") is not None:
        return detector
    try:
        with training_lock(artifact):
            metadata = read_metadata(artifact)
            if metadata.get("forest") is None:  # another process may have converted it while we waited for the lock
                save_forest(artifact, detector.forest, metadata)
                logger.warning(
                    "converted model %s to the serving format (%s)", detector.version, forest_path(artifact).name
                )
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        logger.warning(
            "model %s has no serving form and MODEL_DIR %s is read-only (%s): the forest is compiled in memory at "
            "each start, which needs scikit-learn; run `gridwatch train` or convert it in a writable folder",
            detector.version,
            artifact.parent,
            exc.strerror,
        )
    return detector


def train_version(
    store: ModelStore,
    config: ModelConfig,
    *,
    promote: bool,
    evaluate: Evaluator | None = None,
    X: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> tuple[Detector, bool]:
    """Train a new version into ``store`` and activate it when ``promote`` is set or no version is active yet.

    Returns the detector (its path the version's artifact) and whether it is now the active version. Takes the
    folder's lock; ``train_version_locked`` is the same for a caller that holds it.
    """
    with store.lock():
        return train_version_locked(store, config, promote=promote, evaluate=evaluate, X=X, source=source)


def train_version_locked(
    store: ModelStore,
    config: ModelConfig,
    *,
    promote: bool,
    evaluate: Evaluator | None = None,
    X: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> tuple[Detector, bool]:
    store.migrate_legacy()
    with store.staging() as staged:
        detector = train_model(config, staged, evaluate=evaluate, X=X, source=source)
        detector.path = store.commit(staged, detector.version)
    activate = promote or store.active_version() is None
    if activate:
        store.set_active(detector.version)
        logger.info("model %s is the active version", detector.version)
    return detector, activate


def ensure_model(
    artifact: Path,
    *,
    train_if_missing: bool,
    config: ModelConfig | None = None,
    evaluate: Evaluator | None = None,
) -> Detector:
    """Load the active version of the model ``artifact`` (``MODEL_DIR/MODEL_NAME``) addresses, with its compiled
    forest written if it was saved before compiled forests; or, when ``train_if_missing`` is set and the folder
    holds no model at all, train one and activate it.

    What this may never do is replace the operator's model: an active version that does not load, an unreadable
    ``active.json``, or version folders with no pointer raise ``ModelUnavailableError`` saying how to repair it
    (``gridwatch models promote``/``rollback``), whatever ``train_if_missing`` says. Training happens under the
    folder's lock: of several processes starting at once on an empty shared folder, one trains and the others wait
    and then load its version. An unusable model from before versions is kept as ``<name>.rejected`` and replaced,
    as it always was (nothing is lost: its files stay beside the new version). A freshly trained model that does
    not load itself raises ``VersionRefusedError`` (``app.detector.registry``): retrying would train it again.
    """
    config = config or ModelConfig()
    store = ModelStore.of(artifact)
    problem: ModelArtifactError | None = None
    try:
        try:
            return _loaded_or_refused(store)
        except ModelArtifactError as first_error:
            if not train_if_missing:
                if not first_error.path.exists():
                    raise ModelUnavailableError(
                        f"no model at {first_error.path} and TRAIN_IF_MISSING is off: train one with `gridwatch train`"
                    ) from first_error
                raise
            problem = first_error
        with store.lock():
            try:  # another process may have finished training while we waited for the lock
                return _loaded_or_refused(store)
            except ModelArtifactError as error:
                problem = error
            current = store.active_artifact()
            if current == store.legacy_artifact and current.exists():
                logger.warning("replacing unusable model from before versions: %s", problem)
                for path in (current, forest_path(current), metadata_path(current)):
                    if path.exists():
                        path.replace(path.with_name(path.name + ".rejected"))
            else:
                logger.info("no model at %s, training one", current)
            detector, _ = train_version_locked(store, config, promote=True, evaluate=evaluate)
            return detector
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        reason = f" ({problem.reason})" if problem is not None else ""
        raise ModelUnavailableError(
            f"MODEL_DIR {artifact.parent} is not writable ({exc.strerror}) and holds no usable model{reason}; "
            "mount a writable volume or provide a trained model"
        ) from exc
    except Timeout as exc:
        raise ModelUnavailableError(
            f"waited {LOCK_TIMEOUT_S:.0f}s for another process training into {artifact.parent}"
        ) from exc


def _loaded_or_refused(store: ModelStore) -> Detector:
    """The active model, loaded; ``ModelArtifactError`` when there is none yet (or only a bad legacy one), which
    training may fix; ``ModelUnavailableError`` when something of the operator's is there but unusable, which
    training must not paper over."""
    try:
        version = store.active_version()
    except RegistryError as error:
        raise ModelUnavailableError(str(error)) from None
    if version is None and store.version_names():
        raise ModelUnavailableError(
            f"{store.root} holds versions ({', '.join(store.version_names())}) but none is active: "
            "promote one with `gridwatch models promote VERSION`"
        )
    try:
        return _with_serving_forest(load_model(store.active_artifact(), version=version))
    except ModelArtifactError as error:
        if version is None:
            raise
        raise ModelUnavailableError(
            f"the active version {version} cannot be served and is not replaced by training: {error.reason}; "
            "promote a usable version or roll back (`gridwatch models list`, `gridwatch models rollback`)"
        ) from None
