"""Requests answered in the same event-loop iteration have their batches scored in one round
(``app.scoring.rounds``), and each still gets the answer to its own batch, through both entrances of /predict."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi import FastAPI

from app.detector.model import Detector
from app.scoring.rounds import ScoringRound, Waiting
from app.serving.app import create_app
from app.serving.settings import Settings
from app.sim import GridSimulator
from tests.serving.test_fast_path import FAST, FRAMEWORK, Answer, asgi_post, body_of, running


@pytest.fixture
def app(settings: Settings, detector: Detector) -> FastAPI:
    return create_app(settings, detector=detector)


@pytest.fixture
def round_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of batches each round scored."""
    sizes: list[int] = []
    score = ScoringRound._score

    def counted(self: ScoringRound, waiting: Waiting) -> None:
        sizes.append(len(waiting))
        score(self, waiting)

    monkeypatch.setattr(ScoringRound, "_score", counted)
    return sizes


@pytest.mark.parametrize("query", [FAST, FRAMEWORK], ids=["fast-path", "framework-route"])
def test_concurrent_requests_share_a_round_and_each_gets_its_own_answer(
    app: FastAPI, detector: Detector, round_sizes: list[int], query: bytes
) -> None:
    readings = [
        GridSimulator(anomaly_rate=0.3, seed=seed).batch(5 + 7 * seed).to_records(ground_truth=False)
        for seed in range(6)
    ]

    async def six_clients() -> list[Answer]:
        return list(await asyncio.gather(*(asgi_post(app, query, [body_of(batch)]) for batch in readings)))

    with running(app) as client:
        answers = client.portal.call(six_clients)
    assert sum(round_sizes) == 6
    assert max(round_sizes) > 1  # scored together, not one round per request
    for batch, answer in zip(readings, answers, strict=True):
        assert answer.status == 200
        flags, scores = detector.predict_batch(
            np.array([[reading[name] for name in detector.features] for reading in batch])
        )
        document = answer.json()
        assert document["total"] == len(batch)
        assert [p["anomaly"] for p in document["predictions"]] == flags.tolist()
        assert [p["score"] for p in document["predictions"]] == scores.tolist()
