"""The model holder: which batches are scored on the event loop (a LoadedModel decides), whatever the front door."""

from __future__ import annotations

from app.detector.drift import DriftMonitor
from app.detector.model import Detector
from app.detector.scorer import Scorer
from app.scoring.holder import INLINE_BUDGET_STEPS, LoadedModel
from app.scoring.metrics import DriftGauges


def loaded(detector: Detector, scorer: Scorer) -> LoadedModel:
    twin = Detector.from_estimator(detector.estimator, detector.metadata, scorer=scorer)
    drift = DriftMonitor(twin.features, twin.metadata["feature_stats"])
    return LoadedModel(twin, drift, DriftGauges(twin.features))


def test_small_batches_stay_on_the_event_loop_and_large_ones_leave_it(detector: Detector):
    model = loaded(detector, Scorer.auto)
    steps_per_row = model.detector.forest.n_trees * model.detector.forest.max_depth
    largest_inline = INLINE_BUDGET_STEPS // steps_per_row
    assert model.scores_inline(1)
    assert model.scores_inline(64)  # the typical live batch
    assert model.scores_inline(largest_inline)
    assert not model.scores_inline(largest_inline + 1)
    assert not model.scores_inline(10_000)


def test_scikit_learn_scoring_never_runs_on_the_event_loop(detector: Detector):
    assert not loaded(detector, Scorer.sklearn).scores_inline(1)
