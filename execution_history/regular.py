"""Reading record files without ever blocking on, or reading, something that is not a regular file.

A FIFO named like a record would block a plain ``open()`` until a writer appears (while
the reader holds the scan lock, every worker waits); a device could be read forever. So
every record file is opened with ``O_NONBLOCK`` (a FIFO opens at once, a regular file
ignores the flag) and checked with ``fstat`` on the opened descriptor before any byte is
read: the check and the read concern the same file, whatever is renamed meanwhile.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

__all__ = ["NotARegularFile", "read_regular", "special_identity"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class NotARegularFile(OSError):
    """The name leads to a FIFO, socket, device, folder or nowhere (a dangling symlink).

    ``identity`` is (inode, size, mtime_ns) of what is there, as the index records it.
    """

    def __init__(self, path: str | os.PathLike[str], identity: tuple[int, int, int]) -> None:
        super().__init__(errno.EINVAL, "not a regular file", os.fspath(path))
        self.identity = identity


def special_identity(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of what the name leads to, or of the link itself if it leads
    nowhere; None if nothing has the name. Never opens it."""
    for follow in (True, False):
        try:
            st = os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            continue
        except OSError:  # a symlink loop, a path through a non-folder: look at the link
            continue
        return st.st_ino, st.st_size, st.st_mtime_ns
    return None


def read_regular(path: str | os.PathLike[str],
                 unless: Callable[[os.stat_result], bool] | None = None) -> tuple[bytes | None, os.stat_result]:
    """The whole content of a regular file (symlinks followed) and its ``fstat``.

    *unless*: given the ``fstat`` of the opened file, True means "no need to read it"
    (the caller knows this very file): then the content is None and nothing is read.

    :raises NotARegularFile: for a FIFO, socket, device, folder, dangling or looping symlink.
    :raises FileNotFoundError: if nothing has this name.
    :raises OSError: if the file cannot be read (permissions, I/O errors).
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        identity = special_identity(path)  # a dangling symlink is there, and unreadable
        if identity is None:
            raise
        raise NotARegularFile(path, identity) from None
    except OSError as err:
        # ENXIO: a socket; ELOOP: a symlink loop; ENOTDIR: a path through a file
        if err.errno in (errno.ENXIO, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            identity = special_identity(path)
            if identity is None:
                raise FileNotFoundError(errno.ENOENT, "gone", os.fspath(path)) from None
            raise NotARegularFile(path, identity) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(path, (st.st_ino, st.st_size, st.st_mtime_ns))
        if unless is not None and unless(st):
            return None, st
        chunks = []
        remaining = st.st_size
        while True:
            # a regular file never answers EAGAIN, so O_NONBLOCK changes nothing from here on
            chunk = os.read(fd, max(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)
