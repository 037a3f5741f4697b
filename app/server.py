"""Running the API under uvicorn, with one or several worker processes."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from app.logs import configure_logging
from app.settings import Settings


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_server(settings: Settings) -> None:
    """Serve ``app.api:create_app`` until interrupted; SIGTERM after a graceful shutdown exits 0.

    Uvicorn imports the factory in each worker process, so every worker builds its settings from the
    environment (the CLI exports its options there first) and loads the model itself.

    On SIGTERM uvicorn stops accepting, drains in-flight requests, then restores the previous handler and
    re-raises the signal. With the default handler that makes the exit status "killed by SIGTERM", so a rolling
    update looks like a crash; the handler installed here turns the re-raised signal into a clean exit 0.
    """
    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "app.api:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.value,
        server_header=False,
    )
