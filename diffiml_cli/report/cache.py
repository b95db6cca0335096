"""A small JSON cache of values derived from files, reused while the file is unchanged.

A re-run of `diffiml report` over a folder of 10,000 images should not hash every input and decode every
output again. Each value is stored with its source's signature (size, mtime in ns, inode: an atomic
replacement changes the inode even within one mtime tick) and reused only while the signature matches. The
cache is rewritten atomically with the entries this run used, so entries of images that left the report go.
An unreadable cache counts as empty: it only costs time.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from diffiml_cli.files import atomic_write_bytes

CACHE_VERSION = 1


def signature(path: Path) -> list[int] | None:
    """[size, mtime_ns, inode] of the file at `path` (symlinks followed), or None when it cannot be stat'ed."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):  # ValueError: an embedded NUL byte
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ino]


class StatCache:
    """key (str) -> JSON value, each valid while its file's `signature` is unchanged; safe across threads."""

    def __init__(self, path: Path, *, salt: object = None) -> None:
        """Load `path` if it exists and was written with the same `salt` (e.g. the thumbnail size)."""
        self.path = path
        self.salt = salt
        self._lock = threading.Lock()
        self._old: dict[str, dict] = {}
        self._used: dict[str, dict] = {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("version") == CACHE_VERSION and document.get("salt") == salt:
                self._old = {k: v for k, v in document["entries"].items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass

    def lookup(self, key: str, current: list[int] | None) -> dict | None:
        """The value stored for `key` when it was stored with signature `current`, else None."""
        if current is None:
            return None
        with self._lock:
            entry = self._used.get(key) or self._old.get(key)  # this run's first: a source listed twice
            if entry is None or entry.get("signature") != current or not isinstance(entry.get("value"), dict):
                return None
            self._used[key] = entry
            return entry["value"]

    def store(self, key: str, current: list[int] | None, value: dict) -> None:
        """Remember `value` for `key` under `current` (not stored when the file could not be stat'ed)."""
        if current is not None:
            with self._lock:
                self._used[key] = {"signature": current, "value": value}

    def dropped(self) -> list[str]:
        """The keys of the loaded entries that this run neither looked up nor stored."""
        with self._lock:
            return [key for key in self._old if key not in self._used]

    def save(self) -> None:
        """Write the entries this run used, atomically. Raises OSError."""
        with self._lock:
            document = {"version": CACHE_VERSION, "salt": self.salt, "entries": self._used}
            data = json.dumps(document, separators=(",", ":")).encode()  # ASCII: \u escapes keep any path
        atomic_write_bytes(self.path, data)
