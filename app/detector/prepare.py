"""``python -m app.detector.prepare ARTIFACT [--train-if-missing]``: make the model in ARTIFACT's folder ready to
serve, in a process of its own.

A server whose model is missing, damaged or saved by an older GridWatch runs this as a child: it trains (when
allowed) or converts the model under the training lock and exits, taking scikit-learn with it, so the serving
process never imports it. Log lines go to stderr, which the server relays; the last line of a failure is its
reason, and the exit code says which named error it was (``app.detector.loading.PREPARE_*``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.detector.errors import ModelArtifactError, ModelUnavailableError
from app.detector.loading import PREPARE_ARTIFACT_ERROR, PREPARE_TRAINED_UNUSABLE, PREPARE_UNAVAILABLE
from app.detector.registry import ModelStore, VersionRefusedError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.detector.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--train-if-missing", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)

    from app.detector.estimator import ensure_model  # noqa: PLC0415 - the same
    from app.detector.evaluate import evaluation_for_metadata  # noqa: PLC0415 - after logging is set up

    try:
        ensure_model(
            ModelStore.of(args.artifact), train_if_missing=args.train_if_missing, evaluate=evaluation_for_metadata
        )
    except VersionRefusedError as error:  # before ModelUnavailableError's siblings: training again would repeat it
        print(error, file=sys.stderr)
        return PREPARE_TRAINED_UNUSABLE
    except ModelArtifactError as error:
        print(error.reason, file=sys.stderr)
        return PREPARE_ARTIFACT_ERROR
    except ModelUnavailableError as error:
        print(error, file=sys.stderr)
        return PREPARE_UNAVAILABLE
    except OSError as error:  # a full disk, a folder that vanished: the reason, not a traceback
        print(f"cannot prepare the model in {args.artifact.parent}: {error.strerror or error}", file=sys.stderr)
        return PREPARE_UNAVAILABLE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
