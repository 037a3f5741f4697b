"""A challenger in the shadow: a second model version scores the batches the active one answered, afterwards.

The answer is computed and sent by the active version alone; the shadow scores the same array in a background task
that runs once the response has gone out (on a worker thread), so it can neither change an answer nor fail or
delay one. Whatever happens in it is caught, logged and counted (``shadow_errors_total``). What operators compare:
``shadow_agreements_total`` (readings the shadow flagged exactly as the active version did) over
``shadow_readings_scored_total``, and the shadow's own ``shadow_anomalies_total``, all labelled by the shadow's
version; the Detector dashboard plots them and ``GridWatchShadowDisagrees`` fires when they part far more than two
models of one feeder should.

The shadow is named by ``SHADOW_MODEL_VERSION``, or else by ``gridwatch models shadow VERSION`` (kept in
``active.json``, followed by every worker like the active version).
"""

from __future__ import annotations

import logging

import numpy as np

from app.detector.model import Detector
from app.serving.metrics import SHADOW_AGREEMENTS, SHADOW_ANOMALIES, SHADOW_ERRORS, SHADOW_READINGS

logger = logging.getLogger(__name__)


class ShadowScorer:
    """Holds the challenger (or none) and scores batches with it, never raising."""

    def __init__(self) -> None:
        self._detector: Detector | None = None

    @property
    def version(self) -> str | None:
        detector = self._detector
        return None if detector is None else detector.version

    def use(self, detector: Detector | None) -> None:
        """Score with ``detector`` from the next batch on (None: stop shadow scoring)."""
        self._detector = detector
        if detector is not None:
            for counter in (SHADOW_READINGS, SHADOW_AGREEMENTS, SHADOW_ANOMALIES):
                counter.labels(detector.version)  # exported at 0 as soon as the shadow is there
        logger.info("shadow model: %s", detector.version if detector is not None else "none")

    def score(self, X: np.ndarray, active_flags: np.ndarray) -> None:
        """Score ``X`` with the shadow and count how it agrees with ``active_flags``; a background task."""
        detector = self._detector
        if detector is None:
            return
        try:
            flags, _ = detector.predict_batch(X)
            version = detector.version
            SHADOW_READINGS.labels(version).inc(X.shape[0])
            SHADOW_AGREEMENTS.labels(version).inc(int(np.count_nonzero(flags == active_flags)))
            SHADOW_ANOMALIES.labels(version).inc(int(np.count_nonzero(flags)))
        except Exception:  # the answer is long gone: nothing here may surface as a failed request
            SHADOW_ERRORS.inc()
            logger.exception("shadow scoring failed")
