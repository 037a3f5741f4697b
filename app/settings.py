"""Service configuration, read from the environment in this one place.

Every setting is an environment variable with a default that works on a laptop; the README's configuration
table and the Helm chart's values mirror this class. Invalid values stop the service at start-up with a message
naming the variable, instead of surfacing later as odd behaviour.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


class Settings(BaseSettings):
    """Backend settings. Field names are the environment variable names (case-insensitive)."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind; the container image sets 0.0.0.0.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    workers: int = Field(
        1, ge=1, le=64, description="Uvicorn worker processes; in Kubernetes keep 1 and scale with replicas."
    )
    model_dir: Path = Field(Path("models"), description="Folder holding the model artifact and its metadata.")
    model_name: str = Field("iso_forest.joblib", pattern=r"^[\w.-]+$", description="File name of the model artifact.")
    train_if_missing: bool = Field(
        True,
        description="Train (and save) a model at start-up when none exists or the existing one is unusable.",
    )
    max_batch: int = Field(10_000, ge=1, description="Most readings accepted in one /predict request (else 413).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, checked before parsing (else 413).",
    )
    log_level: LogLevel = Field(LogLevel.info, description="Log level of the service and its access log.")
    pod_name: str | None = Field(None, description="Set by the chart through the downward API.")
    node_name: str | None = Field(None, description="Set by the chart through the downward API.")

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_name

    def instance_id(self) -> str:
        """Who answered: the pod (or host) name plus the process id, unique per worker process.

        Computed on call, not at start-up, because each uvicorn worker is its own process with its own pid.
        """
        return f"{self.pod_name or socket.gethostname()}:{os.getpid()}"
