"""The scikit-learn side of a saved model: the pickled estimator loaded and checked against its compiled forest, an
old model converted to the serving form, and ``ensure_model``, which loads the active version or trains the first.

Everything here imports scikit-learn, so only training, evaluation, the benchmark, ``SCORER=sklearn`` and the
preparation child (``app.detector.prepare``) come here; a serving process reads the compiled forest through
``app.detector.artifact``.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import joblib
import sklearn
from filelock import Timeout
from sklearn.ensemble import IsolationForest

from app.detector.artifact import (
    LOCK_TIMEOUT_S,
    NOT_WRITABLE,
    Evaluator,
    check_metadata,
    forest_path,
    load_forest,
    metadata_path,
    read_metadata,
    save_forest,
    training_lock,
    verified_bytes,
)
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.forest import CompiledForest
from app.detector.model import Detector, ModelConfig
from app.detector.registry import ModelStore, RegistryError
from app.detector.training import train_version_locked

logger = logging.getLogger(__name__)


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


def ensure_model(
    store: ModelStore,
    *,
    train_if_missing: bool,
    config: ModelConfig | None = None,
    evaluate: Evaluator | None = None,
) -> Detector:
    """Load the active version of ``store``, with its compiled
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
            f"MODEL_DIR {store.root} is not writable ({exc.strerror}) and holds no usable model{reason}; "
            "mount a writable volume or provide a trained model"
        ) from exc
    except Timeout as exc:
        raise ModelUnavailableError(
            f"waited {LOCK_TIMEOUT_S:.0f}s for another process training into {store.root}"
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
