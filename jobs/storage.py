"""Stored objects (uploads): the `Storage` protocol and a local-folder implementation.

Production swaps `LocalStorage` for an adapter over its object store (S3,
GCS...) with the same four methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool:
        """Remove the object; False if it was not there (deleting twice is not an error)."""
        ...

    def list(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its last-modified time (UTC)."""
        ...


class LocalStorage:
    """Objects as files under `root`; keys are relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # Only keys in normal form: `a//b`, `a/./b` or `a/b/` would name the same file as `a/b` while
        # differing from the key `list()` reports, and the orphan sweep would then delete a live object.
        parts = key.split("/")
        if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"storage key {key!r} must be a relative POSIX path without empty, '.' or '..' segments")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self) -> Iterator[tuple[str, datetime]]:
        if not self.root.exists():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                yield path.relative_to(self.root).as_posix(), mtime
