"""The IsolationForest detector: configuration, training, and the loaded model that scores batches.

Score convention (the workshop clients rely on it): ``score = -decision_function(x)``, so **higher is more
anomalous** and a reading is flagged exactly when ``score > 0``. Flags are derived from scores, never computed
separately, so the two always agree.

This package knows nothing of HTTP, metrics or tracing: ``app.serving`` wraps a ``Detector`` for the service,
``app.tools`` for the command line. How a model is saved, verified and loaded is ``app.detector.artifact``; how
one is trained, ``app.detector.training``. Importing this module does not import scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import FEATURES
from app.detector.forest import CompiledForest
from app.detector.forest_jit import CHAINS
from app.detector.scorer import Scorer
from app.sim import GridProfile, GridSimulator

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

TRAINING_START = datetime(2026, 1, 1, tzinfo=UTC)
"""Fixed start of the simulated training period: the same config always trains the same model (same version)."""
TRAINING_INTERVAL_S = 60.0
"""One simulated reading per minute, so the training set covers the daily load curve many times over."""

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class ModelConfig:
    """Feature order and IsolationForest parameters.

    Defaults were chosen by measurement (``gridwatch evaluate --sweep``, figures in docs/model.md), on simulated
    streams with 2 % anomalies:

    * ``max_samples=16384``: IsolationForest splits uniformly inside the range of each tree's subsample, so a
      reading far outside that range isolates no faster than the most extreme training reading. Small subsamples
      (scikit-learn's default of 256) therefore score a +20 % voltage spike like an ordinary evening peak: at a
      0.2 % false-positive rate recall was 0.26 with 256, 0.89 with 4096 and 0.99 with 16384 (ROC-AUC 0.986 ->
      0.9998). The cost is deeper trees (about 1,500 node visits per row instead of 870) and a 29 MB artifact.
    * ``contamination=0.002``: contamination sets the threshold at that quantile of the training scores, so it
      *is* the false-positive rate on normal readings. 0.002 measured precision 0.93 / recall 0.99; 0.001 kept
      precision (0.96) but lost current surges and frequency excursions (recall 0.94); 0.005 halved the false
      positives' margin (precision 0.82) for no recall gain; "auto" flags about a quarter of normal readings.
    """

    features: tuple[str, ...] = FEATURES
    n_estimators: int = 100
    max_samples: int = 16_384
    contamination: float = 0.002
    random_state: int = 42
    train_samples: int = 50_000

    def __post_init__(self) -> None:
        if not self.features or not all(isinstance(name, str) and name for name in self.features):
            raise ValueError(f"features must be a non-empty list of names, got {list(self.features)}")
        if len(set(self.features)) != len(self.features):
            twice = sorted({name for name in self.features if self.features.count(name) > 1})
            raise ValueError(f"features name {', '.join(twice)} more than once")
        if not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be within (0, 0.5), got {self.contamination}")
        if self.max_samples > self.train_samples:
            raise ValueError(f"max_samples ({self.max_samples}) exceeds train_samples ({self.train_samples})")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "features" in known:
            known["features"] = tuple(known["features"])
        return cls(**known)


def training_data(config: ModelConfig, profile: GridProfile | None = None) -> np.ndarray:
    """Normal (anomaly-free) simulated readings in feature order; deterministic for a given config."""
    simulator = GridSimulator(
        profile=profile or GridProfile(),
        anomaly_rate=0.0,
        interval_s=TRAINING_INTERVAL_S,
        start=TRAINING_START,
        seed=config.random_state,
    )
    return simulator.batch(config.train_samples).features()


def feature_statistics(X: np.ndarray, features: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per-feature training statistics kept in the metadata; the drift monitor compares live windows to them."""
    stats: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(features):
        values = X[:, column]
        stats[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)),
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {str(q): float(np.quantile(values, q)) for q in QUANTILES},
        }
    return stats


@dataclass
class Detector:
    """A loaded model ready to score: its compiled forest, the metadata stored beside it, and, where it was loaded
    (training, evaluation, ``SCORER=sklearn``), the scikit-learn estimator it was compiled from.

    Serving needs only the compiled forest (``app.detector.forest``), which scores exactly like the estimator:
    a serving process never imports scikit-learn unless ``SCORER=sklearn`` asks for the estimator itself.
    """

    forest: CompiledForest
    metadata: dict[str, Any]
    estimator: IsolationForest | None = None
    path: Path | None = None
    trained_now: bool = False
    load_seconds: float = 0.0
    scorer: Scorer = Scorer.auto
    config: ModelConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = ModelConfig.from_dict(self.metadata.get("config", {}))
        self.use(self.scorer)

    @classmethod
    def from_estimator(cls, estimator: IsolationForest, metadata: dict[str, Any], **options: Any) -> Detector:
        """A detector for a fitted estimator, its forest compiled here (in memory, nothing is written)."""
        features = ModelConfig.from_dict(metadata.get("config", {})).features
        return cls(CompiledForest.from_sklearn(estimator, features), metadata, estimator, **options)

    def use(self, scorer: Scorer) -> None:
        """Switch the scoring path (``auto`` resolves to numba if installed, else numpy)."""
        scorer = scorer.resolved()
        if scorer is Scorer.sklearn and self.estimator is None:
            raise ValueError("SCORER=sklearn needs the scikit-learn estimator, and this detector was loaded without")
        self.scorer = scorer

    def warm_up(self) -> None:
        """Score once per kernel so compilation (or loading numba's cache) happens now, not in a request."""
        row = np.array([[self.metadata["feature_stats"][name]["mean"] for name in self.features]])
        self.predict_batch(row)
        self.predict_batch(np.repeat(row, CHAINS, axis=0))

    @property
    def version(self) -> str:
        return str(self.metadata["model_version"])

    @property
    def features(self) -> tuple[str, ...]:
        """The column order of every input row, as the verified forest was trained on it."""
        return self.forest.features

    def isolation_credits(self, X: np.ndarray) -> np.ndarray:
        """Per row and feature, the forest's credit to the feature that isolated the row, summed over the trees
        (``CompiledForest.isolate``): what an explanation normalises into contributions."""
        return self.predict_and_credit(X)[2]

    def predict_and_credit(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict_batch``'s ``(flags, scores)``, exactly, and the isolation credits, from one walk of the
        trees. With ``SCORER=sklearn`` the estimator scores and the compiled forest credits (the estimator has no
        such walk)."""
        if self.scorer is Scorer.sklearn:
            flags, scores = self.predict_batch(X)
            return flags, scores, self.forest.isolate(X, Scorer.auto.resolved())[1]
        depths, credits = self.forest.isolate(X, self.scorer)
        scores = -(self.forest.scores_from_sums(depths) - self.forest.offset)
        return scores > 0.0, scores, credits

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flags, scores)`` for an ``(n, len(features))`` float array: ``scores = -decision_function`` and
        ``flags = scores > 0``, so a flag is raised exactly when scikit-learn's ``predict`` says -1, whichever
        scorer computes it."""
        if self.scorer is Scorer.sklearn:
            assert self.estimator is not None, "use(Scorer.sklearn) loads the estimator first"
            scores = -self.estimator.decision_function(X)
        else:
            scores = -self.forest.decision_function(X, self.scorer)
        return scores > 0.0, scores
