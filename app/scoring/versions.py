"""Versions of the model store other than the served one, loaded on demand: how a challenger is compared by hand.

The Open Inference Protocol names a version in the URL (``/v2/models/gridwatch/versions/{version}/infer``). The
served version is the holder's (``app.scoring.holder``); any other version of ``MODEL_DIR`` is loaded exactly as
start-up and hot swap load one (``app.detector.loading.load_for_serving``: verified against its folder, on this
server's scorer), and the ``size`` most recently used are kept, so a comparison session loads each version once,
not once per request. A version that does not load is remembered with its files' fingerprint, as the hot-swap
watcher does: asking again costs three ``stat`` calls until the files change. Versions are named by their hash and
never change, but a version whose files changed or disappeared (pruned) since it was loaded is read again.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from typing import TypeVar

from app.detector.errors import GridWatchError
from app.detector.loading import load_for_serving
from app.detector.model import Detector
from app.detector.registry import Fingerprint, ModelStore, RegistryError
from app.detector.scorer import Scorer

logger = logging.getLogger(__name__)

V = TypeVar("V")
VERSION_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
"""What a version name may look like (the store's are 12 hexadecimal digits): anything else is no version, refused
before it reaches the file system."""
KEPT_VERSIONS = 2
"""Non-served versions kept loaded per worker: a challenger and one more (about 30 MB each for the default model)."""


class ModelNotFoundError(GridWatchError):
    """No model or version of that name: the store has no such version folder."""


class VersionNotServableError(GridWatchError):
    """The version exists in the store but does not load the way serving loads it; the message says why."""


class OtherVersions:
    """Non-served versions of ``store``, loaded the verified way on first use, the ``size`` most recent kept."""

    def __init__(self, store: ModelStore, scorer: Scorer, *, size: int = KEPT_VERSIONS) -> None:
        self._store = store
        self._scorer = scorer
        self._size = size
        self._loaded: OrderedDict[str, tuple[Fingerprint, Detector]] = OrderedDict()
        self._refused: OrderedDict[str, tuple[Fingerprint, str]] = OrderedDict()
        self._loading = threading.Lock()  # one load at a time: concurrent requests for a version share its load
        self._entries = threading.Lock()  # held only to read or update the two tables, never during a load

    def names(self) -> list[str]:
        """The version folders of the store, sorted (a few directory entries; nothing is read)."""
        return self._store.version_names()

    def cached(self, version: str) -> Detector | None:
        """``version`` if it is loaded and its files are as they were then; cheap (three ``stat`` calls)."""
        with self._entries:
            entry = self._loaded.get(version)
            if entry is None or entry[0] != self._fingerprint(version):
                return None
            self._loaded.move_to_end(version)
            return entry[1]

    def get(self, version: str) -> Detector:
        """``version``, loaded now if needed; blocking (a load takes a fraction of a second), meant for a thread.

        Raises ``ModelNotFoundError`` when the store has no such version and ``VersionNotServableError`` when it
        does not load."""
        with self._loading:
            files = self._fingerprint(version)
            if all(stat is None for stat in files):
                known = ", ".join(self._store.version_names()) or "none"
                raise ModelNotFoundError(f"no version {version} in the model store (versions: {known})")
            with self._entries:
                loaded = self._loaded.get(version)
                refused = self._refused.get(version)
            if loaded is not None and loaded[0] == files:  # loaded by the request that held the lock before
                return loaded[1]
            if refused is not None and refused[0] == files:
                raise VersionNotServableError(refused[1])
            try:
                detector = load_for_serving(self._store, version, self._scorer)
            except GridWatchError as error:
                reason = f"version {version} cannot be served: {error}"
                self._remember(self._refused, version, (files, reason))
                logger.warning("%s", reason)
                raise VersionNotServableError(reason) from None
            with self._entries:
                self._refused.pop(version, None)
            self._remember(self._loaded, version, (files, detector))
            logger.info("loaded model version %s for requests that name it (%d kept)", version, len(self._loaded))
            return detector

    def _fingerprint(self, version: str) -> Fingerprint:
        if VERSION_NAME.fullmatch(version) is None:
            raise ModelNotFoundError(f"not a version name: {version!r}")
        try:
            return self._store.fingerprint(version)
        except RegistryError:
            raise ModelNotFoundError(f"not a version name: {version!r}") from None

    def _remember(self, entries: OrderedDict[str, V], version: str, value: V) -> None:
        with self._entries:
            entries[version] = value
            entries.move_to_end(version)
            while len(entries) > self._size:
                entries.popitem(last=False)
