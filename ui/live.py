"""One browser session's live stream: simulate readings, have the backend score them, remember what it said.

This is the UI's logic without Streamlit: the page keeps one ``LiveSession`` in ``st.session_state`` and its
buttons and streaming fragment call the functions here. ``stream_tick`` is exactly what one streaming tick does,
so tests call it directly (Streamlit's AppTest does not run ``st.fragment(run_every=...)`` ticks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from app.sim import DEFAULT_ANOMALY_KINDS, AnomalyKind, GridSimulator, ReadingBatch
from ui.client import BackendClient, BackendError, Health, PredictResult
from ui.config import WHY_READINGS, WINDOW_READINGS
from ui.detection import DetectionStats, outcomes
from ui.load import LoadReport, SustainedLoad
from ui.traffic import TrafficLog, timed_predict
from ui.why import Explanation, FlaggedLog, FlaggedReading, why_frame
from ui.window import RollingWindow

STREAM_SOURCE = "stream"


@dataclass(frozen=True)
class StreamSettings:
    """The sidebar's stream settings."""

    batch_size: int = 64
    interval_s: float = 1.0
    anomaly_rate: float = 0.03
    anomaly_kinds: tuple[str, ...] = tuple(kind.value for kind in DEFAULT_ANOMALY_KINDS)
    window: int = int(WINDOW_READINGS.default)

    @property
    def effective_anomaly_rate(self) -> float:
        """No kinds selected means nothing can be injected, whatever the rate says."""
        return self.anomaly_rate if self.anomaly_kinds else 0.0


@dataclass(frozen=True)
class BatchSummary:
    """The last scored batch, for the counters' deltas."""

    readings: int
    flagged: int
    injected: int
    served_by: str
    latency_s: float
    model_version: str | None = None
    """The model version that scored it: after a promotion it changes before the next /health check shows it."""


@dataclass
class BackendState:
    """What the UI last learned about the backend from ``/health`` and ``/model``."""

    url: str | None = None
    health: Health | None = None
    model: dict[str, Any] | None = None
    error: BackendError | None = None
    checked_at: float | None = None
    """``time.monotonic()`` of the last check."""

    @property
    def ready(self) -> bool:
        return self.error is None and self.health is not None and self.health.ready


def scored_frame(
    batch: ReadingBatch, result: PredictResult, explanations: dict[int, Explanation] | None = None
) -> pd.DataFrame:
    """One row per reading: the readings, their ground truth, the backend's verdict and its outcome, then why it
    was flagged as the tooltips show it (``ui.why.WHY_COLUMNS``; ``explanations`` by position in the batch)."""
    scored = pd.DataFrame(
        {
            "time": pd.to_datetime(batch.timestamp, unit="s", utc=True),
            "voltage": batch.voltage,
            "current": batch.current,
            "frequency": batch.frequency,
            "truth": batch.is_anomaly,
            "kind": [kind or "" for kind in batch.anomaly_kind],
            "flagged": result.flags,
            "score": result.scores,
            "outcome": outcomes(batch.is_anomaly, result.flags),
            "served_by": result.served_by,
            "model_version": result.model_version or "",
        }
    )
    return pd.concat([scored, why_frame(result.flags.tolist(), explanations)], axis=1)


