"""From a model folder to a detector ready to score: the one way start-up and hot swap load a model.

``load_for_serving`` loads a named version exactly as serving needs it (the compiled forest, verified against its
folder's name; the estimator too when ``SCORER=sklearn``), and both the start-up load and every hot swap go
through it, so a version one path accepts the other never refuses, or the other way round.

``load_detector`` is what every command starts from (serve, evaluate, bench). When the folder holds no model yet,
or one saved before compiled forests, a child process (``app.detector.prepare``) trains or converts it, so a
server never imports scikit-learn itself. When the folder holds a model of the operator's that does not load, it
is never replaced: the error says how to repair it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from app.detector.artifact import forest_path, load_forest
from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.model import Detector
from app.detector.registry import ModelStore, RegistryError, VersionRefusedError
from app.detector.scorer import Scorer

logger = logging.getLogger(__name__)

PREPARE_UNAVAILABLE = 2
PREPARE_ARTIFACT_ERROR = 3
PREPARE_TRAINED_UNUSABLE = 4
"""Exit codes of ``app.detector.prepare`` for its named errors, so the server raises the same one."""


def load_for_serving(store: ModelStore, version: str | None, scorer: Scorer, *, warm_up: bool = True) -> Detector:
    """``version`` of ``store`` as a server scores with it: verified, on ``scorer``, with ``warm_up`` its kernels
    compiled now rather than in the first request. ``None`` is the model of a folder from before versions.

    ``SCORER=sklearn`` needs the estimator, so it is loaded (and checked against the compiled forest) in this
    process, which imports scikit-learn; every other scorer reads only the compiled forest.
    """
    artifact = store.legacy_artifact if version is None else store.artifact_of(version)
    if scorer is Scorer.sklearn:
        from app.detector.estimator import load_model  # noqa: PLC0415 - scikit-learn only where it is asked for

        detector = load_model(artifact, version=version)
    else:
        detector = load_forest(artifact, version=version)
    detector.use(scorer)
    if warm_up:
        detector.warm_up()
    return detector


def load_detector(
    store: ModelStore,
    *,
    train_if_missing: bool,
    scorer: Scorer = Scorer.auto,
    warm_up: bool = False,
    with_estimator: bool = False,
) -> Detector:
    """The detector every command starts from, switched to ``scorer``, and with ``warm_up`` its kernels compiled
    now rather than in the first request.

    Serving (the default) loads the active version's compiled forest. When the folder holds no model, a child
    process trains one (only with ``train_if_missing``); when the active version was saved before compiled forests,
    the child converts it; in both cases the forest is then loaded here. ``with_estimator`` (evaluation, the
    benchmark) and ``SCORER=sklearn`` load the scikit-learn estimator in this process instead.
    """
    if with_estimator:
        from app.detector.estimator import ensure_model  # noqa: PLC0415 - scikit-learn only where it is asked for
        from app.detector.evaluate import evaluation_for_metadata  # noqa: PLC0415 - the same

        detector = ensure_model(store, train_if_missing=train_if_missing, evaluate=evaluation_for_metadata)
        detector.use(scorer)
        if warm_up:
            detector.warm_up()
        return detector
    return _load_or_prepare(store, scorer, train_if_missing=train_if_missing, warm_up=warm_up)


def _load_or_prepare(store: ModelStore, scorer: Scorer, *, train_if_missing: bool, warm_up: bool) -> Detector:
    """The active version through ``load_for_serving``, after a child process trained or converted it if needed."""
    try:
        version = store.active_version()
    except RegistryError as error:
        raise ModelUnavailableError(str(error)) from error
    active = store.active_artifact()
    try:
        return load_for_serving(store, version, scorer, warm_up=warm_up)
    except ModelArtifactError as problem:
        if version is not None and not store.needs_conversion(version):
            raise ModelUnavailableError(
                f"the active version {version} cannot be served and is not replaced by training: {problem.reason}; "
                "promote a usable version or roll back (`gridwatch models list`, `gridwatch models rollback`)"
            ) from problem
        if not train_if_missing and not active.exists() and not forest_path(active).exists():
            raise ModelUnavailableError(
                f"no model at {active} and TRAIN_IF_MISSING is off: train one with `gridwatch train`"
            ) from problem
        logger.info("%s; preparing it in a child process", problem)
    started = time.perf_counter()
    prepare_in_child(store, train_if_missing=train_if_missing)
    try:
        detector = load_for_serving(store, store.active_version(), scorer, warm_up=warm_up)
    except ModelArtifactError as still:  # a read-only folder the child could not write the forest into
        logger.warning("%s; compiling the forest in this process, which loads scikit-learn", still)
        from app.detector.estimator import ensure_model  # noqa: PLC0415 - scikit-learn only on this rare path

        detector = ensure_model(store, train_if_missing=False)
        detector.use(scorer)
        if warm_up:
            detector.warm_up()
    detector.trained_now = True  # obtained by training (or converting) it, not by loading it
    detector.load_seconds = time.perf_counter() - started
    return detector


def prepare_in_child(store: ModelStore, *, train_if_missing: bool) -> None:
    """Train, or convert an old model, in a child process (``python -m app.detector.prepare``), so that this
    process never imports scikit-learn. The child's log lines are logged here; its failure is raised here as the
    same named error."""
    artifact = store.legacy_artifact  # MODEL_DIR/MODEL_NAME: the child builds the same store from it
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
    if code == PREPARE_TRAINED_UNUSABLE:
        raise VersionRefusedError(last)
    if code != 0:
        reason = last if code == PREPARE_UNAVAILABLE else f"model preparation failed (exit {code}): {last}"
        raise ModelUnavailableError(reason)
    logger.info("model prepared in a child process in %.1fs", time.perf_counter() - started)
