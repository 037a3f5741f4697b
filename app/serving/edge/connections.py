"""The HTTP connection itself: uvicorn's httptools protocol plus the two bounds it lacks.

uvicorn's httptools parser (its fast path, kept for throughput) sets no limit on the request head, and its
keep-alive timer starts only after a first response, so a connection that sends nothing, or a head one byte at a
time, is held open forever (what each allowed, measured, is in docs/security.md). ``BoundedHttpToolsProtocol``
adds both bounds at the lowest level, where the bytes arrive:

* **MAX_HEADER_BYTES**: the bytes of a request head (request line and headers) are counted as they arrive; past
  the limit the connection gets ``431 Request Header Fields Too Large`` and is closed, so at most the limit plus
  one read (64 KiB) is ever held for a head.
* **HEADER_TIMEOUT**: a connection must deliver a complete head this many seconds after it opens (or after the
  first byte of a keep-alive follow-up request); otherwise it gets ``408`` (if it sent part of one) and is closed.
* **MAX_CONNECTIONS** (default: the open-file limit minus 128): past it, each new connection makes room by closing
  the one that has waited longest for its request head, rather than being refused itself, so a flood of idle
  sockets cannot exhaust the worker's file descriptors and a kubelet's probe still gets in.

And one cost it has: uvicorn writes a response's head and its body with two ``transport.write`` calls, two system
calls and two TCP segments for every answer. ``OneWriteTransport`` holds the head back until the body's first write
and sends both in one (measured in docs/performance.md).

Both refusals, and uvicorn's own 400s for requests it cannot parse, are counted in ``requests_total`` (route
``unmatched``, method ``other``) and logged, like every other answer, so an attack shows on the dashboards.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

from app.serving.edge.asgi import BODY_ARRIVED, SERVER_ANSWERED, UNMATCHED_PATH
from app.serving.settings import Settings
from app.serving.telemetry.metrics import REQUESTS

logger = logging.getLogger(__name__)

CONNECTIONS_RESERVED_FDS = 128
"""File descriptors kept for everything but client connections: the listening socket, the model's files, logs,
the metrics folder, the training child's pipes."""


SHUTDOWN_READ_GRACE_S = 0.2
"""How long an idle connection stays open after SIGTERM, so a request already written to it is read and served."""
ROOM_WARNING_INTERVAL_S = 10.0
"""At most one "connections closed to make room" warning this often, with the count since the last one."""


