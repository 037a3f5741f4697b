"""``/livez``, ``/health`` and ``/metrics`` of the stream consumer, on HOST:PORT, from a thread of their own.

The consumer has no HTTP API, so this is the standard library's threading HTTP server, not a web framework: the
kubelet's probes and Prometheus' scrape are three GETs. ``/health`` is ready once the model is loaded and the
consumer is bound to its durable consumer on a connected broker; while the broker is unreachable it answers 503
with the reason, so a pod that cannot consume is taken out of rotation and KEDA sees it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

Health = Callable[[], tuple[bool, dict[str, object]]]
"""(ready, body) of ``/health``."""


class ProbeServer:
    """Serves the three probes until ``close``."""

    def __init__(self, host: str, port: int, health: Health) -> None:
        handler = _handler(health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "gridwatch-stream"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._json(HTTPStatus.OK, {"status": "alive"})
            elif path == "/health":
                ready, body = health()
                self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
            elif path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encoder(REGISTRY), content_type)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"detail": "not found: /livez, /health and /metrics only"})

        def _json(self, status: HTTPStatus, body: dict[str, object]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: HTTPStatus, content: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log: not logged."""

    return Handler
