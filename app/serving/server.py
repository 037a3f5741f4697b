"""Running the API under uvicorn, with one or several worker processes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.serving.readiness import clear_markers
from app.serving.settings import Settings
from app.serving.telemetry.logs import configure_logging

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BOUNDED_PROTOCOL = "app.serving.edge.connections:BoundedHttpToolsProtocol"
"""uvicorn's httptools protocol with bounds on the request head's size and time (``app.serving.edge.connections``)."""


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def worker_app() -> FastAPI:
    """The application of one worker process (uvicorn's factory): settings from the environment, logging set up.

    Uvicorn imports this in every worker it starts, so each worker configures its own logging (uvicorn is told to
    leave logging alone) and builds its own app, model and tracer.
    """
    from app.serving.app import create_app  # noqa: PLC0415 - imported in the worker, after PROMETHEUS_MULTIPROC_DIR is set
    from app.serving.edge.connections import BoundedHttpToolsProtocol  # noqa: PLC0415 - imports prometheus-client

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, loop_flushed=True)
    BoundedHttpToolsProtocol.configure(settings)  # before uvicorn builds the first connection's protocol
    return create_app(settings)


def prepare_metrics_directory(settings: Settings) -> Path | None:
    """Choose and empty the multiprocess metrics folder, and export it, before any worker starts.

    Needed only with several workers; prometheus-client reads ``PROMETHEUS_MULTIPROC_DIR`` when it is first
    imported, which in the workers happens after this. This (supervisor) process never imports prometheus-client,
    so it writes no metric files of its own. With one worker and no folder configured, metrics stay in process
    memory, which keeps exemplars possible.
    """
    directory = settings.prometheus_multiproc_dir
    if directory is None and settings.workers > 1:
        directory = Path(tempfile.mkdtemp(prefix="gridwatch-metrics-"))
    if directory is None:
        return None
    # Stale files would add a previous run's counts to this one's (prometheus-client: wipe between runs).
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.glob("*.db"):
        entry.unlink()
    clear_markers(directory)  # the workers' readiness markers live here too (app.serving.readiness)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def run_server(settings: Settings) -> None:
    """Serve until interrupted; SIGTERM after a graceful shutdown exits 0.

    On SIGTERM uvicorn stops accepting, drains in-flight requests, then restores the previous handler and
    re-raises the signal. With the default handler that makes the exit status "killed by SIGTERM", so a rolling
    update looks like a crash; the handler installed here turns the re-raised signal into a clean exit 0.
    """
    configure_logging(settings.log_level, settings.log_format)
    directory = prepare_metrics_directory(settings)
    chosen_here = directory is not None and settings.prometheus_multiproc_dir is None
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        _run_uvicorn(settings)
    finally:
        if (
            chosen_here and directory is not None
        ):  # a folder this process made under /tmp leaves with it; a configured one is the user's
            shutil.rmtree(directory, ignore_errors=True)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that a second signal during the drain does not force the exit.

    uvicorn turns SIGINT after SIGTERM into an immediate exit: every request in flight got a plain-text 500 and the
    lifespan shutdown was skipped. The drain is already bounded by GRACEFUL_TIMEOUT (and the pod's termination grace
    period), so further signals are noted in the log and otherwise ignored. Only the first signal is re-raised after
    the drain, so SIGTERM still ends in exit 0 (``run_server``).
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            logger.info("signal %d during the shutdown: still draining, for at most GRACEFUL_TIMEOUT", sig)
            return
        super().handle_exit(sig, frame)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "app": "app.serving.server:worker_app",
        "factory": True,
        # By name: uvicorn imports it in each worker, so the supervisor never imports prometheus-client.
        "http": BOUNDED_PROTOCOL,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_level": settings.log_level.value,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.graceful_timeout,
    }


def _run_uvicorn(settings: Settings) -> None:
    options = _uvicorn_options(settings)
    if settings.workers > 1:  # uvicorn's supervisor starts its own servers in the workers
        uvicorn.run(**options)
        return
    server = DrainingServer(uvicorn.Config(**options))
    server.run()
    if not server.started:  # as uvicorn.run does: a server that could not start is a failed start
        raise SystemExit(3)
