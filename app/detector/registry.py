"""Model versions in ``MODEL_DIR``: each trained model kept whole and unchanged, and one pointer to the active one.

::

    MODEL_DIR/
      active.json                         {"version": "c41cd29bc470", "previous": ["282b91a35705", ...], ...}
      versions/c41cd29bc470/iso_forest.joblib, .npz, .json
      versions/282b91a35705/...

A version is named by the SHA-256 of its estimator (``model_version`` in its metadata), so the same bytes are the
same version. Training writes a new version into a staging folder and renames it into ``versions/`` once it is
complete; promoting or rolling back rewrites ``active.json`` through a temporary file and a rename. A reader thus
sees the old pointer or the new one and a version folder complete or not at all, and every writer holds the
folder's training lock, so two trainers, or a trainer and a promotion, cannot interleave.

A folder from before versions (the model's files directly in ``MODEL_DIR``) is read as one version until the first
write, which moves those files into ``versions/`` and makes them the active version.

This module imports neither scikit-learn nor joblib: serving resolves the active version through it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.detector.artifact import (
    atomic_write_bytes,
    forest_path,
    load_forest,
    metadata_path,
    read_metadata,
    training_lock,
    verified_bytes,
)
from app.detector.errors import GridWatchError, ModelArtifactError

logger = logging.getLogger(__name__)

POINTER = "active.json"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"
KEPT_PREVIOUS = 20
"""How many earlier active versions ``rollback`` can go back through."""
PRUNED_PREFIX = ".pruned-"


class RegistryError(GridWatchError):
    """A promotion or rollback that cannot be done; the message says why."""


class VersionRefusedError(RegistryError):
    """A version that does not load the way serving loads it: never committed, activated or named a challenger."""


@dataclass(frozen=True)
class Pruned:
    """What ``prune`` removed (or, with ``dry_run``, would remove) and what it kept, newest last."""

    removed: list[str]
    kept: list[str]
    freed_bytes: int
    dry_run: bool


@dataclass(frozen=True)
class StoreUsage:
    """The store's versions and their bytes, and the room left on the filesystem holding it."""

    versions: int
    bytes: int
    newest_bytes: int
    """The newest version's bytes: about what the next training needs."""
    filesystem_size_bytes: int
    filesystem_avail_bytes: int


Fingerprint = tuple[tuple[int, int, int] | None, ...]
"""What a version's files are on disk (size, modification time, inode of each, None when missing): when it
changes, a version refused before may have been repaired and is worth reading again."""


