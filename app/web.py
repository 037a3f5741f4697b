"""HTTP glue: how errors become answers, and how a request body is read safely.

(Named ``web`` rather than ``http`` so it can never shadow the standard library's ``http`` package.)

All mapping from GridWatch's named errors to status codes lives in ``ERROR_STATUS``; no route decides a status
code for an error by itself. Unexpected exceptions become one logged 500 with a JSON body, and the process goes
on serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as StarletteJSONResponse
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.asgi import ASGIApp, Message, Receive, Scope, Send
from app.errors import (
    BatchTooLargeError,
    GridWatchError,
    InvalidReadingsError,
    ModelArtifactError,
    ModelNotReadyError,
    ModelUnavailableError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from app.metrics import REQUESTS_SHED

logger = logging.getLogger(__name__)

ERROR_STATUS: dict[type[GridWatchError], int] = {
    UnauthorizedError: 401,
    RequestTimeoutError: 408,
    InvalidReadingsError: 422,
    BatchTooLargeError: 413,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    OverloadedError: 503,
    ModelNotReadyError: 503,
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
API_KEY_HEADER = "x-api-key"


JSON_MEDIA_TYPE = "application/json"


class JSONResponse(StarletteJSONResponse):
    """A JSON response serialised by orjson (fast, and it writes NaN as null rather than invalid JSON).

    A subclass of Starlette's JSONResponse, so FastAPI documents the routes' response models in OpenAPI as JSON.
    """

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def status_for(error: GridWatchError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_response(error: GridWatchError) -> JSONResponse:
    status = status_for(error)
    detail = error.detail() if isinstance(error, RequestError) else str(error)
    headers = ERROR_HEADERS.get(type(error))
    if headers is None and status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


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


class InternalErrorMiddleware:
    """Turns an unexpected exception into one logged 500 JSON answer, so the process keeps serving.

    Starlette's outermost error handler re-raises after answering (so the server logs a second traceback); this
    middleware sits inside it and answers without re-raising. If the response had already started, the
    exception is re-raised: the server then closes the connection, which is all that can be done.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_and_track(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_track)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)


def require_json(request: Request) -> None:
    """Reject a body that is not declared as JSON (415), naming what was sent."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE and not media_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"Content-Type must be {JSON_MEDIA_TYPE}, got {content_type or 'none'!r}")


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, or 408 if it takes
    longer than ``timeout`` seconds to arrive.

    A declared Content-Length over the limit is refused before a byte is read; a chunked or lying body is
    refused as soon as the running total passes the limit, so a huge upload never sits in memory. The timeout
    bounds a client that trickles its body byte by byte: it cannot hold a slot of MAX_INFLIGHT for longer.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds MAX_BODY_BYTES={limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"request body exceeds MAX_BODY_BYTES={limit}")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"request body not received within BODY_TIMEOUT={timeout:g}s ({size} bytes arrived)"
        ) from None
    return b"".join(chunks)


def require_api_key(request: Request, key: str | None) -> None:
    """401 unless ``key`` is None (the API is open) or the request carries it in X-API-Key.

    Compared with ``hmac.compare_digest``, whose time does not depend on where the strings differ, so the key
    cannot be guessed byte by byte from response times.
    """
    if key is None:
        return
    offered = request.headers.get(API_KEY_HEADER, "")
    if not hmac.compare_digest(offered.encode(), key.encode()):
        raise UnauthorizedError("missing or wrong API key: send it in the X-API-Key header")


class InflightLimit:
    """At most ``limit`` requests at once through the guarded section; the next one is refused, not queued.

    An unbounded queue turns a burst into seconds of latency for everyone and into memory growth; refusing at
    once with 503 + Retry-After lets the client back off or another replica answer. It is per worker process
    (one event loop, so no lock is needed) and guards only /predict, so probes always get through.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def __enter__(self) -> InflightLimit:
        if self.current >= self.limit:
            REQUESTS_SHED.inc()
            raise OverloadedError(
                f"{self.current} requests in flight, MAX_INFLIGHT={self.limit}; retry in "
                f"{OVERLOAD_RETRY_AFTER_SECONDS}s"
            )
        self.current += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.current -= 1


class SecurityHeadersMiddleware:
    """``X-Content-Type-Options: nosniff`` on every answer: a browser never second-guesses a JSON or text body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)
