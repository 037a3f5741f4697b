"""The metrics of the model a worker serves, whatever front door feeds it: scoring, drift, hot swap and shadow.

Names and labels are a contract with ``grafana-dashboards/`` and ``prometheus-rules/``; tests fail if those use a
metric that no module defines. Conventions: base units (seconds), ``_total`` counters, bounded labels only
(``feature`` is one of the model's three features, ``model_version`` and ``shadow_version`` name versions of
``MODEL_DIR``, which the store's retention bounds).

**Several worker processes.** With ``WORKERS>1`` prometheus-client keeps every value in a shared memory-mapped
file (``PROMETHEUS_MULTIPROC_DIR``) and the exposition merges them. Every gauge declares how to merge:
``livemax`` for facts that are the same in every worker (model info), ``livemostrecent`` for the sliding-window
statistics (the window of the worker that scored last). ``live*`` modes drop a worker's gauges once it is dead.

**Exemplars.** When a batch is scored inside a traced request, its latency observation carries the trace id as an
exemplar (``trace_exemplar``), visible in the OpenMetrics exposition; multiprocess files cannot store them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, values

from app.detector.drift import DriftMonitor, DriftSnapshot

# `*_created` samples double the series count in the text format and carry nothing the dashboards use; they are
# also absent in multiprocess mode, so disabling them keeps both modes' exposition identical.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Half a millisecond to ten seconds: a small batch scores in well under a millisecond, a 10,000-row batch or an
overloaded worker takes seconds. 0.1 s is a bucket edge because the latency SLO is "99 % under 100 ms"."""

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Readings per request, up to the default MAX_BATCH."""

INFERENCE_LATENCY = Histogram(
    "inference_latency_seconds",
    "Time spent scoring one batch with the model (excludes parsing and serialisation).",
    buckets=LATENCY_BUCKETS,
)
ANOMALIES = Counter("anomalies", "Readings the model flagged as anomalous.")
READINGS_SCORED = Counter("readings_scored", "Readings scored by the model.")
READINGS_EXPLAINED = Counter(
    "readings_explained", "Readings whose answer carried an explanation (/predict?explain=true, STREAM_EXPLAIN)."
)
BATCH_SIZE = Histogram(
    "batch_size_readings",
    "Readings per scored /predict request.",
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_INFO = Gauge(
    "model_info",
    "Always 1; labels name the loaded model version and the scikit-learn version it was trained with.",
    ["model_version", "sklearn_version"],
    multiprocess_mode="livemax",
)
MODEL_TRAINED_TIMESTAMP = Gauge(
    "model_trained_timestamp_seconds",
    "When the serving model was trained (Unix time, from its metadata): its age is time() minus this.",
    multiprocess_mode="livemin",
)
MODEL_MAX_AGE = Gauge(
    "model_max_age_seconds",
    "MODEL_MAX_AGE: the age past which the serving model counts as stale (GridWatchModelStale); 0: never.",
    multiprocess_mode="livemax",
)
MODEL_LOAD_DURATION = Gauge(
    "model_load_duration_seconds",
    "How long obtaining the model took at start-up: loading the artifact, or training it (source label).",
    ["source"],
    multiprocess_mode="livemax",
)
FEATURE_WINDOW_MEAN = Gauge(
    "feature_window_mean",
    "Mean of each input feature over the sliding window of recent readings, in the feature's unit (V, A, Hz).",
    ["feature"],
    multiprocess_mode="livemostrecent",
)
FEATURE_DRIFT_SCORE = Gauge(
    "feature_drift_score",
    "Standardised shift of the window mean from the training mean (|window mean - training mean| / training "
    "std). Normal traffic stays below 2.2 at any hour of the day; above 3 means the input has drifted.",
    ["feature"],
    multiprocess_mode="livemostrecent",
)
ANOMALY_RATIO_WINDOW = Gauge(
    "anomaly_ratio_window",
    "Fraction of the readings in the sliding window that were flagged.",
    multiprocess_mode="livemostrecent",
)
DRIFT_WINDOW_READINGS = Gauge(
    "drift_window_readings",
    "Readings currently in the sliding window (it fills up to DRIFT_WINDOW after a start).",
    multiprocess_mode="livemostrecent",
)


MODEL_SWAPS = Counter(
    "model_swaps",
    "Changes of the serving model to MODEL_DIR's active version without a restart (result: swapped, or failed when "
    "the new version could not be loaded and the old one kept serving).",
    ["result"],
)
for _result in ("swapped", "failed"):
    MODEL_SWAPS.labels(_result)  # exported at 0 from the start, so the first swap is an increase
PROMOTION_CHECKS = Counter(
    "model_promotion_checks",
    "Promotions this worker judged with MODEL_AUTO_ROLLBACK on, by outcome: held (the promoted version flagged "
    "within the band of the one it replaced, on the same readings), rolled_back (it did not, and this worker rolled "
    "it back), superseded (it did not, but the pointer had moved on), undecided (too few readings within the hour).",
    ["outcome"],
)
for _outcome in ("held", "rolled_back", "superseded", "undecided"):
    PROMOTION_CHECKS.labels(_outcome)
MODEL_REFUSING_ACTIVE = Gauge(
    "model_refusing_active",
    "1 while this worker keeps serving an older version because MODEL_DIR's active version (or active.json) does "
    "not load, else 0: a pod that restarts would not serve what this one serves, so versions differ across pods.",
    multiprocess_mode="livemax",
)


SHADOW_READINGS = Counter(
    "shadow_readings_scored",
    "Readings the shadow (challenger) model scored after the active one answered.",
    ["shadow_version"],
)
SHADOW_AGREEMENTS = Counter(
    "shadow_agreements",
    "Readings the shadow model flagged exactly as the active model did (both anomalous or both normal).",
    ["shadow_version"],
)
SHADOW_ANOMALIES = Counter(
    "shadow_anomalies",
    "Readings the shadow model flagged as anomalous (the active model's own count is anomalies_total).",
    ["shadow_version"],
)
SHADOW_BATCHES = Counter(
    "shadow_batches_scored",
    "Batches the shadow model scored; beside shadow_skipped_total, the share of batches it keeps up with.",
    ["shadow_version"],
)
SHADOW_SCORING_SECONDS = Counter(
    "shadow_scoring_seconds",
    "CPU seconds the shadow model spent scoring, bounded by SHADOW_MAX_SHARE of the wall-clock time per worker.",
    ["shadow_version"],
)
SHADOW_ERRORS = Counter(
    "shadow_errors",
    "Shadow scorings that failed; never an answer's failure, which the active model had already sent.",
)
SHADOW_SKIPPED = Counter(
    "shadow_skipped",
    "Batches the shadow model did not score because it had fallen behind (its queue was full) or had used its "
    "SHADOW_MAX_SHARE of the time: the answer is never held up by the shadow, the shadow's work is shed first.",
)


def trace_exemplar() -> dict[str, str] | None:
    """``{"trace_id": ...}`` of the current sampled span, for attaching to an observation; None when untraced."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": format(context.trace_id, "032x")}


