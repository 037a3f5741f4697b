"""The named errors of GridWatch.

Each failure a caller can act on has its own type. The model code raises them without knowing about HTTP; the
API maps each type to one status code in a single table (``app.api.ERROR_STATUS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


class ModelNotReadyError(GridWatchError):
    """The service is up but its model is still loading (or failed to load); retry later."""


class OverloadedError(GridWatchError):
    """MAX_INFLIGHT requests are already being handled by this worker: shed load now rather than queue it."""


class RequestError(GridWatchError):
    """Base of the client's mistakes: every subclass maps to a 4xx answer naming the problem."""

    def detail(self) -> Any:
        return str(self)


class InvalidReadingsError(RequestError):
    """The body is not a valid batch of readings. ``errors`` lists each problem with its location.

    The error entries follow FastAPI's validation-error shape (``type``, ``loc``, ``msg``) so clients that already
    parse FastAPI's 422 answers understand ours.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{_dotted(e['loc'])}: {e['msg']}" for e in errors))

    def detail(self) -> Any:
        return self.errors


class BatchTooLargeError(RequestError):
    """More readings in one request than MAX_BATCH allows."""


class PayloadTooLargeError(RequestError):
    """A request body over MAX_BODY_BYTES, rejected before it is parsed."""


class UnsupportedMediaTypeError(RequestError):
    """A body that is not declared as JSON."""


class RequestTimeoutError(RequestError):
    """The client did not finish sending its body within BODY_TIMEOUT seconds."""


class UnauthorizedError(RequestError):
    """The API key is required and was missing or wrong."""


def _dotted(loc: list[str | int]) -> str:
    """``["body", "readings", 3, "voltage"]`` -> ``readings[3].voltage``, the way a person names a field."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"
