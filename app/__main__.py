"""``python -m app`` serves the API, like ``gridwatch serve`` (options are passed through)."""

import sys

from app.tools.cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
