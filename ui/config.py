"""The UI's configuration: its environment variables and the bounds of every control.

The backend reads its settings in ``app/serving/settings.py``; the UI has three, ``BACKEND_URL``, the optional API key
(``API_KEY`` or ``API_KEY_FILE``, the backend's names, so one Secret serves both) and ``NATS_URL`` (the stream
consumer's broker, for the Stream view; the consumer's name for it), read here and nowhere else
(``STREAMLIT_SERVER_PORT`` and the other ``STREAMLIT_*`` variables are read by Streamlit itself).
The bounds live here too, so the sidebar, the load actions and the tests agree on them: a load action can never
be asked for more requests, threads or seconds than these limits, whatever the page sends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.common.api_key import ApiKeyError, read_api_key_file

DEFAULT_BACKEND_URL = "http://localhost:8000"


def backend_url_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """``BACKEND_URL`` without a trailing slash, else the local default (what ``gridwatch serve`` listens on)."""
    return (environ.get("BACKEND_URL") or "").strip().rstrip("/") or DEFAULT_BACKEND_URL


DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
"""The stream consumer's own default (README), so the view offers the server ``gridwatch stream`` would use."""


def nats_url_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """``NATS_URL`` and True when it is set (the Stream view then subscribes at once), else the local default and
    False (the view waits to be switched on: most pages have no broker beside them)."""
    url = (environ.get("NATS_URL") or "").strip()
    return (url, True) if url else (DEFAULT_NATS_URL, False)


def api_key_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The key to send in X-API-Key when the backend requires one: ``API_KEY_FILE``'s content, else ``API_KEY``.

    The file is read as the backend reads it (``app.common.api_key``: a byte-order mark and surrounding whitespace
    dropped). A file that gives no usable key is treated as no key: the backend then answers 401 and the UI's
    banner says so, which tells the operator more than a UI that refuses to start.
    """
    path = (environ.get("API_KEY_FILE") or "").strip()
    if path:
        try:
            return read_api_key_file(Path(path))
        except ApiKeyError:
            return None
    return (environ.get("API_KEY") or "").strip() or None


@dataclass(frozen=True)
class Range:
    """An inclusive range with the default a control starts at."""

    low: float
    high: float
    default: float


BATCH_SIZE = Range(1, 1000, 64)
"""Readings per generated batch (the backend accepts up to MAX_BATCH, 10,000 by default)."""
INTERVAL_S = Range(0.5, 10.0, 1.0)
"""Seconds between two batches while streaming."""
ANOMALY_RATE = Range(0.0, 0.5, 0.03)
"""Probability that a simulated reading is an injected anomaly."""
WINDOW_READINGS = Range(100, 5000, 600)
"""How many of the latest readings the live charts show."""

LOAD_REQUESTS = Range(1, 2000, 200)
"""Requests of one Burst Load or Concurrent Burst."""
LOAD_THREADS = Range(1, 32, 8)
"""Parallel senders of the concurrent load actions."""
LOAD_SECONDS = Range(1, 300, 30)
"""Duration of a Sustained Concurrent Burst; it stops by itself at the end."""

REQUEST_TIMEOUT_S = (2.0, 15.0)
"""(connect, read) timeouts of every backend request: an unreachable backend is reported within 2 seconds."""
WHY_READINGS = 20
"""How many of the last flagged readings the why-panel keeps and charts."""
HEALTH_REFRESH_S = 5.0
"""How often the backend panel re-checks ``/health`` while the page is idle."""
SPREAD_WINDOW_S = 120.0
"""How far back the load-spread chart looks, in wall-clock seconds."""
STREAM_REFRESH_S = 1.0
"""How often the Stream view redraws while it is subscribed."""
