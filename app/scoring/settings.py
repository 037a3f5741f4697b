"""The settings of the model a process works on, read from the environment: the part every command and every front
door shares.

``ModelSettings`` is what the commands that work on MODEL_DIR read (train, evaluate, models, bench): where the
model is, whether a missing one may be trained, what scores, how to log. They never validate a serving-only
setting, so ``gridwatch models list`` works whatever ``API_KEY_FILE`` or ``OTEL_TRACES_EXPORTER`` hold.
``ScoringSettings`` adds what a process that serves the model needs whatever its front door (hot swap, shadow,
drift window); the HTTP service's ``app.serving.settings.Settings`` extends it. Field names are the environment
variable names (case-insensitive); the README's configuration table and the chart's values mirror them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.detector.explain import SupplyStandard
from app.detector.registry import ModelStore
from app.detector.scorer import Scorer


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


class LogFormat(StrEnum):
    json = "json"
    text = "text"


MIN_POLL_INTERVAL_S = 0.1
"""The shortest MODEL_POLL_INTERVAL: a poll reads a small file and stats three, ten times a second is plenty."""


class ModelSettings(BaseSettings):
    """Where the model is, whether a missing one may be trained, what scores it, and how the process logs."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    model_dir: Path = Field(
        Path("models"), description="Folder of the model versions and the pointer to the active one."
    )
    model_name: str = Field("iso_forest.joblib", pattern=r"^[\w.-]+$", description="File name of the model artifact.")
    train_if_missing: bool = Field(
        True,
        description="Train (and save) a model at start-up when MODEL_DIR holds none at all; never over an existing "
        "one.",
    )
    scorer: Scorer = Field(
        Scorer.auto,
        description="What scores batches: auto (the compiled kernels if built or numba is installed, else numpy), "
        "numba, numpy, sklearn.",
    )
    model_keep_versions: int = Field(
        10,
        ge=0,
        le=1000,
        description="Versions `gridwatch train` keeps after training besides the active, the previous and the shadow "
        "one (`gridwatch models prune`); older ones are removed. 0 keeps every version.",
    )
    log_level: LogLevel = Field(LogLevel.info, description="Log level of the service and its access log.")
    log_format: LogFormat = Field(
        LogFormat.json, description="`json` (one object per line, for log collectors) or `text` (for a terminal)."
    )

    @property
    def model_path(self) -> Path:
        """``MODEL_DIR/MODEL_NAME``: where a folder from before versions keeps its model, and what names the store."""
        return self.model_dir / self.model_name

    def model_store(self) -> ModelStore:
        """The versioned store of ``MODEL_DIR``, built once by whoever works on it and passed on."""
        return ModelStore.of(self.model_path)


class ScoringSettings(ModelSettings):
    """What a process serving the model needs, whatever its front door: hot swap, shadow and drift window."""

    model_poll_interval: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds between checks of MODEL_DIR's active version: a promotion or rollback is served within "
        f"this time, without a restart (0: only on POST /model/reload; otherwise at least {MIN_POLL_INTERVAL_S}).",
    )
    shadow_model_version: str = Field(
        "",
        pattern=r"^[0-9a-f]*$",
        description="A model version in MODEL_DIR that scores every batch after the answer is sent, as a challenger "
        "(metrics only; it never changes or fails an answer). Empty: the one `gridwatch models shadow` names, if any.",
    )
    shadow_max_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="The largest share of the wall-clock time a worker's shadow model may spend scoring; past it, "
        "batches are skipped (shadow_skipped_total), so a slow challenger never takes the requests' CPU.",
    )
    model_auto_rollback: bool = Field(
        False,
        description="Judge each promotion against the version it replaced on the same readings (scored on the "
        "shadow's thread) and roll it back when its anomaly rate leaves the band (MODEL_ROLLBACK_RATIO); off: "
        "promotions are rolled back by hand (`gridwatch models rollback`).",
    )
    model_rollback_readings: int = Field(
        20_000,
        ge=100,
        le=10_000_000,
        description="Readings both versions score after a promotion before MODEL_AUTO_ROLLBACK decides.",
    )
    model_rollback_ratio: float = Field(
        3.0,
        gt=1,
        le=1000,
        allow_inf_nan=False,
        description="The band of MODEL_AUTO_ROLLBACK: the promoted version is rolled back when it flags more than this "
        "times the replaced one's share of the same readings (and over 1 %), or less than that share divided by it.",
    )
    nominal_voltage: float = Field(
        230.0,
        gt=0,
        allow_inf_nan=False,
        description="The feeder's nominal phase-to-neutral voltage in volts: explanations flag a reading outside "
        "EN 50160's +-10 % of it.",
    )
    nominal_frequency: float = Field(
        50.0,
        gt=0,
        allow_inf_nan=False,
        description="The grid's nominal frequency in hertz (60 in North America): explanations flag a reading outside "
        "EN 50160's +-1 % of it.",
    )
    drift_window: int = Field(
        1000, ge=10, le=100_000, description="Readings in the sliding window behind the drift and anomaly-ratio gauges."
    )
    model_max_age: float = Field(
        30 * 86400.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds after its training past which the serving model counts as stale: exported as "
        "model_max_age_seconds, which GridWatchModelStale compares with the model's age (0: never stale).",
    )

    @model_validator(mode="after")
    def _check_poll_interval(self) -> ScoringSettings:
        """``inf`` once killed the watcher thread (polling silently off) and ``1e-9`` spun a core at idle."""
        if 0 < self.model_poll_interval < MIN_POLL_INTERVAL_S:
            raise ValueError(
                f"MODEL_POLL_INTERVAL={self.model_poll_interval} polls too often: use 0 (only on POST /model/reload) "
                f"or at least {MIN_POLL_INTERVAL_S} seconds"
            )
        return self

    def supply_standard(self) -> SupplyStandard:
        """The nominal supply explanations measure physical limits against."""
        return SupplyStandard(nominal_voltage=self.nominal_voltage, nominal_frequency=self.nominal_frequency)
