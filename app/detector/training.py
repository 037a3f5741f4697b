"""Training a model version: the estimator fitted on simulated or recorded readings, its metadata (training data,
statistics, evaluation), and the version committed into the store and activated when asked.

Everything here imports scikit-learn, so only training, evaluation, the benchmark and the preparation child come
here; loading a saved estimator is ``app.detector.estimator``'s, loading for serving ``app.detector.loading``'s.
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
from sklearn.ensemble import IsolationForest

from app import __version__
from app.detector.artifact import (
    Evaluator,
    save_artifact,
)
from app.detector.dataset import DataFileError, RecordedReadings
from app.detector.evaluate import evaluate_recorded
from app.detector.model import (
    TRAINING_INTERVAL_S,
    TRAINING_START,
    Detector,
    ModelConfig,
    feature_statistics,
    training_data,
)
from app.detector.registry import ModelStore
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
