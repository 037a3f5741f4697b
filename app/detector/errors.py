"""The named errors of the detector: a model that cannot be had, or must not be used.

Raised without any knowledge of HTTP; ``app.serving.edge.http_errors`` maps each type to one status code, and the
command line prints them as one line instead of a traceback. ``GridWatchError`` is the base of every error GridWatch
raises on purpose, in every package.
"""

from __future__ import annotations

from pathlib import Path


class GridWatchError(Exception):
    """Base of every error GridWatch raises on purpose."""


class ModelArtifactError(GridWatchError):
    """A model artifact exists but must not be used (corrupt, truncated, incompatible); names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"model artifact {path} is unusable: {reason}")


class ModelUnavailableError(GridWatchError):
    """No usable model can be had: missing with training disabled, or the folder is read-only."""
