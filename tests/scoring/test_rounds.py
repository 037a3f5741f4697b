"""A scoring round: the batches requests hand over during one event-loop iteration are scored in one callback, each on
its own and in order, each answer going to the request that handed its batch over; a failure stays with its batch, a
cancelled request's batch is skipped, and a new event loop never waits on a round an old one left behind."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from opentelemetry import trace

from app.detector.model import Detector
from app.scoring.batch import BatchScorer, ScoredBatch
from app.scoring.holder import LoadedModel
from app.scoring.rounds import ScoringRound
from app.sim import GridSimulator
from tests.scoring.test_holder import loaded


class RecordingScorer(BatchScorer):
    """The real scorer, noting each batch it scores (its first reading) and when a round's callback began."""

    def __init__(self) -> None:
        super().__init__(trace.NoOpTracer(), exemplars=False)
        self.scored: list[float] = []
        self.fail_on: float | None = None

    def score(self, model: LoadedModel, X: np.ndarray, *, credits: bool = False) -> ScoredBatch:
        self.scored.append(float(X[0, 0]))
        if X[0, 0] == self.fail_on:
            raise ValueError("this batch cannot be scored")
        return super().score(model, X, credits=credits)


def batches(count: int) -> list[np.ndarray]:
    """Distinct batches of different sizes, told apart by their first voltage."""
    return [
        GridSimulator(anomaly_rate=0.2, seed=seed).batch(8 + seed).features() + np.array([seed * 1e-3, 0, 0])
        for seed in range(count)
    ]


@pytest.fixture
def model(detector: Detector) -> LoadedModel:
    return loaded(detector, detector.scorer)


def test_batches_handed_over_in_one_iteration_are_scored_together_each_answer_its_own(model: LoadedModel):
    scorer = RecordingScorer()
    rounds = ScoringRound(scorer)
    handed = batches(5)

    async def five_requests() -> tuple[list[float], list[ScoredBatch]]:
        waiting = [rounds.score(model, X) for X in handed]
        before = list(scorer.scored)
        return before, list(await asyncio.gather(*waiting))

    before, answers = asyncio.run(five_requests())
    assert before == []  # nothing scored while the requests were handing their batches over
    assert scorer.scored == [float(X[0, 0]) for X in handed]  # then each batch on its own, in order
    for X, answer in zip(handed, answers, strict=True):
        expected = model.detector.predict_batch(X)
        np.testing.assert_array_equal(answer.flags, expected[0])
        np.testing.assert_array_equal(answer.scores, expected[1])


def test_a_batch_handed_over_later_makes_the_next_round(model: LoadedModel):
    scorer = RecordingScorer()
    rounds = ScoringRound(scorer)
    first, second = batches(2)

    async def one_after_the_other() -> list[list[float]]:
        seen = []
        await rounds.score(model, first)
        seen.append(list(scorer.scored))
        await rounds.score(model, second)
        seen.append(list(scorer.scored))
        return seen

    assert asyncio.run(one_after_the_other()) == [[first[0, 0]], [first[0, 0], second[0, 0]]]


def test_a_failing_batch_fails_only_its_own_request(model: LoadedModel):
    scorer = RecordingScorer()
    rounds = ScoringRound(scorer)
    handed = batches(3)
    scorer.fail_on = float(handed[1][0, 0])

    async def three_requests() -> list[object]:
        return list(await asyncio.gather(*(rounds.score(model, X) for X in handed), return_exceptions=True))

    answers = asyncio.run(three_requests())
    assert isinstance(answers[0], ScoredBatch)
    assert isinstance(answers[1], ValueError)
    assert isinstance(answers[2], ScoredBatch)
    assert len(answers[2].flags) == len(handed[2])


def test_a_cancelled_request_s_batch_is_not_scored(model: LoadedModel):
    scorer = RecordingScorer()
    rounds = ScoringRound(scorer)
    kept, cancelled = batches(2)

    async def one_request_cancelled() -> ScoredBatch:
        answer = rounds.score(model, kept)
        rounds.score(model, cancelled).cancel()
        return await answer

    assert len(asyncio.run(one_request_cancelled()).flags) == len(kept)
    assert scorer.scored == [kept[0, 0]]


def test_a_new_event_loop_scores_although_an_old_one_stopped_before_its_round(model: LoadedModel):
    scorer = RecordingScorer()
    rounds = ScoringRound(scorer)
    left, handed = batches(2)
    old = asyncio.new_event_loop()

    async def hand_over_and_stop() -> None:
        rounds.score(model, left)
        asyncio.get_running_loop().stop()  # the loop stops at the end of this iteration, before the round

    old.run_until_complete(hand_over_and_stop())
    old.close()

    async def on_a_new_loop() -> ScoredBatch:
        async with asyncio.timeout(30):  # a round never scheduled would wait forever: fail instead
            return await rounds.score(model, handed)

    assert len(asyncio.run(on_a_new_loop()).flags) == len(handed)
    assert scorer.scored == [handed[0, 0]]
