"""Scoring the batches of one event-loop iteration back to back, each on its own, instead of one per request in
between the others' parsing, answering and logging.

A worker serving many connections takes in several requests per iteration of its event loop, and each ran start to
end: parse, walk the forest's 2.7 MB of trees, answer, log. The walk evicts the interpreter's working set from the
CPU's caches and the request's Python work evicts the trees: in the live worker the walk took a fifth longer than in
a loop, and the access line twice as long (docs/performance.md). Here a request hands its parsed batch to the round
and waits; the round scores every batch handed to it during the iteration in one callback, one after the other,
with ``BatchScorer.score`` as before (each batch its own walk, its own metrics, its own drift rows), and each request
then answers. A request alone on an idle server waits one loop step more, no longer.
"""

from __future__ import annotations

import asyncio

import numpy as np

from app.scoring.batch import BatchScorer, ScoredBatch
from app.scoring.holder import LoadedModel

Waiting = list[tuple[LoadedModel, np.ndarray, "asyncio.Future[ScoredBatch]"]]


class ScoringRound:
    """The batches handed over during one iteration of the running event loop, scored in one callback.

    Only for a scorer without tracing: the callback runs outside each request's context, where a batch's span would
    lose its parent. One event loop per worker, so no lock; a new loop (a test's, a restarted server's) starts a
    new round, whatever a loop that stopped left behind."""

    def __init__(self, scorer: BatchScorer) -> None:
        self.scorer = scorer
        self._waiting: Waiting = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def score(self, model: LoadedModel, X: np.ndarray) -> asyncio.Future[ScoredBatch]:
        """The batch scored with ``model`` once the event loop has taken in the requests at hand."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or not self._waiting:  # the iteration's first batch: a new round
            self._loop, self._waiting = loop, []
            loop.call_soon(self._score, self._waiting)
        scored: asyncio.Future[ScoredBatch] = loop.create_future()
        self._waiting.append((model, X, scored))
        return scored

    def _score(self, waiting: Waiting) -> None:
        if waiting is self._waiting:  # batches handed over from now on make the next round
            self._waiting = []
        for model, X, scored in waiting:
            if scored.cancelled():  # its request was cancelled (the server stopping): nobody waits for it
                continue
            try:
                scored.set_result(self.scorer.score(model, X))
            except Exception as error:  # the request that handed the batch over answers for it
                scored.set_exception(error)
