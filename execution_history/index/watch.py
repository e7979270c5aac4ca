"""Watching the data folder for changes (Linux inotify), so keeping in step costs what changed.

Listing a folder of 100,000 record files takes half a second; with pipelines publishing
all the time the folder's mtime moves before every request, and each request would list
it again. A :class:`FolderWatch` instead reads, without blocking, the names the kernel
reports as created, moved in or out, deleted or written in the folder since the last
look, and the index looks at those files only.

Per process (an inotify descriptor is not shared over a fork: a watch made in another
process is never read) and closed with its owner. Where inotify is missing or refused
(another OS, ``max_user_instances`` used up, a folder that cannot be watched) ``open``
returns None and the index keeps to the folder's mtime and listings. inotify sees what
this machine's kernel does to the folder, not what other hosts do to a network share: on
NFS, SMB, FUSE, Ceph and the like the watch is off too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
import time
import weakref
from pathlib import Path

log = logging.getLogger("execution_history.index")

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: Whatever may change which record files the folder holds or what one says.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#: The watch is no good any more: events were dropped, or the folder itself went away.
_LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ_SIZE = 64 * 1024


#: statfs f_type of file systems other hosts may change behind this kernel's back (NFS, SMB/CIFS,
#: FUSE (sshfs, s3fs, ...), Ceph, 9p, Lustre, GPFS, AFS): there the watch is off.
_SHARED_FILE_SYSTEMS = {0x6969, 0x517B, 0xFF534D42, 0xFE534D42, 0x65735546, 0x00C36400, 0x01021997,
                        0x0BD00BD0, 0x47504653, 0x5346414F}
#: Room for struct statfs (120 bytes on 64-bit Linux); f_type is its first field, a C long.
_STATFS_SIZE = 256


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 - present on Linux (glibc, musl) only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class FolderWatch:
    """The names changed in one folder since the last look (see the module docstring).

    ``created_ns``: when the watch began. A listing of the folder that began after it,
    together with every name read since, accounts for every change; ``primed`` says the
    index has such a listing (the index's business: see ``IndexSync._apply_watch``), and
    ``applied_from_ns`` when the last read the index has applied began.
    """

    def __init__(self, fd: int, folder: Path) -> None:
        self.fd = fd
        self.folder = folder
        self.pid = os.getpid()
        self.created_ns = time.time_ns()
        self.primed = False
        self.lock = threading.Lock()  # one thread reads and applies the names at a time
        #: time.monotonic_ns() when the last read whose names are all indexed began
        self.applied_from_ns = 0
        self._unapplied: set[str] = set()  # names read whose indexing failed: read again next time
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, folder: Path) -> FolderWatch | None:
        """A watch of *folder*, or None where inotify is not to be had (logged once per reason)."""
        if _LIBC is None:
            return None
        if _is_shared(folder):
            _log_once("the data folder is on a network or FUSE file system, whose other hosts' changes inotify"
                      " does not see")
            return None
        fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            _log_once(f"inotify unavailable ({os.strerror(ctypes.get_errno())})")
            return None
        if _LIBC.inotify_add_watch(fd, os.fsencode(folder), MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            if err != errno.ENOENT:  # no folder yet: nothing to say
                _log_once(f"the data folder cannot be watched ({os.strerror(err)})")
            return None
        return cls(fd, folder)

    @property
    def usable(self) -> bool:
        """Open, and made by this process (a forked child must make its own)."""
        return self._finalizer.alive and self.pid == os.getpid()

    def close(self) -> None:
        self._finalizer()

    def put_back(self, names: set[str]) -> None:
        """*names*, from the last read, could not be indexed: the next read reports them again."""
        self._unapplied |= names

    def read(self) -> set[str] | None:
        """The names reported since the last read (and those put back), or None if the watch
        is lost (events were dropped, or the folder was deleted or moved): the caller must
        list the folder again, with a new watch. Never blocks."""
        names, self._unapplied = self._unapplied, set()
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return names
            except OSError as err:
                log.warning("index: reading the folder watch failed (%s); listing instead", err.strerror)
                self.close()
                return None
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & _LOST:
                    self.close()
                    return None
                if length:
                    names.add(os.fsdecode(data[offset:offset + length].rstrip(b"\0")))
                offset += length


def _is_shared(folder: Path) -> bool:
    """Whether *folder* is on a file system in _SHARED_FILE_SYSTEMS (False if that cannot be told)."""
    return fs_type(folder) in _SHARED_FILE_SYSTEMS


def fs_type(folder: Path) -> int | None:
    """statfs's f_type of *folder*'s file system (None if statfs fails or is missing)."""
    statfs = getattr(_LIBC, "statfs", None)
    if statfs is None:
        return None
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if statfs(os.fsencode(folder), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info("index: %s; keeping in step by listing the folder", message)


__all__ = ["FolderWatch"]
