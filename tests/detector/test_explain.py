"""Explanations (app/detector/explain.py, the local_diffi kernel): the same credits from the ahead-of-time, just-in-time
and NumPy walks; the faulty feature ranks first for the simulator's single-feature faults; contributions sum to 1;
training bands, robust z-scores and EN 50160 limits as documented."""

from __future__ import annotations

import numpy as np
import pytest

from app.detector import forest_jit
from app.detector.evaluate import explanation_quality
from app.detector.explain import Explainer, SupplyStandard, TrainingBand
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.sim import FAULTY_FEATURE, GridSimulator
from tests.detector.test_artifact import aot_kernels_or_skip, hard_rows

QUALITY_READINGS = 2_000


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 300, 1_000])
def test_ahead_of_time_just_in_time_and_numpy_credit_identically_and_score_as_scoring_does(
    detector: Detector, rows: int
):
    aot = aot_kernels_or_skip()
    from numba import njit

    from app.detector import forest_kernels

    forest = detector.forest
    X = np.ascontiguousarray(hard_rows(rows), dtype=np.float32)
    mask = (1 << forest.feature_bits) - 1
    args = (X, forest.threshold, forest.meta, forest.leaf_value, forest.roots, forest.max_depth, forest.feature_bits)
    jitted = njit(nogil=True)(forest_kernels.local_diffi)(*args, mask, 3)
    np.testing.assert_array_equal(aot.local_diffi(*args, mask, 3), jitted)
    sums, credits = forest.isolate(X.astype(np.float64), Scorer.numpy)
    np.testing.assert_array_equal(credits, jitted[:, 1:])
    np.testing.assert_array_equal(sums, jitted[:, 0])
    np.testing.assert_array_equal(sums, forest_jit.path_length_sums(*args))  # the sums of scoring, bit for bit


def test_an_explained_batch_is_scored_exactly_as_a_plain_one(detector: Detector):
    X = hard_rows(2_000)
    flags, scores = detector.predict_batch(X)
    explained_flags, explained_scores, credits = detector.predict_and_credit(X)
    np.testing.assert_array_equal(explained_scores, scores)
    np.testing.assert_array_equal(explained_flags, flags)
    assert credits.shape == (2_000, 3)


def test_the_kernel_names_are_the_same_on_both_paths():
    from app.detector import forest_kernels

    assert (*forest_kernels.KERNELS, forest_kernels.EXPLAIN_KERNEL) == forest_jit.KERNEL_NAMES


@pytest.mark.parametrize("seed", [1, 2026])
def test_the_faulty_feature_ranks_first_in_at_least_95_percent_of_flagged_readings(detector: Detector, seed: int):
    quality = explanation_quality(detector, n=QUALITY_READINGS, seed=seed)
    assert {row.kind for row in quality} == {kind.value for kind in FAULTY_FEATURE}
    for row in quality:
        assert row.flagged > 0.9 * row.readings, f"{row.kind}: the faults are flagged at all"
        assert row.ranked_first >= 0.95, row
        assert row.mean_contribution > 1 / 3, f"{row.kind}: more than an equal share"


def test_contributions_sum_to_one_or_are_all_zero(detector: Detector):
    X = GridSimulator(seed=3, anomaly_rate=0.2).batch(500).features()
    explainer = Explainer(detector.features, detector.metadata["feature_stats"], SupplyStandard())
    explanations = explainer.explain(X, detector.isolation_credits(X))
    totals = explanations.contributions.sum(axis=1)
    credited = explanations.top >= 0
    np.testing.assert_allclose(totals[credited], 1.0)
    assert np.all(totals[~credited] == 0.0)
    assert np.all(explanations.contributions >= 0.0)
    flags, _ = detector.predict_batch(X)
    assert credited[flags].all(), "a flagged reading was isolated somewhere: it always has a top feature"


def test_bands_z_scores_and_limits(detector: Detector):
    stats = detector.metadata["feature_stats"]
    explainer = Explainer(detector.features, stats, SupplyStandard(nominal_voltage=230.0, nominal_frequency=50.0))
    X = np.array([[260.0, stats["current"]["quantiles"]["0.5"], 49.4], [230.0, 10.0, 50.0]])
    explanations = explainer.explain(X, np.ones((2, 3)))
    voltage = TrainingBand.of(stats["voltage"])
    assert voltage.median == stats["voltage"]["quantiles"]["0.5"]
    assert voltage.low == stats["voltage"]["quantiles"]["0.01"]
    assert voltage.high == stats["voltage"]["quantiles"]["0.99"]
    assert explanations.z[0, 0] == pytest.approx((260.0 - voltage.median) / voltage.spread)
    assert explanations.z[0, 1] == 0.0
    assert explainer.limits == ((207.0, 253.0), None, (49.5, 50.5))
    assert explanations.outside_limits[0].tolist()[::2] == [True, True]
    assert explanations.outside_limits[1].tolist()[::2] == [False, False]
    sixty_hertz = Explainer(detector.features, stats, SupplyStandard(nominal_voltage=120.0, nominal_frequency=60.0))
    assert sixty_hertz.limits[0] == (108.0, 132.0)
    assert sixty_hertz.limits[2] == (59.4, 60.6)


def test_the_robust_spread_is_a_standard_deviation_for_normal_data():
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, 200_000)
    quantiles = {str(q): float(np.quantile(values, q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}
    band = TrainingBand.of({"mean": 10.0, "std": 2.0, "min": 0.0, "max": 20.0, "quantiles": quantiles})
    assert band.spread == pytest.approx(2.0, rel=0.01)
    older = TrainingBand.of({"mean": 10.0, "std": 2.0, "min": 1.0, "max": 19.0})
    assert older == TrainingBand(median=10.0, spread=2.0, low=1.0, high=19.0), "models stored without quantiles"