class DriftGauges:
    """The window gauges, and how each scored batch of the served model reaches them.

    **One process** (a worker with WORKERS=1, the stream consumer): the gauges read the window of the monitor that
    recorded the last batch when they are scraped (``set_function``), so a batch only copies its rows into its
    window (``DriftMonitor.add``) and the statistics are computed once per scrape instead of once per batch.
    **Several workers**: a gauge's value lives in the worker's metrics file, which a scrape of another worker reads,
    so each batch's statistics are written there (``DriftMonitor.update``), as ``livemostrecent`` expects. Either
    way the gauges show the window of the last batch scored.
    """

    def __init__(self, features: Sequence[str]) -> None:
        self.features = tuple(features)
        self.on_scrape = values.ValueClass is values.MutexValue  # prometheus-client's choice: no multiprocess files
        self._means = {name: FEATURE_WINDOW_MEAN.labels(name) for name in features}
        self._scores = {name: FEATURE_DRIFT_SCORE.labels(name) for name in features}

    def record(self, monitor: DriftMonitor, X: np.ndarray, flags: np.ndarray) -> None:
        """A scored batch (rows in the model's feature order) and its flags, added to ``monitor``'s window."""
        if not self.on_scrape:
            self.export(monitor.update(X, flags))
            return
        monitor.add(X, flags)
        if _SCRAPED_WINDOW.monitor is not monitor:  # a new model's first batch (or another app's, in tests)
            _SCRAPED_WINDOW.show(monitor, self.features)

    def export(self, snapshot: DriftSnapshot) -> None:
        for name, mean in snapshot.means.items():
            self._means[name].set(mean)
            self._scores[name].set(snapshot.scores[name])
        ANOMALY_RATIO_WINDOW.set(snapshot.anomaly_ratio)
        DRIFT_WINDOW_READINGS.set(snapshot.readings)


