"""Atomic file writes: a temp file in the same folder, fsynced, then linked or renamed into place.

The one way this project writes a file that readers may look at while it is written
(records, side-area files, the tokens file, the generated secret key): a reader sees
the old file or the whole new one, never a part, even if the writer is killed half-way.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: Temp files start with a dot and end in ``.tmp``: no reader lists them.
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside *path* carrying the writer's pid (so sweeping can tell orphans)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_temp(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """*data* in a new fsynced temp file beside *path*; returns the temp file's path.

    :raises OSError: if it cannot be written (the temp file is removed again).
    """
    temp = temp_path_for(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # whatever the umask
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    return temp


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
        os.link(temp, path)
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
