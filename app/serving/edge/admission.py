"""The HTTP mechanics of one /predict: content type, a bounded body, the API key, the in-flight limits.

Each check raises a named error from ``app.serving.edge.http_errors``; none of them decides a status code itself.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Mapping

from starlette.requests import ClientDisconnect

from app.serving.edge.asgi import Receive
from app.serving.edge.http_errors import (
    OVERLOAD_RETRY_AFTER_SECONDS,
    ClientClosedError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from app.serving.telemetry.metrics import REQUESTS_SHED

API_KEY_HEADER = "x-api-key"
JSON_MEDIA_TYPE = "application/json"


def require_json(headers: Mapping[str, str], *, undeclared: bool = False) -> None:
    """Reject a body that is not declared as uncompressed UTF-8 JSON (415), naming what was sent.

    Exactly ``application/json``: a suffix type (``application/anything+json``) promises a schema this service does
    not have, a charset other than UTF-8 would be decoded by guesswork, and a compressed body would reach the parser
    as garbage and be blamed on the client's JSON. With ``undeclared`` a body without any Content-Type is read as
    JSON too: the Open Inference Protocol's clients (``tritonclient``) send none.
    """
    content_type = headers.get("content-type", "")
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != JSON_MEDIA_TYPE and (content_type or not undeclared):
        raise UnsupportedMediaTypeError(f"Content-Type must be {JSON_MEDIA_TYPE}, got {content_type or 'none'!r}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {"utf-8", "utf8"}:
            raise UnsupportedMediaTypeError(f"the body must be UTF-8, got charset {value.strip()!r}")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in {"identity", ""}:
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")


class BodyBytesBudget:
    """At most ``limit`` bytes of request bodies held while they arrive, over all requests of this worker.

    Bodies are read before a request takes its ``MAX_INFLIGHT`` slot, so that clients sending a byte a second
    cannot hold every slot; what bounds the memory of the bodies still arriving is this budget: slow bodies hold
    few bytes and cost it little, fast big ones are refused with 503 + Retry-After once it is spent. A body arriving
    while no other is held is always let through (``MAX_BODY_BYTES`` alone bounds it). One event loop: no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def take(self, size: int, held: int) -> None:
        """Account ``size`` more bytes for a body already holding ``held``; 503 if the budget is spent."""
        if self.current > held and self.current + size > self.limit:
            REQUESTS_SHED.inc()
            raise OverloadedError(
                f"{self.current} bytes of request bodies being received, MAX_BUFFERED_BODY_BYTES={self.limit}; "
                f"retry in {OVERLOAD_RETRY_AFTER_SECONDS}s"
            )
        self.current += size

    def give_back(self, size: int) -> None:
        self.current -= size


async def read_body(
    headers: Mapping[str, str],
    chunks: AsyncIterator[bytes],
    limit: int,
    timeout: float,
    buffered: BodyBytesBudget,
    *,
    arrived: bool = False,
) -> bytes:
    """The request body from ``chunks`` (``Request.stream()``, or ``receive_chunks`` on the fast path), refused with
    413 as soon as it is known to exceed ``limit`` bytes, 408 if it takes longer than ``timeout`` seconds to arrive,
    503 if the worker already holds ``buffered.limit`` bytes of bodies.

    A declared Content-Length over the limit is refused before a byte is read; a chunked or lying body is
    refused as soon as the running total passes the limit, so a huge upload never sits in memory. The timeout
    bounds a client that trickles its body byte by byte; when the server says the whole body has ``arrived``
    (``BODY_ARRIVED``), reading it cannot wait, and no timer is set (one less per request, docs/performance.md).
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds MAX_BODY_BYTES={limit}")
    received: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in chunks:
            buffered.take(len(chunk), held=size)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds MAX_BODY_BYTES={limit}")
            received.append(chunk)

    try:
        if arrived:
            await collect()
        else:
            async with asyncio.timeout(timeout):
                await collect()
    except ClientDisconnect:
        raise ClientClosedError(f"the client closed the connection after {size} bytes of its body") from None
    except TimeoutError:
        raise RequestTimeoutError(
            f"request body not received within BODY_TIMEOUT={timeout:g}s ({size} bytes arrived)"
        ) from None
    finally:
        buffered.give_back(size)
    return b"".join(received)


async def receive_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body chunks of an ASGI request straight from ``receive``, exactly as Starlette's ``Request.stream()``
    yields them (empty chunks skipped, ``ClientDisconnect`` when the client goes), without a ``Request``."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            if body := message.get("body", b""):
                yield body
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def require_api_key(headers: Mapping[str, str], key: str | None) -> None:
    """401 unless ``key`` is None (the API is open) or the request carries it in X-API-Key.

    Compared with ``hmac.compare_digest``, whose time does not depend on where the strings differ, so the key
    cannot be guessed byte by byte from response times.
    """
    if key is None:
        return
    offered = headers.get(API_KEY_HEADER, "").strip(" \t")  # the key file is stripped the same way
    if not hmac.compare_digest(offered.encode("latin-1"), key.encode("ascii")):
        raise UnauthorizedError("missing or wrong API key: send it in the X-API-Key header")


class ReadingBudget:
    """At most ``limit`` readings being scored at once in this worker; a batch that would exceed it is refused.

    ``MAX_INFLIGHT`` counts requests, but a request of 5,000 readings costs a hundred times one of 50: 64 of them
    queue over a second of scoring, and clients time out on answers that come too late anyway. Bounding the
    readings sheds that work at once instead (503 + Retry-After, counted in ``requests_shed_total``), keeps the
    worker's latency and memory bounded, and leaves the event loop free for the probes. Readings are counted from
    the body's size before it is parsed (``app.serving.edge.parsing.most_readings``), so a refused batch costs no
    parsing. A batch arriving while nothing is in flight is always admitted, so no single batch is refused for its
    size alone (``MAX_BATCH`` does that, with 413). One event loop per worker: no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def admit(self, readings: int) -> Admission:
        """The budget's hold on ``readings`` for the ``with`` block: taken on entry (or refused), given back on
        exit."""
        return Admission(self, readings)

    def take(self, readings: int) -> None:
        if self.current and self.current + readings > self.limit:
            REQUESTS_SHED.inc()
            raise OverloadedError(
                f"{self.current} readings being scored, MAX_INFLIGHT_READINGS={self.limit}; retry in "
                f"{OVERLOAD_RETRY_AFTER_SECONDS}s"
            )
        self.current += readings


class Admission:
    """``ReadingBudget.admit``'s context manager: a class of two slots rather than a ``@contextmanager`` generator,
    which cost three times as much on every request (docs/performance.md)."""

    __slots__ = ("budget", "readings")

    def __init__(self, budget: ReadingBudget, readings: int) -> None:
        self.budget = budget
        self.readings = readings

    def __enter__(self) -> None:
        self.budget.take(self.readings)

    def __exit__(self, *exc: object) -> None:
        self.budget.current -= self.readings


class InflightLimit:
    """At most ``limit`` requests at once through the guarded section; the next one is refused, not queued.

    An unbounded queue turns a burst into seconds of latency for everyone and into memory growth; refusing at
    once with 503 + Retry-After lets the client back off or another replica answer. It is per worker process
    (one event loop, so no lock is needed) and guards only /predict, so probes always get through. A request takes
    its slot once its body has arrived (``BodyBytesBudget`` bounds the bodies still arriving).
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
