"""Errors of a request, and the one place where every named error becomes an HTTP answer.

Each failure a caller can act on has its own type; ``ERROR_STATUS`` maps each type (the detector's included) to
one status code, and no route decides a status code for an error by itself. Every answer is JSON
``{"detail": ...}``, except on the Open Inference Protocol's routes (``app.serving.v2``), which answer the same
status with that protocol's ``{"error": "..."}`` (``protocol_error_response``).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as StarletteJSONResponse
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.detector.errors import GridWatchError, ModelArtifactError, ModelUnavailableError
from app.scoring.holder import ModelNotReadyError
from app.scoring.versions import ModelNotFoundError, VersionNotServableError


class JSONResponse(StarletteJSONResponse):
    """A JSON response serialised by orjson (fast, and it writes NaN as null rather than invalid JSON).

    A subclass of Starlette's JSONResponse, so FastAPI documents the routes' response models in OpenAPI as JSON.
    """

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class ModelRefusedError(GridWatchError):
    """The active version named in MODEL_DIR could not be loaded; the version serving before keeps serving."""


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


class ClientClosedError(GridWatchError):
    """The client closed the connection before its request was read: no answer can reach it.

    Answered (into the void) and counted as 499, nginx's "client closed request", so that aborted uploads show up
    as what they are instead of as server errors that page someone; no traceback is logged.
    """


class RequestTimeoutError(RequestError):
    """The client did not finish sending its body within BODY_TIMEOUT seconds."""


class UnauthorizedError(RequestError):
    """The API key is required and was missing or wrong."""


class InvalidTensorsError(RequestError):
    """An Open Inference Protocol request whose tensors are not readings: a wrong name, shape, datatype or data
    length, an unknown output, an extension this server does not have. The message names which."""


def _dotted(loc: list[str | int]) -> str:
    """``["body", "readings", 3, "voltage"]`` -> ``readings[3].voltage``, the way a person names a field."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


ERROR_STATUS: dict[type[GridWatchError], int] = {
    UnauthorizedError: 401,
    InvalidTensorsError: 400,
    ModelNotFoundError: 404,
    VersionNotServableError: 409,
    RequestTimeoutError: 408,
    InvalidReadingsError: 422,
    BatchTooLargeError: 413,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    ClientClosedError: 499,
    OverloadedError: 503,
    ModelNotReadyError: 503,
    ModelRefusedError: 409,
    ModelUnavailableError: 503,
    ModelArtifactError: 503,
}
RETRY_AFTER_SECONDS = 5
"""What a 503 tells clients to wait while the model loads: loading takes about a second, training a few."""
OVERLOAD_RETRY_AFTER_SECONDS = 1
"""What a 503 for overload tells clients: the queue drains in milliseconds, retry soon (another pod may answer)."""
ERROR_HEADERS: dict[type[GridWatchError], dict[str, str]] = {
    UnauthorizedError: {"WWW-Authenticate": 'ApiKey realm="gridwatch", header="X-API-Key"'},
    OverloadedError: {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)},
}


def status_for(error: GridWatchError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_response(error: GridWatchError) -> JSONResponse:
    status = status_for(error)
    detail = error.detail() if isinstance(error, RequestError) else str(error)
    return JSONResponse({"detail": detail}, status_code=status, headers=_headers_for(error, status))


def protocol_error_response(error: GridWatchError) -> JSONResponse:
    """The same answer as ``error_response`` in the Open Inference Protocol's shape: ``{"error": "..."}``."""
    status = status_for(error)
    return JSONResponse({"error": str(error)}, status_code=status, headers=_headers_for(error, status))


def _headers_for(error: GridWatchError, status: int) -> dict[str, str] | None:
    headers = ERROR_HEADERS.get(type(error))
    if headers is None and status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return headers


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON ``{"detail": ...}`` with the status from ``ERROR_STATUS``."""

    async def on_gridwatch_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, GridWatchError)
        return error_response(error)

    async def on_http_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    async def on_validation_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return JSONResponse({"detail": _jsonable_errors(error)}, status_code=422)

    app.add_exception_handler(GridWatchError, on_gridwatch_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def _jsonable_errors(error: RequestValidationError) -> list[dict[str, object]]:
    return [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in error.errors()]
