"""Logging set-up shared by the server and the command line."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Plain timestamped lines on stderr at ``level`` (the server's structured access log builds on this)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
