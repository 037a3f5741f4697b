"""Part 1: the scorer alone, in this process: scikit-learn's ``decision_function`` against the compiled forest (numba
and NumPy paths), median time per call for each batch size; and the default scorer with and without explanations."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from app.detector.explain import Explainer, SupplyStandard
from app.detector.forest_jit import AVAILABLE as NUMBA_AVAILABLE
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.sim import GridSimulator
from app.tools.bench.results import BenchConfig, ScorerRow


def median_seconds(call: Callable[[], object], min_seconds: float) -> float:
    call()  # warm: caches, numba's dispatcher
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scorer_table(detector: Detector, config: BenchConfig) -> list[ScorerRow]:
    X = GridSimulator(anomaly_rate=0.02, seed=11, interval_s=13.0).batch(max(config.sizes)).features()
    forest, estimator = detector.forest, detector.estimator
    assert estimator is not None, "the benchmark loads the estimator (with_estimator=True)"
    explainer = Explainer(detector.features, detector.metadata["feature_stats"], SupplyStandard())
    rows = []
    for size in config.sizes:
        batch = X[:size]
        sk = median_seconds(partial(estimator.decision_function, batch), config.min_seconds)
        nb = (
            median_seconds(partial(forest.decision_function, batch, Scorer.numba), config.min_seconds)
            if NUMBA_AVAILABLE
            else None
        )
        npy = median_seconds(partial(forest.decision_function, batch, Scorer.numpy), config.min_seconds)
        scored = median_seconds(partial(detector.predict_batch, batch), config.min_seconds)
        explained = median_seconds(partial(_score_and_explain, detector, explainer, batch), config.min_seconds)
        rows.append(
            ScorerRow(
                batch=size,
                sklearn_ms=round(sk * 1000, 4),
                numba_ms=round(nb * 1000, 4) if nb is not None else None,
                numpy_ms=round(npy * 1000, 4),
                speedup_numba=round(sk / nb, 1) if nb else None,
                speedup_numpy=round(sk / npy, 1),
                explained_ms=round(explained * 1000, 4),
                scored_ms=round(scored * 1000, 4),
            )
        )
    return rows


def _score_and_explain(detector: Detector, explainer: Explainer, X: np.ndarray) -> None:
    """What ``/predict?explain=true`` computes beyond parsing: scores and credits in one walk, the explanations."""
    _, _, credits = detector.predict_and_credit(X)
    explainer.explain(X, credits)