def default_max_connections() -> int:
    """The open-file limit of this process minus what it needs besides its clients."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY else 65536
    return max(16, limit - CONNECTIONS_RESERVED_FDS)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection; bounds set once per worker process by ``configure`` (uvicorn builds the instances)."""

    max_head_bytes: ClassVar[int] = Settings.model_fields["max_header_bytes"].default
    head_timeout: ClassVar[float] = Settings.model_fields["header_timeout"].default
    max_connections: ClassVar[int] = 1024 - CONNECTIONS_RESERVED_FDS
    _last_room_warning: ClassVar[float] = float("-inf")
    _closed_for_room: ClassVar[int] = 0

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.max_head_bytes = settings.max_header_bytes
        cls.head_timeout = settings.header_timeout
        cls.max_connections = settings.max_connections or default_max_connections()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._one_write = OneWriteTransport(transport)  # one per connection: its cycles answer one at a time
        self._head_bytes = 0
        self._in_head = False
        self._head_started = 0.0
        self._shutting_down = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head and self._idle():  # a keep-alive follow-up's first bytes: its head starts here
            self._start_head()
        if self._in_head:
            # Counted before parsing, up to the blank line that ends the head: a whole head arriving in one read
            # (100 KB once did) is parsed in one call, and would be accepted before a count taken after it.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.max_head_bytes:
                self._refuse_large_head()
                return
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse_large_head()

    def _refuse_large_head(self) -> None:
        if not self.transport.is_closing():
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head over MAX_HEADER_BYTES={self.max_head_bytes}",
            )

    def on_message_begin(self) -> None:
        if not self._in_head:  # a keep-alive follow-up: its head starts with this byte
            self._start_head()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False  # the head timer stays armed: when it fires outside a head, it does nothing
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.__class__ = OneWriteCycle  # the same object, its send holding the head for the body
            self.cycle.transport = self._one_write  # type: ignore[assignment]
            if self._shutting_down:
                self.cycle.keep_alive = False  # answer this last request with Connection: close

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None and not self.cycle.more_body:
            self.cycle.scope[BODY_ARRIVED] = True  # type: ignore[literal-required]

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 (a malformed request line or headers, a broken chunked body), counted and logged.

        If the application was already reading this request (a broken chunk mid-body), its metrics record it, so
        the status is left in the request's scope for them instead of being counted here a second time.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope is self.scope:
            self.scope[SERVER_ANSWERED] = HTTPStatus.BAD_REQUEST.value  # type: ignore[literal-required]
            self._log_refusal(HTTPStatus.BAD_REQUEST, msg)
        else:
            self._count_and_log_refusal(HTTPStatus.BAD_REQUEST, msg)
        super().send_400_response(msg)

    def _make_room(self) -> None:
        """Close the idle connections that have waited longest for a request, down to the limit; connections whose
        request is being handled are never closed."""
        waiting = sorted(
            (c for c in self.connections if isinstance(c, BoundedHttpToolsProtocol) and c is not self and c._idle()),
            key=lambda connection: connection._head_started,
        )
        excess = len(self.connections) - self.max_connections
        for connection in waiting[:excess]:
            connection._stop_head_timer()
            connection.transport.close()
        cls = type(self)
        cls._closed_for_room += min(excess, len(waiting))
        now = self.loop.time()
        if now - cls._last_room_warning >= ROOM_WARNING_INTERVAL_S:  # a flood must not flood the log too
            logger.warning(
                "%d connections open, MAX_CONNECTIONS=%d: closed %d idle ones since the last warning",
                len(self.connections),
                self.max_connections,
                cls._closed_for_room,
            )
            cls._last_room_warning, cls._closed_for_room = now, 0

    def shutdown(self) -> None:
        """Graceful shutdown (SIGTERM) of this connection, losing no request a client already sent.

        uvicorn closes at once every connection without a request in progress. A request whose bytes are in flight,
        written just before the signal, then meets a closed socket: the client gets a reset for a request it had
        sent completely. So a connection that has begun a head is served first (and closed after its answer), and
        an idle one is closed after ``SHUTDOWN_READ_GRACE_S``, long enough for bytes already sent to be read.
        """
        self._shutting_down = True
        if not self._idle():
            super().shutdown()  # a request in progress: answered, then closed
        elif not (self._in_head and self._head_bytes):
            self.loop.call_later(SHUTDOWN_READ_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self._idle() and not (self._in_head and self._head_bytes) and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._shutting_down and not self.transport.is_closing() and not self.pipeline:
            self.transport.close()  # the request that arrived during the shutdown is answered: done

    def _idle(self) -> bool:
        """No request of this connection is being handled: it waits for a head, or for a keep-alive follow-up."""
        return self.cycle is None or self.cycle.response_complete

    def _start_head(self) -> None:
        """A head begins: it must be complete within HEADER_TIMEOUT. A timer still armed for an earlier head of this
        connection is kept and re-armed for this one when it fires (``_head_timed_out``): on a keep-alive
        connection a timer every HEADER_TIMEOUT seconds, not one armed and cancelled per request."""
        self._in_head = True
        self._head_started = self.loop.time()
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        due = self._head_started + self.head_timeout
        if (now := self.loop.time()) < due:  # armed for an earlier head: this one still has time
            self._head_timer = self.loop.call_later(due - now, self._head_timed_out)
            return
        if self._head_bytes == 0:  # an idle connection: nothing to answer, just free the socket
            self.transport.close()
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT, f"request head not received within HEADER_TIMEOUT={self.head_timeout:g}s"
        )

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        """Answer ``status`` with ``reason`` as a JSON detail, close the connection, count and log it."""
        body = ('{"detail": "' + reason + '"}').encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.transport.close()
        self._in_head = False
        self._stop_head_timer()
        self._count_and_log_refusal(status, reason)

    def _count_and_log_refusal(self, status: HTTPStatus, reason: str) -> None:
        """An answer the application never saw: counted under the ``unmatched`` route, like any unknown URL."""
        REQUESTS.labels(UNMATCHED_PATH, "other", str(status.value)).inc()
        self._log_refusal(status, reason)

    def _log_refusal(self, status: HTTPStatus, reason: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning("answered a connection from %s with %d: %s", client, status.value, reason)


SMALL_BODY_BYTES = 64 * 1024
"""A body up to this size is copied behind its head and both go in one write; a bigger one is written after the
head as uvicorn does (copying it would cost more than the system call it saves)."""


class OneWriteTransport:
    """The connection's transport as its request cycles see it: it holds the response head (while ``holding``) and
    writes it together with the first body chunk; every other call goes to the real transport.

    If no body follows (the application failed after starting its answer), uvicorn closes the transport: the held
    head is written first, so the client sees what it saw before, a head and then the end of the connection.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.holding = False
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.holding:
            self._head, self.holding = data, False
            return
        head, self._head = self._head, None
        if head is None:
            self._transport.write(data)
        elif len(data) <= SMALL_BODY_BYTES:
            self._transport.write(head + data)
        else:
            self._transport.write(head)
            self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, whose ``http.response.start`` is held by the connection's
    ``OneWriteTransport`` until the body's first chunk. Each cycle the connection builds becomes one
    (``BoundedHttpToolsProtocol.on_headers_complete``): a class, not a wrapper made per request."""

    transport: OneWriteTransport  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        self.transport.holding = message["type"] == "http.response.start"
        try:
            await super().send(message)
        finally:
            self.transport.holding = False