@dataclass
class LiveSession:
    """Everything one browser session has streamed and measured since its last reset."""

    seed: int | None = None
    """Seed of the simulator (None: fresh entropy), so a test or a demo can be reproduced."""
    window: RollingWindow = field(default_factory=lambda: RollingWindow(int(WINDOW_READINGS.default)))
    stats: DetectionStats = field(default_factory=DetectionStats)
    traffic: TrafficLog = field(default_factory=TrafficLog)
    backend: BackendState = field(default_factory=BackendState)
    streaming: bool = False
    last_error: BackendError | None = None
    """The last ``/predict`` failure of the live view; cleared by the next success."""
    last_batch: BatchSummary | None = None
    batches_scored: int = 0
    batches_failed: int = 0
    sustained: SustainedLoad | None = None
    load_report: LoadReport | None = None
    flagged: FlaggedLog = field(default_factory=lambda: FlaggedLog(WHY_READINGS))
    """The last flagged readings with their explanations, for the why-panel."""
    why_unavailable: str | None = None
    """Why the last flagged readings came without explanations, for the why-panel; None once some came."""
    _simulator: GridSimulator | None = field(default=None, repr=False)
    _simulator_key: tuple[float, tuple[str, ...]] | None = field(default=None, repr=False)
    _simulators_made: int = field(default=0, repr=False)
    _clock: float | None = field(default=None, repr=False)
    """Epoch seconds of the next simulated reading, so a new simulator continues the stream's time axis."""

    def simulator(self, settings: StreamSettings) -> GridSimulator:
        """The session's simulator, rebuilt (continuing the clock) when the anomaly settings change."""
        key = (settings.effective_anomaly_rate, tuple(settings.anomaly_kinds))
        if self._simulator is None or key != self._simulator_key:
            start = datetime.fromtimestamp(self._clock, tz=UTC) if self._clock is not None else None
            seed = None if self.seed is None else self.seed + self._simulators_made
            self._simulator = GridSimulator(
                anomaly_rate=key[0], anomaly_kinds=key[1] or (), start=start, seed=seed, interval_s=1.0
            )
            self._simulator_key = key
            self._simulators_made += 1
        return self._simulator

    def generate(self, client: BackendClient, settings: StreamSettings) -> bool:
        """Simulate one batch and score it (the Generate Batch button, and each streaming tick)."""
        return self.score(client, self.simulator(settings).batch(settings.batch_size), settings)

    def inject_extreme(self, client: BackendClient, settings: StreamSettings) -> bool:
        """Send one reading far out of every range, which the model must flag."""
        return self.score(client, self.simulator(settings).extreme(), settings)

    def score(self, client: BackendClient, batch: ReadingBatch, settings: StreamSettings) -> bool:
        """Have the backend score ``batch`` and record the result; False (and ``last_error``) if it failed.

        A failed batch is not shown: its readings were never scored, so there is nothing to compare.
        """
        if len(batch):
            self._clock = float(batch.timestamp[-1]) + 1.0
        # The batch's own request asks why (docs/ui.md weighs it against a second request for the flagged readings,
        # which would have the backend count them twice: anomalies_total, the drift window, the shadow).
        record, result = timed_predict(client, batch.to_records(), source=STREAM_SOURCE, explain=True)
        self.traffic.add(record)
        if isinstance(result, BackendError):
            self.last_error = result
            self.batches_failed += 1
            return False
        self.last_error = None
        self.batches_scored += 1
        self.stats.update(batch.is_anomaly, result.flags, batch.anomaly_kind)
        explanations = self.explained(client, result)
        frame = scored_frame(batch, result, explanations)
        self.window.resize(settings.window)
        self.window.append(frame)
        self.flagged.extend(_flagged_readings(frame, explanations or {}))
        self.last_batch = BatchSummary(
            readings=len(batch),
            flagged=int(result.flags.sum()),
            injected=int(batch.is_anomaly.sum()),
            served_by=result.served_by,
            latency_s=result.latency_s,
            model_version=result.model_version,
        )
        return True

    def explained(self, client: BackendClient, scored: PredictResult) -> dict[int, Explanation] | None:
        """The flagged readings' explanations by position in the batch, or None when they came without any (and
        ``why_unavailable`` says so): a backend that predates explanations ignores ``explain=true`` and scores as
        before, and the batch is shown as always."""
        explanations = scored.explanations or ()
        explained = {position: why for position, why in enumerate(explanations) if why is not None}
        if not scored.flags.any():
            return None  # nothing to explain: what the panel says stays as it was
        if not explained:
            self.why_unavailable = (
                f"the backend at {client.base_url} sends none (it predates `/predict?explain=true`, or its "
                "explanations are not in a form this UI reads)"
            )
            return None
        self.why_unavailable = None
        return explained

    def reset(self) -> None:
        """Forget everything streamed and measured; keep streaming and any running load as they are."""
        self.window.clear()
        self.flagged.clear()
        self.why_unavailable = None
        self.stats = DetectionStats()
        self.traffic.clear()
        self.last_error = None
        self.last_batch = None
        self.batches_scored = self.batches_failed = 0
        self.load_report = None
        self._simulator = None
        self._clock = None

    @property
    def sustained_running(self) -> bool:
        return self.sustained is not None and self.sustained.running


def _flagged_readings(frame: pd.DataFrame, explanations: dict[int, Explanation]) -> list[FlaggedReading]:
    """The batch's explained (so flagged) readings in time order, for the why-panel."""
    readings = []
    for position, explanation in sorted(explanations.items()):
        row = frame.iloc[position]
        readings.append(
            FlaggedReading(
                time=row["time"],
                score=float(row["score"]),
                outcome=str(row["outcome"]),
                kind=str(row["kind"]),
                explanation=explanation,
            )
        )
    return readings


def stream_tick(live: LiveSession, client: BackendClient, settings: StreamSettings) -> bool:
    """One tick of the streaming fragment: while streaming, score the next batch. Returns True if it did."""
    if not live.streaming:
        return False
    return live.generate(client, settings)


def refresh_backend(
    state: BackendState, client: BackendClient, *, max_age_s: float, force: bool = False
) -> BackendState:
    """Re-check ``/health`` when the last check is older than ``max_age_s`` or the URL changed, and fetch
    ``/model`` when the model version is new. Never raises: problems land in ``state.error`` for the banner."""
    fresh = (
        state.checked_at is not None
        and state.url == client.base_url
        and time.monotonic() - state.checked_at < max_age_s
    )
    if fresh and not force:
        return state
    if state.url != client.base_url:
        state.health, state.model = None, None
    state.url = client.base_url
    state.checked_at = time.monotonic()
    try:
        state.health = client.health()
        state.error = None
        version = state.health.model_version
        if state.health.ready and (state.model is None or state.model.get("model_version") != version):
            state.model = client.model()
    except BackendError as error:
        state.error = error
        state.health = None
    return state


def anomaly_kind_options() -> Sequence[str]:
    """Every kind the simulator can inject at random (``extreme`` has its own button)."""
    return [kind.value for kind in AnomalyKind if kind is not AnomalyKind.EXTREME]
