"""Helpers for the UI's tests: a scripted stand-in backend, the real UI as a process, and a model folder per module.

``StubBackend`` answers whatever a test scripts (errors, odd bodies, slow answers) over real HTTP and records the
connections it saw, so the client's error handling and keep-alive behaviour are tested on the wire. The happy
paths run against the real backend (``tests.support.ServerProcess``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from app.detector.artifact import metadata_path
from tests.support import ROOT, HttpProcess, ServerProcess

UI_SCRIPT = ROOT / "ui" / "main.py"


def copy_model(trained_artifact: Path, folder: Path) -> Path:
    """A private model folder holding a copy of the session's trained model."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(trained_artifact, folder / trained_artifact.name)
    shutil.copy2(metadata_path(trained_artifact), metadata_path(folder / trained_artifact.name))
    return folder


@contextmanager
def real_backend(trained_artifact: Path, folder: Path) -> Iterator[ServerProcess]:
    """A real `gridwatch serve` on a free port with a copy of the session's model, ready when yielded."""
    env = {"MODEL_DIR": str(copy_model(trained_artifact, folder)), "TRAIN_IF_MISSING": "0"}
    with ServerProcess(env=env) as server:
        yield server


@dataclass
class Answer:
    """A scripted answer: status, JSON-able body (or raw bytes), headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


Route = Callable[[dict[str, Any] | None], Answer]


class StubBackend:
    """An HTTP/1.1 server on a free localhost port answering scripted routes, recording what it received."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        """Set it to let routes that wait on it answer (see ``hang``)."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive unless the client asks to close

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                body = json.loads(payload) if payload else None
                stub.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "client_port": self.client_address[1],
                        "connection": self.headers.get("Connection"),
                        "body": body,
                    }
                )
                route = stub.routes.get((method, self.path))
                answer = route(body) if route else Answer(404, {"detail": "Not Found"})
                data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def route(self, method: str, path: str, answer: Answer | Route) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda _body, a=answer: a)

    def hang(self, method: str, path: str) -> None:
        """Make a route answer only once ``release`` is set (to test client timeouts)."""

        def slow(_body: dict[str, Any] | None) -> Answer:
            self.release.wait(timeout=30)
            return Answer(200, {})

        self.route(method, path, slow)

    def __enter__(self) -> StubBackend:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def scoring_route(threshold_voltage: float = 300.0, served_by: str = "stub:1") -> Route:
    """A /predict that flags readings above ``threshold_voltage`` volts: a predictable stand-in for the model."""

    def score(body: dict[str, Any] | None) -> Answer:
        readings = (body or {}).get("readings", [])
        predictions = [
            {"anomaly": r["voltage"] > threshold_voltage, "score": (r["voltage"] - threshold_voltage) / 100}
            for r in readings
        ]
        return Answer(
            200,
            {
                "predictions": predictions,
                "anomalies": sum(p["anomaly"] for p in predictions),
                "total": len(predictions),
                "served_by": served_by,
            },
        )

    return score


class StreamlitProcess(HttpProcess):
    """``streamlit run ui/main.py`` as a child process, configured only by environment variables.

    The port comes from ``STREAMLIT_SERVER_PORT`` (not ``--server.port``), so the test also proves the documented
    variable works; the backend from ``BACKEND_URL``.
    """

    def __init__(self, backend_url: str) -> None:
        super().__init__(ready_path="/_stcore/health", log_name="ui")
        self.env = {
            **os.environ,
            "BACKEND_URL": backend_url,
            "STREAMLIT_SERVER_PORT": str(self.port),
            "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",
            "STREAMLIT_SERVER_HEADLESS": "true",
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streamlit", "run", str(UI_SCRIPT)]
