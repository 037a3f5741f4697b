"""Explanations (app/detector/explain.py, the local_diffi kernel): the same credits from the ahead-of-time, just-in-time
and NumPy walks; the faulty feature ranks first for the simulator's single-feature faults; contributions sum to 1;
training bands, robust z-scores and EN 50160 limits as documented."""

from __future__ import annotations

import numpy as np
import pytest

from app.detector import forest_jit
from app.detector.explain import Explainer, SupplyStandard, TrainingBand
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.sim import AnomalyKind, GridSimulator
from tests.detector.test_artifact import aot_kernels_or_skip, hard_rows

FAULTY_FEATURE = {
    AnomalyKind.VOLTAGE_SPIKE: "voltage",
    AnomalyKind.VOLTAGE_SAG: "voltage",
    AnomalyKind.CURRENT_SURGE: "current",
    AnomalyKind.FREQUENCY_EXCURSION: "frequency",
}
"""The simulator's single-feature faults and the quantity each one puts out of line (a current surge drags the
voltage down too, as on a real feeder: the current is still its cause)."""
QUALITY_READINGS = 2_000


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 300, 1_000])
def test_ahead_of_time_just_in_time_and_numpy_credit_identically(detector: Detector, rows: int):
    aot = aot_kernels_or_skip()
    from numba import njit

    from app.detector import forest_kernels

    forest = detector.forest
    X = np.ascontiguousarray(hard_rows(rows), dtype=np.float32)
    mask = (1 << forest.feature_bits) - 1
    args = (X, forest.threshold, forest.meta, forest.roots, forest.max_depth, forest.feature_bits, mask, 3)
    jitted = njit(nogil=True)(forest_kernels.local_diffi)(*args)
    np.testing.assert_array_equal(aot.local_diffi(*args), jitted)
    np.testing.assert_array_equal(forest.local_diffi(X.astype(np.float64), Scorer.numpy), jitted)
    if forest_jit.AVAILABLE:
        np.testing.assert_array_equal(forest.local_diffi(X.astype(np.float64), Scorer.numba), jitted)


def test_the_kernel_names_are_the_same_on_both_paths():
    from app.detector import forest_kernels

    assert (*forest_kernels.KERNELS, forest_kernels.EXPLAIN_KERNEL) == forest_jit.KERNEL_NAMES


def faulty_ranks_first(detector: Detector, kind: AnomalyKind, seed: int) -> float:
    """The share of the flagged readings of ``kind`` whose top contributing feature is the faulty one."""
    X = GridSimulator(seed=seed).batch(QUALITY_READINGS, kind=kind).features()
    flags, _ = detector.predict_batch(X)
    assert flags.mean() > 0.9, "the faults are flagged at all"
    explanations = Explainer(detector.features, detector.metadata["feature_stats"], SupplyStandard()).explain(
        X, detector.isolation_credits(X)
    )
    top = [explanations.top_feature(row) for row in np.flatnonzero(flags)]
    return top.count(FAULTY_FEATURE[kind]) / len(top)


@pytest.mark.parametrize("kind", list(FAULTY_FEATURE), ids=str)
def test_the_faulty_feature_ranks_first_in_at_least_95_percent_of_flagged_readings(detector: Detector, kind):
    for seed in (1, 2):
        assert faulty_ranks_first(detector, kind, seed) >= 0.95


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
