"""The HTTP connection itself: uvicorn's httptools protocol plus the two bounds it lacks.

uvicorn's httptools parser (its fast path, kept for throughput) sets no limit on the request head: one 100 MiB
header was read and answered 200, four 40 MiB ones took a worker past its memory limit, all before any of the
service's code or the API key check ran. And its keep-alive timer starts only after a first response, so a
connection that sends nothing, or a head one byte at a time, was held open forever. ``BoundedHttpToolsProtocol``
adds both bounds at the lowest level, where the bytes arrive:

* **MAX_HEADER_BYTES**: the bytes of a request head (request line and headers) are counted as they arrive; past
  the limit the connection gets ``431 Request Header Fields Too Large`` and is closed, so at most the limit plus
  one read (64 KiB) is ever held for a head.
* **HEADER_TIMEOUT**: a connection must deliver a complete head this many seconds after it opens (or after the
  first byte of a keep-alive follow-up request); otherwise it gets ``408`` (if it sent part of one) and is closed.

Both refusals, and uvicorn's own 400s for requests it cannot parse, are counted in ``requests_total`` (route
``unmatched``, method ``other``) and logged, like every other answer, so an attack shows on the dashboards.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.serving.asgi import SERVER_ANSWERED, UNMATCHED_PATH
from app.serving.metrics import REQUESTS
from app.serving.settings import Settings

logger = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection; bounds set once per worker process by ``configure`` (uvicorn builds the instances)."""

    max_head_bytes: ClassVar[int] = Settings.model_fields["max_header_bytes"].default
    head_timeout: ClassVar[float] = Settings.model_fields["header_timeout"].default

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.max_head_bytes = settings.max_header_bytes
        cls.head_timeout = settings.header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head over MAX_HEADER_BYTES={self.max_head_bytes}",
            )

    def on_message_begin(self) -> None:
        if not self._in_head:  # a keep-alive follow-up: its head starts with this byte
            self._start_head()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 (a malformed request line or headers, a broken chunked body), counted and logged.

        If the application was already reading this request (a broken chunk mid-body), its metrics record it, so
        the status is left in the request's scope for them instead of being counted here a second time.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope is self.scope:
            self.scope[SERVER_ANSWERED] = HTTPStatus.BAD_REQUEST.value  # type: ignore[literal-required]
        else:
            REQUESTS.labels(UNMATCHED_PATH, "other", str(HTTPStatus.BAD_REQUEST.value)).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning("answered a connection from %s with 400: %s", client, msg)
        super().send_400_response(msg)

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
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
        REQUESTS.labels(UNMATCHED_PATH, "other", str(status.value)).inc()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning("refused a connection from %s with %d: %s", client, status.value, reason)
