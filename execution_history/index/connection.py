"""The index's connection and locking layer: connections per process and thread, write
transactions behind a kernel lock, the scan lock, and throwing a damaged index away.

Connections are opened lazily per process and thread (never before a fork), each with the
search database attached (``search``: the large search index in a file of its own); both
use a rollback journal (``journal_mode = TRUNCATE``, not WAL: see ``JOURNAL_MODE``); one
process at a time scans (an ``flock`` on ``scan.lock``); writes to the index are
transactions behind an ``flock`` on ``write.lock`` (deferred: they lock only the file they
write, so a long write to the search database, behind ``text.lock``, holds up none of them),
with a long busy timeout, so "database is locked" does not reach a client.
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

from ..errors import IndexUnavailable, StorageError
from ..storage import RunStore
from .schema import _SCHEMA, _SEARCH_SCHEMA, FILE, SCHEMA_VERSION

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


#: SQLITE_READONLY, SQLITE_FULL and SQLITE_CANTOPEN (primary result codes): the index must
#: be written (or made) where it cannot be.
_UNWRITABLE_CODES = {8, 13, 14}
_UNWRITABLE = "Run index unavailable: it must be written and its folder cannot be"


def index_error(err: sqlite3.Error) -> IndexUnavailable | StorageError:
    """The error to raise for *err*: IndexUnavailable (503) where the index cannot be written
    (read-only, full, cannot be made), else StorageError (a 500 with a logged cause)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNWRITABLE_CODES:
        return IndexUnavailable(_UNWRITABLE, reason=str(err))
    return StorageError("Run index unavailable", reason=str(err))


def notes_unwritable(sync: Callable[..., None]) -> Callable[..., None]:
    """For ``sync``: ``self.unwritable`` (what /api/health reports) set when it raised
    IndexUnavailable, cleared when it succeeded."""
    @functools.wraps(sync)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            sync(self, *args, **kwargs)
        except IndexUnavailable:
            self.unwritable = True
            raise
        self.unwritable = False

    return wrapper


