"""The index's connection and locking layer: connections per process and thread, write
transactions behind a kernel lock, the scan lock, and throwing a damaged index away.

Connections are opened lazily per process and thread (never before a fork); the database
uses a rollback journal (``journal_mode = TRUNCATE``, not WAL: see ``JOURNAL_MODE``); one
process at a time scans (an ``flock`` on ``scan.lock``); writes are ``BEGIN IMMEDIATE``
transactions behind an ``flock`` on ``write.lock``, with a long busy timeout, retried, so
"database is locked" does not reach a client.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..storage import RunStore
from .schema import _SCHEMA, SCHEMA_VERSION

log = logging.getLogger("execution_history.index")

#: How long a write may wait for the lock before it is retried, and for how long in all.
BUSY_TIMEOUT_MS = 30_000
WRITE_DEADLINE_SECONDS = 300.0
#: Not WAL: in WAL mode every process mmaps the ``-shm`` file, and when anything truncates
#: it under a live server the next access to a mapped page is a SIGBUS that kills the
#: worker (and the others stall on its locks). A rollback journal has no shared memory
#: file; readers take a shared lock for each (short) read, and writers hold the exclusive
#: lock only while committing (``cache_spill`` off: never in the middle of a batch).
#: Nothing keeps a read transaction open for long (``iter_ids`` reads its ids at once).
JOURNAL_MODE = "truncate"
#: SQLite page cache per connection (KiB).
CACHE_KIB = 8 * 1024


#: SQLITE_CORRUPT and SQLITE_NOTADB (primary result codes).
_CORRUPT_CODES = {11, 26}


def _is_corrupt(err: BaseException | None) -> bool:
    """Whether *err* says the index file is damaged (as opposed to busy, locked, full)."""
    if not isinstance(err, sqlite3.DatabaseError) or isinstance(err, sqlite3.OperationalError):
        return False
    code = getattr(err, "sqlite_errorcode", None)
    return code is None or code & 0xFF in _CORRUPT_CODES


def _sqlite_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """sqlite3.Error -> StorageError, where it enters (a clean 500 with a logged cause).

    An index found damaged while serving is thrown away and the call made once more, so
    it answers from a rebuilt index instead of failing until someone runs ``reindex``.
    """
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as err:
                if attempt == 1 and _is_corrupt(err) and self._discard_if_corrupt():
                    continue
                raise StorageError("Run index unavailable", reason=str(err)) from err
            except StorageError as err:  # sync() translated it already
                if attempt == 1 and _is_corrupt(err.__cause__) and self._discard_if_corrupt():
                    continue
                raise
        raise AssertionError("unreachable")

    return wrapper


class IndexConnection:
    """Connections, transactions and locks of one index file (a part of RunIndex).

    Expects ``store``, ``folder``, ``path``, ``lock_path`` and ``_local`` (a threading.local),
    set by RunIndex.__init__.
    """

    store: RunStore
    folder: Path
    path: Path
    lock_path: Path
    _local: threading.local

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, reopened after a fork or when the index file was replaced."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if conn is not None and (local.pid != os.getpid() or local.inode != inode or inode is None):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            conn = None
        if conn is None:
            conn = self._open()
            local.conn, local.pid, local.inode = conn, os.getpid(), os.stat(self.path).st_ino
        return conn

    def _open(self) -> sqlite3.Connection:
        self._ensure_folder()
        try:
            conn = self._open_checked()
        except sqlite3.DatabaseError as err:  # corrupt, or not a database at all: start afresh
            log.warning("index %s unusable (%s); rebuilding it from the record files", self.path, err)
            self._remove_files()
            conn = self._open_checked()
        return conn

    def _open_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != JOURNAL_MODE:
                try:
                    conn.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")
                except sqlite3.OperationalError as err:  # an older WAL index still open elsewhere
                    log.info("index: journal mode stays for now (%s)", err)
            # The index is a cache of the files: no fsync while holding the lock that keeps
            # readers out (a killed process still leaves it whole; after a power cut a damaged
            # index is found and rebuilt). Measured: p50 1.3 s -> 6 ms at 100 req/s + 4 writers.
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("PRAGMA cache_spill = OFF")
            conn.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
            if not self._schema_ok(conn):
                self._write(conn, self._create_schema)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _schema_ok(conn: sqlite3.Connection) -> bool:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return False
        return row is not None and row[0] == SCHEMA_VERSION

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_ok(conn):  # another process made it while we waited for the lock
            return
        tables = [row[0] for row in conn.execute(  # the search tables' own tables go with them
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT LIKE 'run_text_%' AND name NOT LIKE 'recent_text_%'")]
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        statement = ""
        for piece in _SCHEMA.split(";"):  # a trigger's body holds ";" too: join until complete
            statement += piece + ";"
            if sqlite3.complete_statement(statement):
                if statement.strip(" \n;"):
                    conn.execute(statement)
                statement = ""

    def _discard_if_corrupt(self) -> bool:
        """Check the index file afresh; if damaged, remove it (the next use rebuilds it).

        :returns: whether it was removed (or already replaced by another process).
        """
        with self._scan_lock():
            before = getattr(self._local, "inode", None)
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                return True
            if current != before:  # another thread or process replaced it meanwhile
                return True
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                try:
                    healthy = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                finally:
                    conn.close()
            except sqlite3.DatabaseError as err:
                healthy = isinstance(err, sqlite3.OperationalError)  # busy or locked: not damage
            if healthy:
                return False
            log.warning("index %s is damaged; rebuilding it from the record files", self.path)
            self._remove_files()
            return True

    def _remove_files(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _begin(self, conn: sqlite3.Connection) -> int:
        """Take the write lock: a blocking ``flock`` on ``write.lock`` first (the kernel queues
        waiters, where SQLite's busy handler would poll and could starve a reader's scan
        behind a stream of tracker writes), then BEGIN IMMEDIATE, retried if need be.

        :returns: the lock file's descriptor; :meth:`_transaction` closes it to release.
        """
        self._local.writes = getattr(self._local, "writes", 0) + 1  # invalidates this thread's cache
        fd = os.open(self.folder / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self._begin_immediate(conn)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + WRITE_DEADLINE_SECONDS
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                    raise StorageError("Run index unavailable", reason=str(err)) from err
                time.sleep(0.05)

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block succeeds, rolled back otherwise."""
        fd = self._begin(conn)
        try:
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            os.close(fd)  # releases the write lock

    def _write(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any],
               begin: bool = True) -> Any:
        """Run *work* once in a write transaction (only taking the lock is retried)."""
        if not begin:
            return work(conn)
        with self._transaction(conn):
            return work(conn)


    def _ensure_folder(self) -> None:
        with contextlib.suppress(StorageError):  # a read-only data folder is served all the same
            self.store.ensure_root()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError("Index folder cannot be created", reason=err.strerror) from err

    @contextlib.contextmanager
    def _scan_lock(self) -> Iterator[None]:
        """One scanning process at a time; others wait, then usually find nothing left to do."""
        self._ensure_folder()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _try_scan_lock(self) -> int | None:
        """The scan lock if no one holds it: its descriptor (closing it releases), else None."""
        self._ensure_folder()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _meta(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    def _cached(self, conn: sqlite3.Connection, key: tuple, compute: Callable[[], Any]) -> Any:
        """*compute()*, remembered until the index changes (totals and stats repeat while paging).

        ``PRAGMA data_version`` moves when another connection commits; this thread's own
        writes are counted by ``_write``.
        """
        local = self._local
        generation = (conn.execute("PRAGMA data_version").fetchone()[0], getattr(local, "writes", 0), id(conn))
        if getattr(local, "generation", None) != generation or len(local.cache) > 256:
            local.generation, local.cache = generation, {}
        if key not in local.cache:
            local.cache[key] = compute()
        return local.cache[key]
