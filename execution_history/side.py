"""The side area: small files the service keeps beside the records (export jobs, sessions, leases).

Every worker and every host that shares the record store must see the same side area,
so it lives with the store: a folder for a local store, keys under the bucket for an
S3 store (``S3SideArea``, same methods). Keys are slash-separated names such as
``jobs/<id>.json``; each segment is plain ASCII (letters, digits, ``._-``) and never
starts with a dot, so a key can never name a path outside the area.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Protocol

from .atomic import copy_file, create_file, replace_file
from .errors import StorageError

_SEGMENT = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")


def check_key(key: str) -> list[str]:
    """The segments of a valid key.

    :raises ValueError: for a key that is empty, absolute, has ``..`` or odd characters.
    """
    parts = key.split("/")
    if not key or not all(_SEGMENT.match(part) for part in parts):
        raise ValueError(f"invalid side-area key: {key!r}")
    return parts


class SideArea(Protocol):
    """What export jobs, sessions and leases need of the store's side area."""

    def create(self, key: str, data: bytes) -> bool:
        """Store *data* under *key* only if the key is free (atomic); False if it was taken."""

    def put(self, key: str, data: bytes) -> None:
        """Store *data* under *key*, replacing what was there (atomic)."""

    def get(self, key: str) -> bytes | None:
        """The bytes under *key*, or None."""

    def delete(self, key: str) -> bool:
        """Remove *key*; False if it was not there."""

    def list(self, prefix: str) -> list[str]:
        """Every key under the folder *prefix* (``"jobs"``), sorted."""

    def put_file(self, key: str, source: str | os.PathLike[str]) -> None:
        """Store the content of the local file *source* under *key* (atomic; large files welcome)."""

    def open(self, key: str) -> BinaryIO | None:
        """A readable binary stream of the bytes under *key*, or None."""

    def size(self, key: str) -> int | None:
        """The size in bytes of *key*, or None."""


class LocalSideArea:
    """The side area as a folder (the local store's default: ``<data dir>/.side``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def path_for(self, key: str) -> Path:
        """The file of a key (validated; never outside the area)."""
        return self.root.joinpath(*check_key(key))

    def _ready(self, key: str) -> Path:
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError("Side area cannot be written", reason=err.strerror) from err
        return path

    def create(self, key: str, data: bytes) -> bool:
        """:raises StorageError: if the folder cannot be written."""
        path = self._ready(key)
        try:
            return create_file(path, data, 0o600)
        except OSError as err:
            raise StorageError("Side area cannot be written", reason=err.strerror) from err

    def put(self, key: str, data: bytes) -> None:
        """:raises StorageError: if the folder cannot be written."""
        path = self._ready(key)
        try:
            replace_file(path, data, 0o600)
        except OSError as err:
            raise StorageError("Side area cannot be written", reason=err.strerror) from err

    def delete(self, key: str) -> bool:
        try:
            self.path_for(key).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StorageError("Side area cannot be written", reason=err.strerror) from err

    def put_file(self, key: str, source: str | os.PathLike[str]) -> None:
        """:raises StorageError: if the folder cannot be written."""
        path = self._ready(key)
        try:
            copy_file(source, path, 0o600)
        except OSError as err:
            raise StorageError("Side area cannot be written", reason=err.strerror) from err

    def open(self, key: str) -> BinaryIO | None:
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as err:
            raise StorageError("Side area cannot be read", reason=err.strerror) from err
        handle = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device: not ours
            handle.close()
            return None
        return handle

    def get(self, key: str) -> bytes | None:
        handle = self.open(key)
        if handle is None:
            return None
        with handle:
            return handle.read()

    def size(self, key: str) -> int | None:
        try:
            st = os.stat(self.path_for(key), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str) -> list[str]:
        folder = self.path_for(prefix)
        keys = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                if _SEGMENT.match(entry.name) and entry.is_file(follow_symlinks=False):  # temp files start with "." 
                    keys.append(f"{prefix}/{entry.name}")
        return sorted(keys)