def _sqlite_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """sqlite3.Error -> :func:`index_error` (StorageError, a clean 500 with a logged cause, or
    IndexUnavailable, a 503), where it enters.

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
                raise index_error(err) from err
            except StorageError as err:  # sync() translated it already
                if attempt == 1 and _is_corrupt(err.__cause__) and self._discard_if_corrupt():
                    continue
                raise
        raise AssertionError("unreachable")

    return wrapper


class SearchReplaced(Exception):
    """The search database in place is not the one a writer of it started on: another thread
    or process threw that one away (found damaged, or deleted) and made it again, with the
    text phase to do again from the first run. The writer stops, so it writes none of its
    progress into the new file and clears no flag of the index about it."""


def _unwritable(err: OSError) -> IndexUnavailable:
    """The error for an index that must be written in a folder that cannot be (or be made): 503."""
    return IndexUnavailable(_UNWRITABLE, reason=err.strerror)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class IndexConnection:
    """Connections, transactions and locks of one index file (a part of RunIndex).

    Expects ``store``, ``folder``, ``path``, ``search_path``, ``lock_path`` and ``_local`` (a
    threading.local), set by RunIndex.__init__.
    """

    store: RunStore
    folder: Path
    path: Path
    search_path: Path
    lock_path: Path
    _local: threading.local
    #: The last sync could not write the index it had to (set by :func:`notes_unwritable`).
    unwritable = False

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (the search database attached), reopened after a fork or
        when either file was replaced."""
        return self._reused("conn", self._inodes, self._open)

    def _inodes(self) -> tuple[int | None, int | None]:
        """The inodes of the index file and of the search database (None: missing)."""
        return _inode(self.path), _inode(self.search_path)

    def _search_connection(self) -> sqlite3.Connection:
        """This thread's connection to the search database alone: its writers (a move of
        pending text, a cold build's text phase; one at a time, under ``text.lock``) lock
        that file only. Reopened like :meth:`_connection`."""
        def open_search() -> sqlite3.Connection:
            self._connection()  # makes the search database's schema, if need be
            conn = sqlite3.connect(self.search_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._tune(conn, "main")
            return conn

        return self._reused("search", lambda: (_inode(self.search_path),), open_search)

    def _reused(self, slot: str, inodes: Callable[[], tuple[int | None, ...]],
                open_: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        """This thread's connection *slot*, made by *open_*: made again after a fork, or when a
        file it uses (*inodes()*, theirs) was replaced or is missing. The slot holds
        (connection, pid, the inodes it found: all None if a file was replaced while it was
        being opened, so it is made again at the next call).

        A connection replaced is not closed here: a caller further up this thread may still
        be using it (its reads then come from the file it opened); it closes when the last
        reference to it goes. One inherited over a fork is closed at once.
        """
        local = self._local
        held = getattr(local, slot, None)
        if held is not None:
            conn, pid, made = held
            current = inodes()
            if pid == os.getpid() and made == current and None not in current:
                return conn
            if pid != os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            setattr(local, slot, None)
        before = inodes()
        conn = open_()
        made = before if inodes() == before else tuple(None for _ in before)
        setattr(local, slot, (conn, os.getpid(), made))
        return conn

    def _attached_search(self) -> int | None:
        """The inode of the search database as this thread's connection found it (call right
        after :meth:`_connection`): what a writer of the search database pins (see
        :meth:`_search_write`)."""
        return self._local.conn[2][1]

    def _check_search(self, pinned: int | None) -> None:
        """:raises SearchReplaced: if the search database in place is not *pinned*."""
        if _inode(self.search_path) != pinned:
            raise SearchReplaced(f"search database {self.search_path} replaced")

    def _open(self) -> sqlite3.Connection:
        """A new connection; a damaged file (corrupt, or not a database at all) is thrown away
        and made again, unless another thread or process replaced it meanwhile (workers that
        start together find the same damage: one repairs it, the others open its new file
        instead of throwing that away too). Busy, locked, read-only: raised as they are."""
        self._ensure_folder()
        for attempt in (1, 2, 3):
            failed_on = self._made_when()
            try:
                return self._open_checked()
            except sqlite3.DatabaseError as err:
                if attempt == 3 or not _is_corrupt(err):
                    raise
                with self._repair_lock():
                    if attempt == 1 and self._made_when() != failed_on:
                        continue  # made again by another thread or process: open that (once: a
                        # file that our own failed open wrote to changes too, and is damaged)
                    damaged = [path for path in (self.path, self.search_path) if not self._healthy(path)]
                    if damaged == [self.search_path]:  # only the search database: the text indexed again
                        log.warning("search database %s unusable (%s); indexing the text again",
                                    self.search_path, err)
                    else:  # the index itself (or both): rebuilt from the files
                        log.warning("index %s unusable (%s); rebuilding it from the record files", self.path, err)
                        damaged = [self.path, self.search_path]
                    self._remove_files(*damaged)
        raise AssertionError("unreachable")

    def _made_when(self) -> tuple[tuple[int, int] | None, ...]:
        """(inode, ctime) of the index file and of the search database (None: missing): a file
        made again has another, even where the file system gives it the inode number of the
        one removed (it reuses a free one at once). Never an open of the files themselves: a
        close of such a descriptor would drop this process's SQLite locks on them."""
        made = []
        for path in (self.path, self.search_path):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                made.append(None)
            else:
                made.append((stat.st_ino, stat.st_ctime_ns))
        return tuple(made)

    def lock_file(self, name: str) -> int:
        """A descriptor of the lock file *name* in the index folder (made if missing).

        :raises IndexUnavailable: if the folder cannot be written (read-only, permissions, full).
        """
        try:
            return os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _unwritable(err) from err

    @contextlib.contextmanager
    def _repair_lock(self) -> Iterator[None]:
        """One repair of a damaged file at a time, across processes (``repair.lock``; taken
        by nothing else, so never nested in another of these locks' holders)."""
        fd = self.lock_file("repair.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute("ATTACH DATABASE ? AS search", (str(self.search_path),))
            self._tune(conn, "main", "search")
            if not self._schema_ok(conn):
                self._write(conn, self._create_schema)
            elif not self._search_ok(conn):
                self._write(conn, self._create_search_schema)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _tune(conn: sqlite3.Connection, *schemas: str) -> None:
        """The settings of *conn* and of each of its databases (*schemas*)."""
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA cache_spill = OFF")
        for schema in schemas:
            if conn.execute(f"PRAGMA {schema}.journal_mode").fetchone()[0] != JOURNAL_MODE:
                try:
                    conn.execute(f"PRAGMA {schema}.journal_mode = {JOURNAL_MODE}")
                except sqlite3.OperationalError as err:  # an older WAL index still open elsewhere
                    log.info("index: journal mode stays for now (%s)", err)
            # The index is a cache of the files: no fsync while holding the lock that keeps
            # readers out (a killed process still leaves it whole; after a power cut a damaged
            # index is found and rebuilt). Measured: p50 1.3 s -> 6 ms at 100 req/s + 4 writers.
            conn.execute(f"PRAGMA {schema}.synchronous = OFF")
            conn.execute(f"PRAGMA {schema}.cache_size = {-CACHE_KIB}")

    @staticmethod
    def _schema_ok(conn: sqlite3.Connection) -> bool:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return False
        return row is not None and row[0] == SCHEMA_VERSION

    @staticmethod
    def _search_ok(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT COUNT(*) FROM search.sqlite_master WHERE name = 'meta'").fetchone()[0] == 1

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Both databases afresh (an index of another schema version, or none yet)."""
        if self._schema_ok(conn):  # another process made it while we waited for the lock
            return
        for schema in ("main", "search"):
            tables = [row[0] for row in conn.execute(  # the search tables' own tables go with them
                f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " AND name NOT LIKE 'run_text_%' AND name NOT LIKE 'recent_text_%'")]
            for table in tables:
                conn.execute(f'DROP TABLE IF EXISTS {schema}."{table}"')
        self._run_script(conn, _SCHEMA + _SEARCH_SCHEMA)

    def _create_search_schema(self, conn: sqlite3.Connection) -> None:
        """The search database lost (deleted, or thrown away as damaged) while the index
        stands: made afresh, and the text of every run indexed again by a text phase (text
        search answers IndexBuilding meanwhile), pending text included."""
        if self._search_ok(conn):
            return
        upto, total = conn.execute(f"SELECT MAX(id), COUNT(*) FROM runs WHERE source = '{FILE}'").fetchone()
        last = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        for table in ("run_text", "meta"):
            conn.execute(f"DROP TABLE IF EXISTS search.{table}")
        self._run_script(conn, _SEARCH_SCHEMA)
        if upto is not None:
            log.warning("index: search database %s missing; indexing the text of %d runs again", self.search_path, total)
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(upto, "text_upto"), (total, "text_total")])
        # pending text is indexed by that text phase (or the run is gone): none is moved twice
        conn.execute("UPDATE search.meta SET value = ? WHERE key = 'moved_upto'", (last or 0,))

    @staticmethod
    def _run_script(conn: sqlite3.Connection, script: str) -> None:
        statement = ""
        for piece in script.split(";"):  # a trigger's body holds ";" too: join until complete
            statement += piece + ";"
            if sqlite3.complete_statement(statement):
                if statement.strip(" \n;"):
                    conn.execute(statement)
                statement = ""

    def _discard_if_corrupt(self) -> bool:
        """Check the index file afresh; if damaged, remove it (the next use rebuilds it).

        :returns: whether it was removed (or already replaced by another process).
        The search database is checked too: damaged alone, it alone is removed (made again
        empty, the text of every run indexed again; lists go on meanwhile).
        """
        with self._scan_lock():
            current = self._inodes()
            held = getattr(self._local, "conn", None)
            if None in current or held is None or current != held[2]:
                return True  # another thread or process replaced a file meanwhile
            if not self._healthy(self.path):
                log.warning("index %s is damaged; rebuilding it from the record files", self.path)
                self._remove_files()
                return True
            if not self._healthy(self.search_path):
                log.warning("search database %s is damaged; indexing the text again", self.search_path)
                self._remove_files(self.search_path)
                return True
            return False

    @staticmethod
    def _healthy(path: Path) -> bool:
        """Whether the database file *path* passes a quick check (a missing one does)."""
        if not path.exists():
            return True
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            try:
                return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            finally:
                conn.close()
        except sqlite3.DatabaseError as err:
            return isinstance(err, sqlite3.OperationalError)  # busy or locked: not damage

    def _remove_files(self, *paths: Path) -> None:
        """Remove these database files (default: the index and the search database).

        :raises IndexUnavailable: if the folder cannot be written.
        """
        for path in paths or (self.path, self.search_path):
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.unlink(f"{path}{suffix}")
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise _unwritable(err) from err

    def _begin(self, conn: sqlite3.Connection) -> int:
        """Take the write lock: a blocking ``flock`` on ``write.lock`` first (the kernel queues
        waiters, where SQLite's busy handler would poll and could starve a reader's scan
        behind a stream of tracker writes), then BEGIN: deferred, so it locks the index file
        alone (BEGIN IMMEDIATE would lock the attached search database too, and wait for a
        move of pending text); the lock holds other writers off already.

        :returns: the lock file's descriptor; :meth:`_transaction` closes it to release.
        """
        self._local.writes = getattr(self._local, "writes", 0) + 1  # invalidates this thread's cache
        fd = self.lock_file("write.lock")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN")
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _begin_immediate(conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried while the database is locked (up to WRITE_DEADLINE_SECONDS)."""
        deadline = time.monotonic() + WRITE_DEADLINE_SECONDS
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                    raise index_error(err) from err
                time.sleep(0.05)

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block succeeds, rolled back otherwise."""
        fd = self._begin(conn)
        try:
            with self._committed(conn):
                yield conn
        finally:
            os.close(fd)  # releases the write lock

    @staticmethod
    @contextlib.contextmanager
    def _committed(conn: sqlite3.Connection) -> Iterator[None]:
        """Commit the transaction *conn* is in if the block succeeds, roll it back otherwise."""
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _search_write(self, work: Callable[[sqlite3.Connection], Any], pinned: int | None) -> Any:
        """Run *work* in a write transaction of the search database alone (the caller holds
        ``text.lock``, which keeps its other writers off); the index's write lock stays free.

        *pinned* is the search database the caller read its progress from
        (:meth:`_attached_search`): if the file in place is another one once the lock is
        taken, nothing is written (and SQLite refuses the writes to one removed later: read-only).

        :raises SearchReplaced: if so.
        """
        self._check_search(pinned)
        conn = self._search_connection()
        if self._local.search[2][0] != pinned:
            raise SearchReplaced(f"search database {self.search_path} replaced")
        try:
            self._begin_immediate(conn)
            with self._committed(conn):
                self._check_search(pinned)
                return work(conn)
        except sqlite3.OperationalError:  # read-only: the file removed under it (SQLite checks)
            self._check_search(pinned)
            raise

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
            raise _unwritable(err) from err

    @contextlib.contextmanager
    def _scan_lock(self) -> Iterator[None]:
        """One scanning process at a time; others wait, then usually find nothing left to do."""
        self._ensure_folder()
        fd = self.lock_file(self.lock_path.name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _try_scan_lock(self) -> int | None:
        """The scan lock if no one holds it: its descriptor (closing it releases), else None."""
        self._ensure_folder()
        fd = self.lock_file(self.lock_path.name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _meta(self, conn: sqlite3.Connection, search: bool = False) -> dict[str, Any]:
        """The index's meta table (*search*: and the search database's, a text phase's progress)."""
        return dict(conn.execute("SELECT key, value FROM meta"
                                 + (" UNION ALL SELECT key, value FROM search.meta" if search else "")).fetchall())

    def _cached(self, conn: sqlite3.Connection, key: tuple, compute: Callable[[], Any]) -> Any:
        """*compute()*, remembered until the index changes (totals and stats repeat while paging).

        ``PRAGMA data_version`` moves when another connection commits; this thread's own
        writes are counted by ``_write``. The index's alone: a write of the search database
        alone (a move's first step) changes no answer (recent_text's moved rows are skipped),
        and every other change of what a search finds writes the index too.
        """
        local = self._local
        generation = (conn.execute("PRAGMA data_version").fetchone()[0], getattr(local, "writes", 0), id(conn))
        if getattr(local, "generation", None) != generation or len(local.cache) > 256:
            local.generation, local.cache = generation, {}
        if key not in local.cache:
            local.cache[key] = compute()
        return local.cache[key]