class _ScrapedWindow:
    """The window the gauges read when scraped in one process."""

    def __init__(self) -> None:
        self.monitor: DriftMonitor | None = None
        self._features: set[str] = set()
        self._lock = threading.Lock()

    def show(self, monitor: DriftMonitor, features: Sequence[str]) -> None:
        with self._lock:
            self.monitor = monitor
            if not self._features:
                ANOMALY_RATIO_WINDOW.set_function(partial(self._read, _anomaly_ratio))
                DRIFT_WINDOW_READINGS.set_function(partial(self._read, _readings))
            for name in set(features) - self._features:
                FEATURE_WINDOW_MEAN.labels(name).set_function(partial(self._read, partial(_mean, name)))
                FEATURE_DRIFT_SCORE.labels(name).set_function(partial(self._read, partial(_score, name)))
                self._features.add(name)

    def _read(self, value: Callable[[DriftSnapshot], float]) -> float:
        snapshot = self.monitor.snapshot() if self.monitor is not None else None
        return 0.0 if snapshot is None else value(snapshot)


def _anomaly_ratio(snapshot: DriftSnapshot) -> float:
    return snapshot.anomaly_ratio


def _readings(snapshot: DriftSnapshot) -> float:
    return float(snapshot.readings)


def _mean(name: str, snapshot: DriftSnapshot) -> float:
    return snapshot.means.get(name, 0.0)


def _score(name: str, snapshot: DriftSnapshot) -> float:
    return snapshot.scores.get(name, 0.0)


_SCRAPED_WINDOW = _ScrapedWindow()


MODEL_STORE_VERSIONS = Gauge(
    "model_store_versions",
    "Model versions stored in MODEL_DIR (the serving worker's view; `gridwatch models prune` removes old ones).",
    multiprocess_mode="livemax",
)
MODEL_STORE_BYTES = Gauge(
    "model_store_bytes", "Bytes of every model version stored in MODEL_DIR.", multiprocess_mode="livemax"
)
MODEL_STORE_NEWEST_VERSION_BYTES = Gauge(
    "model_store_newest_version_bytes",
    "Bytes of the newest version in MODEL_DIR: about the room the next training needs.",
    multiprocess_mode="livemax",
)
MODEL_STORE_FILESYSTEM_SIZE_BYTES = Gauge(
    "model_store_filesystem_size_bytes", "Size of the filesystem holding MODEL_DIR.", multiprocess_mode="livemax"
)
MODEL_STORE_FILESYSTEM_AVAIL_BYTES = Gauge(
    "model_store_filesystem_avail_bytes",
    "Bytes still available on the filesystem holding MODEL_DIR (to a non-root writer).",
    multiprocess_mode="livemin",
)
