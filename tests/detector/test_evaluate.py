"""Detection quality of the default model on labelled simulated streams it never saw.

Floors are set under what was measured (docs/model.md, "Detection quality"): at 2 % anomalies the default model measured
precision 0.92, recall 0.998, ROC-AUC 0.9998, and every kind's recall >= 0.99.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.detector.evaluate import evaluate_detector, labelled_stream, sweep_contamination
from app.detector.model import TRAINING_INTERVAL_S, TRAINING_START, Detector, ModelConfig


@pytest.mark.parametrize("seed", [2026, 7])
def test_default_model_catches_most_anomalies_with_few_false_alarms(detector: Detector, seed: int):
    report = evaluate_detector(detector, n=20_000, anomaly_rate=0.02, seed=seed)
    assert report.anomalies == pytest.approx(400, rel=0.2)
    assert report.recall >= 0.95
    assert report.precision >= 0.85
    assert report.roc_auc >= 0.995
    assert report.false_positive_rate <= 0.004  # contamination 0.002 is the designed false-positive rate
    assert {kind.kind for kind in report.per_kind} == {
        "voltage_spike",
        "voltage_sag",
        "frequency_excursion",
        "current_surge",
    }
    for kind in report.per_kind:
        assert kind.recall >= 0.9, kind
        assert kind.mean_score > 0


def test_extreme_readings_are_always_caught(detector: Detector):
    report = evaluate_detector(detector, n=2_000, anomaly_rate=0.5, kinds=["extreme"])
    assert report.per_kind[0].kind == "extreme"
    assert report.per_kind[0].recall == 1.0


def test_report_without_anomalies_is_well_defined(detector: Detector):
    report = evaluate_detector(detector, n=2_000, anomaly_rate=0.0)
    assert report.anomalies == 0
    assert report.recall == 0.0
    assert np.isnan(report.roc_auc)
    assert report.false_positive_rate == report.flagged / 2_000


def test_sweep_at_the_models_own_contamination_reproduces_its_flags(detector: Detector):
    """Contamination only moves the threshold, so the sweep's shortcut must agree with the real model."""
    contamination = detector.config.contamination
    ((_, swept),) = sweep_contamination(detector, [contamination], n=5_000, seed=3)
    assert swept == evaluate_detector(detector, n=5_000, seed=3)


def test_sweep_trades_precision_for_recall(detector: Detector):
    results = sweep_contamination(detector, [0.0005, 0.002, 0.02], n=10_000)
    fprs = [report.false_positive_rate for _, report in results]
    recalls = [report.recall for _, report in results]
    assert fprs == sorted(fprs)
    assert recalls == sorted(recalls)
    assert results[0][1].precision > results[-1][1].precision


def test_evaluation_period_starts_after_the_training_period_ends():
    training_end = TRAINING_START.timestamp() + ModelConfig().train_samples * TRAINING_INTERVAL_S
    assert labelled_stream(n=10).timestamp[0] > training_end
