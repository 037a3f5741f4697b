"""The API-key file, read one way by the backend and the UI, so both hold the same key for the same file.

The backend refuses to start on a file that gives no usable key; the UI shows a banner instead (each keeps its
policy); both read it here. A key travels in one HTTP header, so it must be one line of visible ASCII: a multi-line
file, a non-ASCII key (header bytes are read as latin-1, so it would match only by accident) or an empty one would
lock every client out while the service looked healthy. A UTF-8 byte-order mark, which some editors write, is
dropped; so is surrounding whitespace (a trailing newline above all). Standard library only.
"""

from __future__ import annotations

from pathlib import Path


class ApiKeyError(ValueError):
    """The key (or its file) cannot be sent in an X-API-Key header; the message names the source and the problem."""


def read_api_key_file(path: Path) -> str:
    """The key ``path`` holds, checked; ``ApiKeyError`` naming ``API_KEY_FILE`` when it is unreadable or unusable."""
    source = f"API_KEY_FILE={path}"
    try:
        key = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ApiKeyError(f"{source}: {reason}") from None
    if not key:
        raise ApiKeyError(f"{source} is empty")
    return checked_api_key(key, source)


def checked_api_key(key: str, source: str) -> str:
    """``key`` when an X-API-Key header can carry it, else ``ApiKeyError`` naming ``source``."""
    if "\n" in key or "\r" in key:
        raise ApiKeyError(f"{source} holds several lines; an X-API-Key header carries one: keep one line")
    if not all(" " < character < "\x7f" for character in key):
        raise ApiKeyError(f"{source} holds spaces, control or non-ASCII characters; an HTTP header cannot carry them")
    return key
