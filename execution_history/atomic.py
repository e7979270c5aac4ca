"""Atomic file writes: a temp file in the same folder, fsynced, then linked or renamed into place.

The one way this project writes a file that readers may look at while it is written
(records, journals, side-area files, the tokens file, records kept pending): a reader sees
the old file or the whole new one, never a part, even if the writer is killed half-way.
Create-if-absent (:func:`create_file`, a hard link) or replace (:func:`replace_file`,
:func:`copy_file`, a rename); the file and then its folder are fsynced; mode 0o644 unless
the caller says (0o600 for what only the service may read).
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

#: Temp files start with a dot and end in ``.tmp``: no reader lists them.
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside *path* carrying the writer's pid (so sweeping can tell orphans)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def open_temp(path: Path, mode: int = 0o644, *, append: bool = False) -> tuple[Path, int]:
    """A new, empty temp file beside *path* (created exclusively, *mode* whatever the umask),
    open for writing; returns its path and descriptor. *append*: ``O_APPEND`` (a journal).

    :raises OSError: if it cannot be created.
    """
    temp = temp_path_for(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    fd = os.open(temp, flags, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp, fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of *data* to *fd* (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_temp(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """*data* in a new fsynced temp file beside *path*; returns the temp file's path.

    :raises OSError: if it cannot be written (the temp file is removed again).
    """
    temp, fd = open_temp(path, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    return temp


def link_new(temp: Path, path: Path) -> None:
    """Give the file *temp* the name *path* only if that name is free (atomic create-if-absent).

    A hard link: two writers racing, exactly one wins. On a file system without hard links,
    a rename after an existence check (racy only against a second writer of the same name).

    :raises FileExistsError: if *path* exists (nothing changed).
    :raises OSError: if the folder cannot be written.
    """
    try:
        os.link(temp, path)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.rename(temp, path)


def fsync_dir(folder: Path) -> None:
    """Make a folder's new entries durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_file(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write *path* atomically only if it does not exist; False if it does (nothing written).

    The hard link is the atomic create-if-absent: two writers racing, exactly one wins.

    :raises OSError: if the folder cannot be written.
    """
    temp = write_temp(path, data, mode)
    try:
        link_new(temp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    fsync_dir(path.parent)
    return True


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write *path* atomically, replacing what was there.

    :raises OSError: if the folder cannot be written.
    """
    temp = write_temp(path, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def copy_file(source: str | os.PathLike[str], path: Path, mode: int = 0o644) -> None:
    """Write the content of the local file *source* to *path* atomically, replacing what was
    there (streamed: large files welcome).

    :raises OSError: if *source* cannot be read or the folder cannot be written.
    """
    temp, fd = open_temp(path, mode)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def is_writer_alive(pid: int) -> bool:
    """Whether the process whose pid a temp file's name carries still runs (else the file is an orphan)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