@dataclass(frozen=True)
class ModelStore:
    """The versions of one model (``name``, default ``iso_forest.joblib``) in the folder ``root``."""

    root: Path
    name: str = "iso_forest.joblib"

    @classmethod
    def of(cls, artifact: Path) -> ModelStore:
        """The store that ``MODEL_DIR/MODEL_NAME`` addresses (``Settings.model_path``)."""
        return cls(artifact.parent, artifact.name)

    @property
    def legacy_artifact(self) -> Path:
        """Where a model saved before versions existed lives."""
        return self.root / self.name

    def artifact_of(self, version: str) -> Path:
        return self.root / VERSIONS / _checked_version(version) / self.name

    def files_of(self, version: str) -> tuple[Path, Path, Path]:
        """The estimator, the compiled forest and the metadata of ``version``."""
        artifact = self.artifact_of(version)
        return artifact, forest_path(artifact), metadata_path(artifact)

    def verify(self, version: str) -> None:
        """Check ``version`` the way serving loads it, or raise ``VersionRefusedError`` saying why.

        The folder holds the three files; the metadata names this very version (a renamed or edited copy does
        not); the compiled forest matches its recorded size and hash, is sound and lists the metadata's features;
        the estimator matches its recorded size and hash. Nothing is unpickled: this module never imports
        scikit-learn.
        """
        artifact = self.artifact_of(version)
        missing = [path.name for path in self.files_of(version) if not path.is_file()]
        if missing:
            known = ", ".join(self.version_names()) or "none"
            raise VersionRefusedError(f"no complete version {version} in {self.root} (versions: {known})")
        try:
            load_forest(artifact, version=version)
            verified_bytes(artifact, artifact, read_metadata(artifact), "artifact")
        except ModelArtifactError as error:
            raise VersionRefusedError(f"version {version} does not load: {error.reason}") from None

    def why_unusable(self, version: str) -> str | None:
        """Why ``version`` cannot be served, or None when it can."""
        try:
            self.verify(version)
        except RegistryError as error:
            return str(error)
        return None

    def version_names(self) -> list[str]:
        """The names of the version folders, complete or not (staging folders excluded), sorted."""
        folder = self.root / VERSIONS
        names = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        return [name for name in names if not name.startswith(".")]

    def usable_versions(self) -> list[str]:
        """The versions that load as serving loads them."""
        return [version for version in self.version_names() if self.why_unusable(version) is None]

    def needs_conversion(self, version: str) -> bool:
        """Whether ``version`` was saved before compiled forests (no forest recorded): converting it in place is
        the one repair a server may make, since nothing of the operator's is replaced."""
        try:
            metadata = read_metadata(self.artifact_of(version))
        except ModelArtifactError:
            return False
        return metadata.get("forest") is None and self.artifact_of(version).is_file()

    def fingerprint(self, version: str) -> Fingerprint:
        """What ``version``'s files are on disk now; cheap (three ``stat`` calls), nothing is read."""
        return tuple(_stat_of(path) for path in self.files_of(version))

    def pointer_fingerprint(self) -> Fingerprint:
        """What ``active.json`` is on disk now (see ``fingerprint``)."""
        return (_stat_of(self.root / POINTER),)

    def pointer(self) -> dict[str, Any] | None:
        """The content of ``active.json``, or None when no version was ever activated."""
        try:
            document = json.loads((self.root / POINTER).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise RegistryError(
                f"{self.root / POINTER} is unreadable ({error}); promote a version to rewrite it"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("version"), str):
            raise RegistryError(f"{self.root / POINTER} names no version; promote a version to rewrite it")
        return document

    def active_and_shadow(self) -> tuple[str | None, str | None]:
        """The active version and the challenger that scores beside it (``models shadow``), from one read."""
        pointer = self.pointer()
        if pointer is None:
            return None, None
        shadow = pointer.get("shadow")
        return pointer["version"], shadow if isinstance(shadow, str) else None

    def active_version(self) -> str | None:
        return self.active_and_shadow()[0]

    def shadow_version(self) -> str | None:
        return self.active_and_shadow()[1]

    def set_shadow(self, version: str | None) -> None:
        """Name the challenger servers score every batch with, after answering (None: no challenger)."""
        with self.lock():
            self.migrate_legacy()
            pointer = self.pointer()
            if pointer is None:
                raise RegistryError("no active version yet: train one before naming a challenger")
            if version is not None:
                self.verify(version)
            self._write_pointer(pointer["version"], list(pointer.get("previous", [])), shadow=version)

    def active_artifact(self) -> Path:
        """The artifact to serve: the active version's, or the legacy files' when no version is active yet."""
        version = self.active_version()
        return self.legacy_artifact if version is None else self.artifact_of(version)

    def versions(self) -> list[dict[str, Any]]:
        """Every complete version, oldest first, with its metadata (or the reason it cannot be read)."""
        found = []
        folder = self.root / VERSIONS
        candidates = sorted(folder.iterdir()) if folder.is_dir() else []
        for path in candidates:
            if path.name.startswith("."):
                continue  # a staging folder: a version still being written, or left by a killed trainer
            found.append({"version": path.name, **_metadata_summary(path / self.name)})
        if not found and self.legacy_artifact.exists():
            found.append({"version": None, "legacy": True, **_metadata_summary(self.legacy_artifact)})
        return sorted(found, key=lambda entry: entry.get("trained_at") or "")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The folder's training lock (shared with every writer since before versions); on taking it, staging
        folders left by a killed trainer are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        with training_lock(self.legacy_artifact):
            folder = self.root / VERSIONS
            for leftover in folder.glob(f"{STAGING_PREFIX}*") if folder.is_dir() else []:
                shutil.rmtree(leftover, ignore_errors=True)
                logger.warning("removed %s, left by a trainer that did not finish", leftover.name)
            yield

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """An artifact path in a fresh staging folder to train into; ``commit`` it. Call with the lock held."""
        folder = self.root / VERSIONS / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        try:
            yield folder / self.name
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # gone already when committed

    def commit(self, staged: Path, version: str) -> Path:
        """Move a staged model into ``versions/<version>``, whole (a rename), once it loads the way serving loads
        it (``VersionRefusedError`` otherwise: a version no server can load is never stored). The same version
        already there is kept when it loads; a damaged one is set aside (``.damaged-<version>-*``, kept for
        inspection) and replaced, so a retrain repairs it instead of finding it "there already" forever. Returns
        the version's artifact. Call with the lock held."""
        try:
            load_forest(staged, version=version)
            verified_bytes(staged, staged, read_metadata(staged), "artifact")
        except ModelArtifactError as error:
            raise VersionRefusedError(
                f"the model just trained does not load, it was not stored: {error.reason}"
            ) from None
        final = self.artifact_of(version)
        if final.parent.exists():
            problem = self.why_unusable(version)
            if problem is None:
                logger.info("version %s exists already; keeping it", version)
                return final
            aside = final.parent.with_name(f".damaged-{version}-{uuid.uuid4().hex[:6]}")
            final.parent.replace(aside)
            logger.warning(
                "version %s was damaged (%s); replaced it, the damaged copy is in %s", version, problem, aside.name
            )
        staged.parent.replace(final.parent)
        return final

    def set_active(self, version: str) -> None:
        """Point ``active.json`` at ``version`` once it verifies (``verify``), keeping the previous one for rollback.
        Call with the lock held."""
        self.verify(version)
        pointer = self.pointer() or {}
        current = pointer.get("version")
        previous = list(pointer.get("previous", []))
        if current is not None and current != version:
            previous = [current, *[v for v in previous if v != current]][:KEPT_PREVIOUS]
        self._write_pointer(version, previous, shadow=pointer.get("shadow"))

    def promote(self, version: str) -> str | None:
        """Make ``version`` active once it verifies; returns the version it replaces.

        An unreadable ``active.json`` (a hand edit gone wrong) is what this command repairs: it is set aside as
        ``active.json.damaged-<time>`` and a new pointer is written, with no earlier versions to roll back to.
        """
        with self.lock():
            self.set_aside_unreadable_pointer()
            self.migrate_legacy()
            replaced = self.active_version()
            self.set_active(version)
        logger.info("promoted model %s (was %s)", version, replaced)
        return replaced

    def set_aside_unreadable_pointer(self) -> Path | None:
        """Rename an unreadable ``active.json`` out of the way (returns where), or do nothing when it reads.
        Call with the lock held."""
        try:
            self.pointer()
        except RegistryError as error:
            aside = self.root / f"{POINTER}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            (self.root / POINTER).replace(aside)
            logger.warning("%s; set it aside as %s", error, aside.name)
            return aside
        return None

    def rollback(self) -> str:
        """Make the previously active version active again (the newest one still stored: ``prune`` may have
        removed older ones); returns it."""
        version = self._rollback(None, None)
        if version is None:  # unreachable: without conditions it rolls back or raises
            raise RegistryError("no earlier active version to roll back to")
        return version

    def rollback_promotion(self, promoted: str, replaced: str) -> bool:
        """Roll back from ``promoted`` to ``replaced`` only if that is still exactly the last step: ``promoted``
        active and ``replaced`` the version it replaced. False (nothing done) otherwise: another worker rolled it
        back already, or someone promoted or rolled back since. So any number of workers judging one promotion
        at once undo it once, and never go further back than the version they compared it with."""
        return self._rollback(promoted, replaced) is not None

    def _rollback(self, expected: str | None, target: str | None) -> str | None:
        with self.lock():
            pointer = self.pointer()
            if expected is not None and (pointer is None or pointer["version"] != expected):
                return None
            previous = list(pointer.get("previous", [])) if pointer else []
            previous = [version for version in previous if (self.root / VERSIONS / version).is_dir()]
            if target is not None and previous[:1] != [target]:
                return None
            if not previous:
                raise RegistryError("no earlier active version to roll back to")
            version, rest = previous[0], previous[1:]
            self.verify(version)
            self._write_pointer(version, rest, shadow=pointer.get("shadow") if pointer else None)
        logger.info("rolled back to model %s (was %s)", version, pointer["version"] if pointer else None)
        return version

    def prune(self, keep: int, *, dry_run: bool = False) -> Pruned:
        """Remove the versions nobody needs, under the training lock (so never one being trained or promoted).

        Kept: the active version, the previous one (what ``rollback`` returns to, and what a worker serves until its
        next poll; when that one no longer loads, the earlier ones back to the first that does, which is what a
        worker refusing the newer ones still serves), the challenger in the shadow, and the ``keep`` newest by
        training time. A removed version's
        folder is first renamed out of ``versions/`` (a reader sees it whole or not at all), then deleted. An
        unreadable ``active.json`` stops it (``RegistryError``): without knowing what is served, nothing is removed.
        """
        if keep < 1:
            raise ValueError("keep at least one version besides the active, previous and shadow ones")
        with self.lock():
            active, shadow = self.active_and_shadow()
            pointer = self.pointer() or {}
            previous = self._fallbacks([v for v in pointer.get("previous", []) if (self.root / VERSIONS / v).is_dir()])
            names = self._by_age()
            protected = {active, shadow, *previous, *names[-keep:]}
            removed = [name for name in names if name not in protected]
            freed = sum(_folder_bytes(self.root / VERSIONS / name) for name in removed)
            if not dry_run:
                for name in removed:
                    folder = self.root / VERSIONS / name
                    aside = folder.with_name(f"{PRUNED_PREFIX}{name}-{uuid.uuid4().hex[:6]}")
                    folder.replace(aside)
                    shutil.rmtree(aside, ignore_errors=True)
                if removed:
                    logger.info("pruned %d model versions (%d bytes): %s", len(removed), freed, ", ".join(removed))
        return Pruned(removed, [name for name in names if name in protected], freed, dry_run)

    def _fallbacks(self, previous: list[str]) -> list[str]:
        """The earlier active versions a worker may still serve: back to (and with) the first that loads."""
        kept = []
        for version in previous:
            kept.append(version)
            if self.why_unusable(version) is None:
                break
        return kept

    def _by_age(self) -> list[str]:
        """The stored versions, oldest first: by training time, then by when their files were written (the
        recorded time has whole seconds only)."""

        def age(entry: dict[str, Any]) -> tuple[str, int]:
            written = _stat_of(metadata_path(self.artifact_of(entry["version"])))
            return entry.get("trained_at") or "", written[1] if written else 0

        return [entry["version"] for entry in sorted((e for e in self.versions() if e.get("version")), key=age)]

    def usage(self) -> StoreUsage:
        """The versions stored, their bytes, and the filesystem's room (a few ``stat`` calls per version)."""
        folder = self.root / VERSIONS
        sizes = [(path.stat().st_mtime, _folder_bytes(path)) for path in _version_folders(folder)]
        stats = shutil.disk_usage(self.root if self.root.exists() else self.root.parent)
        newest = max(sizes)[1] if sizes else 0
        return StoreUsage(len(sizes), sum(size for _, size in sizes), newest, stats.total, stats.free)

    def migrate_legacy(self) -> str | None:
        """Move a model saved before versions into ``versions/`` and make it active. Call with the lock held.

        Returns its version, or None when there is nothing to move (no legacy files, or versions already in use).
        """
        legacy = self.legacy_artifact
        if self.active_version() is not None or not legacy.exists():
            return None
        try:
            version = json.loads(metadata_path(legacy).read_bytes())["model_version"]
            final = self.artifact_of(str(version))
        except (OSError, ValueError, KeyError, TypeError, RegistryError):
            return None  # unusable: ensure_model rejects and replaces it, as before versions
        final.parent.mkdir(parents=True, exist_ok=True)
        for path in (legacy, forest_path(legacy), metadata_path(legacy)):
            if path.exists():
                path.replace(final.parent / path.name)
        self._write_pointer(str(version), [])
        logger.info("moved the model saved before versions into %s and made it active", final.parent)
        return str(version)

    def _write_pointer(self, version: str, previous: list[str], *, shadow: str | None = None) -> None:
        document: dict[str, Any] = {
            "version": version,
            "previous": previous,
            "changed_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
        if shadow is not None and shadow != version:  # a challenger promoted is no longer a challenger
            document["shadow"] = shadow
        atomic_write_bytes(self.root / POINTER, (json.dumps(document, indent=2) + "\n").encode())


def _version_folders(folder: Path) -> list[Path]:
    """The complete version folders (staging, pruned and damaged ones start with a dot)."""
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")]


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
    except OSError:  # removed meanwhile
        return 0


def _stat_of(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns, found.st_ino


def _checked_version(version: str) -> str:
    if not version or Path(version).name != version or version.startswith("."):
        raise RegistryError(f"not a version name: {version!r}")
    return version


def _metadata_summary(artifact: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(metadata_path(artifact).read_bytes())
    except (OSError, ValueError) as error:
        return {"error": f"metadata unreadable: {error}"}
    training = metadata.get("training") or {}
    evaluation = metadata.get("evaluation") or {}
    return {
        "trained_at": metadata.get("trained_at"),
        "source": training.get("file") or training.get("source"),
        "samples": training.get("samples"),
        "contamination": (metadata.get("config") or {}).get("contamination"),
        "evaluation": {key: evaluation.get(key) for key in ("precision", "recall", "f1", "roc_auc")}
        if evaluation
        else None,
    }
