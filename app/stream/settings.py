"""What ``gridwatch stream`` reads from the environment: the scoring core's settings (MODEL_DIR, SCORER, hot swap,
shadow, drift window, logging) plus the broker, the streams and the consumer. Every field is an environment
variable of the README's configuration table, mirrored in the chart."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from app.scoring.settings import ScoringSettings

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
"""A NATS subject token or stream name: no dots, spaces or wildcards."""


class StreamExplain(StrEnum):
    """Which stream results carry an explanation."""

    none = "none"
    anomalies = "anomalies"
    all = "all"


class StreamSettings(ScoringSettings):
    """The stream consumer's settings. Field names are the environment variable names (case-insensitive)."""

    host: str = Field(
        "127.0.0.1", description="Interface of the consumer's probes and metrics (the image sets 0.0.0.0)."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of /livez, /health and /metrics.")
    nats_url: str = Field("nats://127.0.0.1:4222", description="The NATS server (or comma-separated servers).")
    stream_batch: int = Field(
        500, ge=1, le=10_000, description="Most readings' messages fetched and scored together in one batch."
    )
    stream_max_wait: float = Field(
        0.05,
        gt=0,
        le=30,
        allow_inf_nan=False,
        description="Seconds a fetch waits for STREAM_BATCH messages before scoring what it has.",
    )
    stream_explain: StreamExplain = Field(
        StreamExplain.none,
        description="Which results carry an explanation (the same as /predict?explain=true): none, anomalies (those "
        "on grid.anomalies.> and their copies on grid.scored.>) or all.",
    )
    stream_readings: str = Field(
        "GRID_READINGS", pattern=NAME_PATTERN, description="JetStream stream of the readings (grid.readings.>)."
    )
    stream_results: str = Field(
        "GRID_SCORED",
        pattern=NAME_PATTERN,
        description="JetStream stream of the results (grid.scored.> and grid.anomalies.>).",
    )
    stream_deadletters: str = Field(
        "GRID_DEADLETTER", pattern=NAME_PATTERN, description="JetStream stream of the refused messages."
    )
    stream_consumer: str = Field(
        "gridwatch-scorer", pattern=NAME_PATTERN, description="Durable pull consumer shared by every replica."
    )
    stream_max_deliver: int = Field(
        5, ge=1, le=100, description="Deliveries of a message that keeps failing before it is dead-lettered."
    )
    stream_ack_wait: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds the server waits for an acknowledgement before redelivering.",
    )
    stream_max_age: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds the readings, results and dead-letter streams keep a message (created streams only).",
    )
    stream_duplicate_window: float = Field(
        900.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds the results stream remembers a result's id: a reading redelivered or re-sent within it "
        "gets no second result.",
    )
    graceful_timeout: float = Field(
        20.0, ge=0, description="Seconds SIGTERM waits for the batch in hand to be scored, published and acknowledged."
    )
