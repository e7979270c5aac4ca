"""RunIndex: a SQLite cache of what listing, filtering, sorting, counting and search need.

The record files stay the source of truth; the index (``.index/runs.sqlite3`` in the data
folder) is rebuilt from them whenever it is missing, corrupt or of another schema
version, and is kept in step with them like this:

- Every request calls :meth:`RunIndex.sync`. It compares the data folder's mtime with the
  one recorded at the last sync (one ``stat``). Adding, deleting or renaming a file in
  the folder changes it, and the next sync lists the folder (names and inodes, no
  ``stat`` per file) and indexes what is new, replaced (another inode) or gone.
- That listing runs under the index's write lock, and only once the folder's mtime is
  older than one clock tick, so a later change always moves the mtime again.
- The tracker publishes through the store only (it takes no index lock and imports no
  index module): its new file moves the folder's mtime, and the next request lists the
  folder (names and inodes) and indexes it.
- Every ``rescan_seconds`` (60) one process stats every file and re-indexes those whose
  size or mtime changed: that catches files edited in place, which leave the folder's
  mtime alone. ``runs reindex`` rebuilds everything at once.
- Runs in progress come from their journals (``journal.py``), looked at about once a second.

Several gunicorn workers and pipeline processes share the index: connections are opened
lazily per process and thread (never before a fork), the database uses a rollback journal
(``journal_mode = TRUNCATE``, not WAL: see ``JOURNAL_MODE``), one process at a time scans (an
``flock`` on a lock file), and writes are ``BEGIN IMMEDIATE`` transactions with a long
busy timeout, retried, so "database is locked" does not reach a client.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import functools
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import journal
from . import records
from .errors import InvalidRecord, RunNotFound, SelectionChanged, StorageError
from .filters import ITEM_SEPARATOR, RunQuery, fold_text, to_key
from .records import is_valid_execution_id, parse_record, parse_timestamp
from .regular import NotARegularFile, read_regular, special_identity
from .storage import Malformed, RunStore, summarize_stats

log = logging.getLogger(__name__)

SCHEMA_VERSION = "8"  # 6: files of the earlier tracker became readable; 7: totals table, sort indexes
#: The index lives in a hidden subfolder of the data folder: SQLite creates and deletes its
#: journal files as connections come and go, which must not touch the data folder's mtime.
INDEX_DIR = ".index"
INDEX_NAME = "runs.sqlite3"
#: How old the folder's mtime must be before it is listed: a change in the same clock tick as
#: the recorded mtime would not move it. Well above Linux's coarse file-time tick (1-10 ms);
#: file systems with coarser times (FAT) are not supported.
RACY_NS = 100_000_000
#: Runs parsed per write transaction while scanning (bounds memory and lock time).
BATCH = 1000
#: How long a write may wait for the lock before it is retried, and for how long in all.
BUSY_TIMEOUT_MS = 30_000
WRITE_DEADLINE_SECONDS = 300.0

#: Summary columns in the order the list API answers them.
SUMMARY_COLUMNS = ("execution_id", "config_name", "timestamp", "status", "execution_mode", "safety_level",
                   "total_execution_time", "items_count", "user_id", "session_id", "taxonomy_version",
                   "last_activity_at")
#: Rows from record files; the others are runs in progress, from their journals.
FILE = "file"
JOURNAL = "journal"

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, as run_text rows of deleted runs stay orphaned
    execution_id TEXT NOT NULL UNIQUE,
    config_name TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    ts_key INTEGER NOT NULL,
    status TEXT NOT NULL,
    execution_mode TEXT,
    safety_level TEXT,
    user_id TEXT,
    session_id TEXT,
    total_execution_time REAL,
    items_count INTEGER NOT NULL,
    taxonomy_version TEXT,
    last_activity_at TEXT,        -- runs in progress: their journal's last write
    source TEXT NOT NULL,         -- 'file' (a record file) or 'journal' (a run in progress)
    inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
);
CREATE TABLE unreadable (
    execution_id TEXT PRIMARY KEY, inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE run_item_types (item_type TEXT, run_id INTEGER, PRIMARY KEY (item_type, run_id)) WITHOUT ROWID;
CREATE TABLE run_models (model TEXT, run_id INTEGER, PRIMARY KEY (model, run_id)) WITHOUT ROWID;
CREATE INDEX run_item_types_run ON run_item_types (run_id);
CREATE INDEX run_models_run ON run_models (run_id);
-- Each filter index ends with the other low-cardinality filter columns, so a combination
-- of filters is counted and paged from the index alone, without visiting table rows.
CREATE INDEX runs_ts ON runs (ts_key, execution_id, config_name, status, user_id, execution_mode, safety_level);
CREATE INDEX runs_config_ts ON runs (config_name, ts_key, execution_id, status, user_id, execution_mode, safety_level);
CREATE INDEX runs_status_ts ON runs (status, ts_key, execution_id, config_name, user_id, execution_mode, safety_level);
CREATE INDEX runs_user_ts ON runs (user_id, ts_key, execution_id, config_name, status, execution_mode, safety_level);
CREATE INDEX runs_session_ts ON runs (session_id, ts_key, execution_id);
CREATE INDEX runs_config_id ON runs (config_name, execution_id);
-- every sort under each common filter (config, status, user): a deep offset walks one index
-- instead of sorting every match
CREATE INDEX runs_config_time ON runs (config_name, total_execution_time, execution_id);
CREATE INDEX runs_config_items ON runs (config_name, items_count, execution_id);
CREATE INDEX runs_status_config ON runs (status, config_name, execution_id);
CREATE INDEX runs_status_time ON runs (status, total_execution_time, execution_id);
CREATE INDEX runs_status_items ON runs (status, items_count, execution_id);
CREATE INDEX runs_user_config ON runs (user_id, config_name, execution_id);
CREATE INDEX runs_user_time ON runs (user_id, total_execution_time, execution_id);
CREATE INDEX runs_user_items ON runs (user_id, items_count, execution_id);
CREATE INDEX runs_time ON runs (total_execution_time, execution_id);
CREATE INDEX runs_items ON runs (items_count, execution_id);
-- Maintained aggregates for stats: record-file runs per (owner, config, status), kept by
-- triggers in the same transaction as the rows, so stats read a few rows instead of
-- scanning every run (owner: user_id, char(0) for none; rows at zero stay, filtered out).
CREATE TABLE run_counts (owner TEXT NOT NULL, config_name TEXT NOT NULL, status TEXT NOT NULL,
    runs INTEGER NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (owner, config_name, status)) WITHOUT ROWID;
CREATE TRIGGER run_counts_insert AFTER INSERT ON runs WHEN NEW.source = 'file' BEGIN
    INSERT INTO run_counts VALUES (COALESCE(NEW.user_id, char(0)), NEW.config_name, NEW.status, 1, NEW.size)
    ON CONFLICT (owner, config_name, status) DO UPDATE SET runs = runs + 1, size = size + excluded.size;
END;
CREATE TRIGGER run_counts_delete AFTER DELETE ON runs WHEN OLD.source = 'file' BEGIN
    UPDATE run_counts SET runs = runs - 1, size = size - OLD.size
    WHERE owner = COALESCE(OLD.user_id, char(0)) AND config_name = OLD.config_name AND status = OLD.status;
END;
CREATE TRIGGER run_counts_update AFTER UPDATE ON runs BEGIN
    SELECT RAISE(ABORT, 'runs rows are replaced, never updated: run_counts would drift');
END;
-- contentless: the text lives in the record files, the index keeps only its search terms
CREATE VIRTUAL TABLE run_text USING fts5(content, content='', tokenize='unicode61 remove_diacritics 2');
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('dir_mtime_ns', NULL), ('full_check_at', 0),
    ('malformed_files', 0), ('malformed_bytes', 0);
"""

_INSERT_RUN = f"""INSERT INTO runs (id, {', '.join(SUMMARY_COLUMNS)}, ts_key, source, inode, size, mtime_ns)
VALUES ({', '.join('?' * (len(SUMMARY_COLUMNS) + 6))})"""
#: Not WAL: in WAL mode every process mmaps the ``-shm`` file, and when anything truncates
#: it under a live server the next access to a mapped page is a SIGBUS that kills the
#: worker (and the others stall on its locks). A rollback journal has no shared memory
#: file; readers take a shared lock for each (short) read, and writers hold the exclusive
#: lock only while committing (``cache_spill`` off: never in the middle of a batch).
#: Nothing keeps a read transaction open for long (``iter_ids`` reads its ids at once).
JOURNAL_MODE = "truncate"
#: SQLite page cache per connection (KiB).
CACHE_KIB = 8 * 1024
#: Below this many files to read, a scan parses them itself; above, worker processes help.
PARALLEL_MIN = 2000
CHUNK = 250


@dataclass(frozen=True)
class IndexedRun:
    """What the index keeps of one readable record file."""

    summary: tuple[Any, ...]        # SUMMARY_COLUMNS
    ts_key: int
    source: str
    item_types: frozenset[str]
    models: frozenset[str]
    text: str
    identity: tuple[int, int, int]  # inode, size, mtime_ns


def extract(record: dict[str, Any], identity: tuple[int, int, int], last_activity_at: str | None = None) -> IndexedRun:
    """Reduce a checked record to what the index keeps (*last_activity_at*: a run in progress)."""
    items = record["items"]
    in_progress = last_activity_at is not None
    return IndexedRun(
        summary=(record["execution_id"], record["config_name"], record["timestamp"], record["status"],
                 record["execution_mode"], record["safety_level"], record["total_execution_time"],
                 len(items), record["user_id"], record["session_id"], record["taxonomy_version"],
                 last_activity_at),
        ts_key=to_key(parse_timestamp(record["timestamp"])),
        source=JOURNAL if in_progress else FILE,
        item_types=frozenset(item["item_type"] for item in items),
        models=frozenset(item["model_used"] for item in items if item["model_used"] is not None),
        # runs in progress are not searched by text: a contentless FTS row cannot be updated
        text="" if in_progress else fold_text(ITEM_SEPARATOR.join(item["content"] for item in items if item["content"])),
        identity=identity,
    )


def read_indexed(path: Path, execution_id: str) -> IndexedRun | tuple[int, int, int] | None:
    """Parse one file for the index: an IndexedRun, its identity if unreadable, None if gone."""
    identity: tuple[int, int, int] | None = None
    for _ in range(3):  # a file replaced while we read it is read again
        try:
            raw, before = read_regular(path)  # never blocks on a FIFO, never reads a device
        except FileNotFoundError:
            return None
        except NotARegularFile as err:  # FIFO, socket, device, folder, dangling symlink
            return err.identity
        except OSError:  # there but unreadable (permissions, I/O error): counted as such
            return special_identity(path)
        identity = (before.st_ino, before.st_size, before.st_mtime_ns)
        try:
            after = os.stat(path)
        except FileNotFoundError:
            return None
        if (after.st_ino, after.st_size, after.st_mtime_ns) != identity:
            continue
        try:
            return extract(parse_record(raw, execution_id), identity)
        except InvalidRecord:
            return identity
    return identity


Parsed = tuple[str, "IndexedRun | tuple[int, int, int] | None"]


def read_chunk(root: str, execution_ids: list[str], naive_timezone: str | None = None) -> list[Parsed]:
    """Parse a chunk of files (runs in a worker process during large scans).

    :param naive_timezone: the parent's naive zone (a spawned worker starts with the default).
    """
    if naive_timezone is not None and naive_timezone != records.naive_timezone():
        records.set_naive_timezone(naive_timezone)
    store = RunStore(root)
    return [(i, read_indexed(store.path_for(i), i)) for i in execution_ids]


def iter_parsed(store: RunStore, execution_ids: list[str]) -> Iterator[list[Parsed]]:
    """Parsed files in chunks, in order; spread over worker processes when there are many.

    Reading and parsing JSON is most of a cold build, and it is CPU-bound: with two
    cores, two spawned workers parse while this process writes to SQLite. At most a few
    chunks wait at once, so memory stays flat whatever the number of files.
    """
    chunks = [execution_ids[i:i + CHUNK] for i in range(0, len(execution_ids), CHUNK)]
    workers = min(os.cpu_count() or 1, 4)
    done = 0
    if len(execution_ids) >= PARALLEL_MIN and workers > 1:
        try:
            # spawn, not fork: this may run in a threaded gunicorn worker
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending: collections.deque = collections.deque()
                for chunk in chunks:
                    pending.append(pool.submit(read_chunk, str(store.root), chunk, records.naive_timezone()))
                    if len(pending) > 2 * workers:
                        yield pending.popleft().result()
                        done += 1
                while pending:
                    yield pending.popleft().result()
                    done += 1
        except (BrokenProcessPool, OSError, RuntimeError) as err:
            # e.g. a __main__ that cannot be imported again by spawn: this process does the rest
            log.warning("index: worker processes failed (%s); parsing in this process", err)
    for chunk in chunks[done:]:
        yield read_chunk(str(store.root), chunk)


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
    def wrapper(self: RunIndex, *args: Any, **kwargs: Any) -> Any:
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


class RunIndex:
    """The SQLite index of one RunStore's folder (``.index/runs.sqlite3`` inside it)."""

    def __init__(self, store: RunStore, rescan_seconds: float = 60.0, stale_after: float = 600.0,
                 running_refresh: float = 1.0, clock: Callable[[], float] = time.time,
                 folder: str | os.PathLike[str] | None = None,
                 journal_dir: str | os.PathLike[str] | None = None) -> None:
        """*folder*: the index folder (``RUN_HISTORY_INDEX_DIR``; default ``<data dir>/.index``);
        *journal_dir*: where runs in progress journal (default ``<data dir>/.journal``)."""
        self.store = store
        self.stale_after = stale_after
        self.running_refresh = running_refresh
        self._journals_checked_at = float("-inf")
        self.journal_dir = Path(journal_dir) if journal_dir is not None else journal.journal_dir(store)
        self.folder = Path(folder) if folder is not None else store.root / INDEX_DIR
        self.path = self.folder / INDEX_NAME
        self.lock_path = self.folder / "scan.lock"
        self.rescan_seconds = rescan_seconds
        self._clock = clock
        self._local = threading.local()

    # ------------------------------------------------------------ connections

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
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT LIKE 'run_text_%'")]
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

    # ------------------------------------------------------------ keeping in step

    def _meta(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    def _dir_mtime(self) -> int | None:
        try:
            return os.stat(self.store.root).st_mtime_ns
        except FileNotFoundError:
            return None

    def _is_current(self, meta: dict[str, Any], dir_mtime: int | None, full: bool) -> bool:
        due = full or self._clock() - float(meta["full_check_at"] or 0) >= self.rescan_seconds
        return not due and meta["dir_mtime_ns"] == dir_mtime

    def sync(self, full: bool = False) -> None:
        """Bring the index in step with the folder (cheap when nothing changed).

        :param full: stat every file now (what happens every ``rescan_seconds`` anyway).
        :raises StorageError: if the index cannot be opened or written.
        """
        try:
            conn = self._connection()
            now = time.monotonic()
            if now - self._journals_checked_at >= self.running_refresh:  # at most once a second a process
                self._journals_checked_at = now
                self._sync_journals(conn)
            if self._is_current(self._meta(conn), self._dir_mtime(), full):
                return
            with self._scan_lock():
                conn = self._connection()  # the index may have been rebuilt meanwhile
                full = full or self._clock() - float(self._meta(conn)["full_check_at"] or 0) >= self.rescan_seconds
                if self._is_current(self._meta(conn), self._dir_mtime(), full):
                    return
                self._scan(conn, full)
        except sqlite3.Error as err:
            raise StorageError("Run index unavailable", reason=str(err)) from err

    def _sync_journals(self, conn: sqlite3.Connection) -> None:
        """Runs in progress as rows with status ``running`` (journals of dead processes are
        recovered by the app's background step, never inside a request: a GET writes no record)."""
        live: dict[str, tuple[Path, os.stat_result]] = {}
        for path in journal.iter_journals(self.journal_dir):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            locked = journal.is_locked(path)
            if locked:
                live[path.name[: -len(journal.SUFFIX)]] = (path, st)
        known = {row[0]: tuple(row[1:]) for row in conn.execute(
            f"SELECT execution_id, inode, size, mtime_ns FROM runs WHERE source = '{JOURNAL}'")}
        changed = [i for i, (_, st) in live.items() if known.get(i) != (st.st_ino, st.st_size, st.st_mtime_ns)]
        gone = [i for i in known if i not in live]
        if not changed and not gone:
            return
        parsed: list[Parsed] = []
        for execution_id in changed:
            path, st = live[execution_id]
            try:
                record = journal.build_record(journal.read_journal(path), status="running")
            except (OSError, InvalidRecord, KeyError, TypeError, ValueError):
                continue
            parsed.append((execution_id, extract(record, (st.st_ino, st.st_size, st.st_mtime_ns),
                                                 last_activity_at=journal.activity_time(st))))

        def work(c: sqlite3.Connection) -> None:
            self._delete(c, gone + [i for i, _ in parsed], source=JOURNAL)
            finished = {row[0] for row in c.execute(
                f"SELECT execution_id FROM runs WHERE source = '{FILE}' AND execution_id IN "
                f"({', '.join('?' * len(parsed))})", [i for i, _ in parsed])}
            self._store_batch(c, [p for p in parsed if p[0] not in finished])  # a record file wins

        self._write(conn, work)

    def rebuild(self) -> None:
        """Throw the index away and build it again from the files (``runs reindex``)."""
        with self._scan_lock():
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
            self._local.conn = None
            self._remove_files()
        self.sync(full=True)

    def _diff(self, conn: sqlite3.Connection, full: bool,
              malformed: Malformed | None = None) -> tuple[list[str], list[str]]:
        """(new or changed ids, removed ids): the folder listed against the index."""
        known: dict[str, tuple[int, int, int]] = {
            row[0]: tuple(row[1:]) for row in conn.execute(
                f"SELECT execution_id, inode, size, mtime_ns FROM runs WHERE source = '{FILE}'"
                " UNION ALL SELECT execution_id, inode, size, mtime_ns FROM unreadable")}
        if full:
            present = {f.execution_id: (f.inode, f.size, f.mtime_ns) for f in self.store.list_files(malformed)}
            stale = [i for i, ident in present.items() if known.get(i) != ident]
        else:
            inodes = self.store.list_inodes(malformed)
            present = inodes
            stale = [i for i, inode in inodes.items() if i not in known or known[i][0] != inode]
        return stale, [i for i in known if i not in present]

    def _settled_dir_mtime(self) -> int | None:
        """The folder's mtime once it is at least one clock tick old.

        A change made in the same tick as the mtime we record would not move it again; so
        we list only after that tick has passed (waiting at most RACY_NS, and only right
        after a change), and any later change gets a later mtime.

        Trackers publish without the index's lock, so under a steady stream of new runs the
        folder may never settle: after waiting one tick we give up and return -1, which no
        folder has, so the state is indexed now and the next request lists again.
        """
        waited = False
        while True:
            mtime = self._dir_mtime()
            age = time.time_ns() - (mtime or 0)
            if mtime is None or age >= RACY_NS:
                return mtime
            if waited:
                return -1
            waited = True
            time.sleep((RACY_NS - age) / 1e9)

    def _scan(self, conn: sqlite3.Connection, full: bool) -> None:
        """Index what changed in the folder, and record the folder mtime that state matches.

        The final look runs under the index's write lock, so no tracker publishes while
        the folder is listed and every change after it moves the mtime. Should many files
        have changed (a cold build), they are indexed first without the lock, in batches,
        so trackers are never held up for long, and then the folder is looked at again.
        """
        first_full, changed = full, 0
        while True:
            with self._transaction(conn):
                dir_mtime = self._settled_dir_mtime()
                malformed = Malformed()
                stale, removed = self._diff(conn, full, malformed)
                if len(stale) <= BATCH:
                    self._delete(conn, removed)
                    self._store_batch(conn, [p for chunk in iter_parsed(self.store, stale) for p in chunk])
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'dir_mtime_ns'", (dir_mtime,))
                    # exec_*.json files whose names are no ids: unreadable records, never opened
                    conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                     [(malformed.count, "malformed_files"), (malformed.size, "malformed_bytes")])
                    if first_full:
                        conn.execute("UPDATE meta SET value = ? WHERE key = 'full_check_at'", (self._clock(),))
                    changed += len(stale) + len(removed)
                    break
            log.info("index catching up: %d new or changed files, %d removed", len(stale), len(removed))
            changed += len(stale) + len(removed)
            if removed:
                self._write(conn, lambda c: self._delete(c, removed))
            pending: list[Parsed] = []
            for parsed in iter_parsed(self.store, stale):
                pending += parsed
                if len(pending) >= BATCH:
                    self._write(conn, lambda c: self._store_batch(c, pending))
                    pending = []
            if pending:
                self._write(conn, lambda c: self._store_batch(c, pending))
            full = False  # the final look only needs the listing
        if changed >= PARALLEL_MIN:  # table statistics, so the planner picks the narrow index
            self._write(conn, lambda c: c.execute("ANALYZE"))

    @staticmethod
    def _delete(conn: sqlite3.Connection, execution_ids: list[str], source: str | None = None) -> None:
        """Drop what is indexed for these ids (only rows of *source*, if given)."""
        only = f" AND source = '{source}'" if source else ""
        for start in range(0, len(execution_ids), CHUNK):
            chunk = execution_ids[start:start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            if source is None:
                conn.execute(f"DELETE FROM unreadable WHERE execution_id IN ({marks})", chunk)
            run_ids = [row[0] for row in conn.execute(
                f"DELETE FROM runs WHERE execution_id IN ({marks}){only} RETURNING id", chunk).fetchall()]
            if run_ids:
                marks = ", ".join("?" * len(run_ids))
                conn.execute(f"DELETE FROM run_item_types WHERE run_id IN ({marks})", run_ids)
                conn.execute(f"DELETE FROM run_models WHERE run_id IN ({marks})", run_ids)

    @_sqlite_errors
    def forget(self, execution_ids: list[str]) -> None:
        """Drop these runs from the index at once, in one write transaction (after a delete), so
        no list, search, stats or export shows them again, whatever the folder's mtime says."""
        self._write(self._connection(), lambda c: self._delete(c, list(execution_ids)))

    def _store_batch(self, conn: sqlite3.Connection, parsed: list[Parsed]) -> None:
        """Index parsed files (unreadable ones as such), replacing what was indexed for them.

        Replacing, because a writer may have written a run through since the scan began.
        """
        self._delete(conn, [execution_id for execution_id, _ in parsed])
        runs = [result for _, result in parsed if isinstance(result, IndexedRun)]
        conn.executemany("INSERT INTO unreadable VALUES (?, ?, ?, ?)",
                         [(i, *result) for i, result in parsed if isinstance(result, tuple)])
        if not runs:
            return
        # ids handed out here, so every table is filled with one executemany
        first = conn.execute("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0) + 1"
                             ).fetchone()[0]
        numbered = list(enumerate(runs, start=first))
        conn.executemany(_INSERT_RUN, [(n, *run.summary, run.ts_key, run.source, *run.identity)
                                       for n, run in numbered])
        # sorted: rows arrive in key order, so the WITHOUT ROWID trees fill page by page
        conn.executemany("INSERT INTO run_item_types VALUES (?, ?)",
                         sorted((t, n) for n, run in numbered for t in run.item_types))
        conn.executemany("INSERT INTO run_models VALUES (?, ?)",
                         sorted((m, n) for n, run in numbered for m in run.models))
        conn.executemany("INSERT INTO run_text (rowid, content) VALUES (?, ?)",
                         [(n, run.text) for n, run in numbered if run.text])


    # ------------------------------------------------------------ reading

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

    @_sqlite_errors
    def query(self, query: RunQuery, user_scope: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of run summaries in the query's order, and how many runs match in all."""
        self.sync()
        conn = self._connection()
        where, params = self._where(query, user_scope)
        total = self._count(conn, where, params)
        # Page over the narrow index first, then fetch the few whole rows (cheap deep offsets).
        rows = conn.execute(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM runs WHERE id IN ("
            f"SELECT r.id FROM runs r WHERE {where} ORDER BY {query.order_sql()} LIMIT ? OFFSET ?)"
            f" ORDER BY {query.order_sql()}",
            [*params, query.limit if query.limit is not None else -1, query.offset]).fetchall()
        return [self._summary(row) for row in rows], total

    def _summary(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A list entry; a run in progress is ``stale`` when nothing was logged for ``stale_after``."""
        summary = dict(zip(SUMMARY_COLUMNS, row))
        activity = summary["last_activity_at"]
        summary["stale"] = activity is not None and (
            self._clock() - dt.datetime.fromisoformat(activity).timestamp() > self.stale_after)
        return summary

    @_sqlite_errors
    def count(self, query: RunQuery, user_scope: str | None = None) -> int:
        """How many runs the query's filters select (ignoring its page)."""
        self.sync()
        return self._count(self._connection(), *self._where(query, user_scope))

    def _count(self, conn: sqlite3.Connection, where: str, params: list[Any]) -> int:
        return self._cached(conn, ("count", where, *params), lambda: conn.execute(
            f"SELECT COUNT(*) FROM runs r WHERE {where}", params).fetchone()[0])

    @_sqlite_errors
    def count_rows(self, query: RunQuery, user_scope: str | None = None) -> tuple[int, int]:
        """Finished runs the query selects (its page applied) and their item rows (a run without
        items: one). Exports hold finished runs only; runs in progress have no record yet."""
        self.sync()
        where, params = self._where(query, user_scope, finished_only=True)
        if query.limit is None and query.offset == 0:  # every match: no need to order them
            sql, args = f"SELECT items_count FROM runs r WHERE {where}", params
        else:
            sql = f"SELECT items_count FROM runs r WHERE {where} ORDER BY {query.order_sql()} LIMIT ? OFFSET ?"
            args = [*params, query.limit if query.limit is not None else -1, query.offset]
        return tuple(self._connection().execute(
            f"SELECT COUNT(*), COALESCE(SUM(MAX(items_count, 1)), 0) FROM ({sql})", args).fetchone())

    def iter_ids(self, query: RunQuery, user_scope: str | None = None) -> Iterator[str]:
        """Every selected finished run's id in the query's order (its page applied).

        One consistent snapshot, read at once: a long export must not hold a read lock (it
        would keep every writer out). The ids are kept packed, ~30 bytes a run.
        """
        self.sync()
        where, params = self._where(query, user_scope, finished_only=True)
        cursor = self._connection().execute(
            f"SELECT r.execution_id FROM runs r WHERE {where} ORDER BY {query.order_sql()} LIMIT ? OFFSET ?",
            [*params, query.limit if query.limit is not None else -1, query.offset])
        packed = bytearray()  # ids are ASCII: bytes take a fraction of a list of str's memory
        while rows := cursor.fetchmany(BATCH):
            packed += ",".join(row[0] for row in rows).encode("ascii") + b","
        cursor.close()  # the statement's read lock goes now, before the first record is read
        start = 0
        while start < len(packed):
            end = packed.find(b",", start)
            yield packed[start:end].decode("ascii")
            start = end + 1

    def state(self) -> dict[str, Any]:
        """``{"index": "ready" | "building", "runs_indexed": N}`` without building anything:
        building until the first scan of the folder has finished (or while the file is missing)."""
        if not self.path.exists():
            return {"index": "building", "runs_indexed": 0}
        try:
            conn = self._connection()
            done = conn.execute("SELECT value FROM meta WHERE key = 'dir_mtime_ns'").fetchone()
            indexed = conn.execute(f"SELECT COUNT(*) FROM runs WHERE source = '{FILE}'").fetchone()[0]
        except (sqlite3.Error, StorageError):
            return {"index": "building", "runs_indexed": 0}
        return {"index": "ready" if done and done[0] is not None else "building", "runs_indexed": indexed}

    def iter_listed_records(self, store: RunStore, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records for ids the index listed, in order, for an export whose count was already given.

        A run that vanished or turned unreadable since is looked at again at once (so lists
        stop showing it) and raises: skipping it would send fewer runs than counted.

        :raises SelectionChanged: when a listed run can no longer be read.
        """
        for execution_id in execution_ids:
            try:
                yield store.load(execution_id)
            except (RunNotFound, InvalidRecord, StorageError) as err:
                self.recheck([execution_id])
                raise SelectionChanged("A run changed while the export was streaming; please retry",
                                       execution_id=execution_id) from err

    def recheck(self, execution_ids: list[str]) -> None:
        """Index these record files as they are now (a load found one gone or unreadable, so
        lists must stop showing it at once). Never raises: the caller's answer stands."""
        ids = [i for i in execution_ids if is_valid_execution_id(i)]
        if not ids:
            return
        try:
            conn = self._connection()
            marks = ", ".join("?" * len(ids))
            # only runs indexed from files: a run in progress keeps its journal row
            filed = [row[0] for row in conn.execute(
                f"SELECT execution_id FROM runs WHERE source = '{FILE}' AND execution_id IN ({marks})"
                f" UNION SELECT execution_id FROM unreadable WHERE execution_id IN ({marks})", ids * 2)]
            if filed:
                parsed = [(i, read_indexed(self.store.path_for(i), i)) for i in filed]
                self._write(conn, lambda c: self._store_batch(c, parsed))
        except (sqlite3.Error, StorageError) as err:
            log.warning("index: could not recheck %s (%s)", ", ".join(ids), err)

    @staticmethod
    def _where(query: RunQuery, user_scope: str | None, finished_only: bool = False) -> tuple[str, list[Any]]:
        where, params = query.filters.where()
        if user_scope is not None:
            where, params = f"({where}) AND r.user_id = ?", [*params, user_scope]
        if finished_only:
            where = f"({where}) AND r.source = '{FILE}'"
        return where, params

    @_sqlite_errors
    def stats(self, user_scope: str | None = None) -> dict[str, Any]:
        """The body of ``/api/runs/stats``, from the index."""
        self.sync()
        conn = self._connection()
        return self._cached(conn, ("stats", user_scope), lambda: self._stats(conn, user_scope))

    @_sqlite_errors
    def runs_per_day(self, days: int = 60, user_scope: str | None = None) -> list[tuple[str, int]]:
        """(UTC day, runs started) for the last *days* days up to the newest run, oldest first."""
        self.sync()
        conn = self._connection()
        scope, params = (f"AND source = '{FILE}' AND user_id = ?", [user_scope]) if user_scope is not None \
            else (f"AND source = '{FILE}'", [])
        newest = conn.execute(f"SELECT MAX(ts_key) FROM runs WHERE 1 {scope}", params).fetchone()[0]
        if newest is None:
            return []
        day_us = 86_400_000_000
        first_day = newest // day_us - days + 1
        rows = dict(conn.execute(
            f"SELECT ts_key / {day_us} AS day, COUNT(*) FROM runs WHERE ts_key >= ? {scope} GROUP BY day",
            [first_day * day_us, *params]).fetchall())
        epoch = dt.date(1970, 1, 1)
        return [((epoch + dt.timedelta(days=d)).isoformat(), rows.get(d, 0))
                for d in range(first_day, first_day + days)]

    #: Columns the pages offer as choices (a fixed list: the name goes into the SQL).
    DISTINCT_COLUMNS = ("execution_mode", "safety_level")

    @_sqlite_errors
    def distinct_values(self, column: str, user_scope: str | None = None) -> list[str]:
        """The values of *column* present in the finished runs (a researcher's own), sorted; for
        the pages' choices (Mode, Safety level)."""
        if column not in self.DISTINCT_COLUMNS:
            raise ValueError(f"not a choice column: {column}")
        self.sync()
        conn = self._connection()
        scope, params = (f"source = '{FILE}' AND user_id = ?", [user_scope]) if user_scope is not None \
            else (f"source = '{FILE}'", [])
        return self._cached(conn, ("distinct", column, user_scope), lambda: [value for (value,) in conn.execute(
            f"SELECT DISTINCT {column} FROM runs WHERE {scope} AND {column} IS NOT NULL ORDER BY 1", params)])

    def _stats(self, conn: sqlite3.Connection, user_scope: str | None) -> dict[str, Any]:
        # record files only (the contract's total_records): runs in progress are listed, not counted here
        scope, params = (f"WHERE source = '{FILE}'", [])
        if user_scope is not None:
            scope, params = f"{scope} AND user_id = ?", [user_scope]
        # counts and sizes from the maintained aggregates (run_counts), not a scan of runs
        counted = "WHERE runs > 0" + (" AND owner = ?" if user_scope is not None else "")
        by_config = dict(conn.execute(f"SELECT config_name, SUM(runs) FROM run_counts {counted} GROUP BY 1", params))
        by_status = dict(conn.execute(f"SELECT status, SUM(runs) FROM run_counts {counted} GROUP BY 1", params))
        size, first, last = conn.execute(
            f"SELECT COALESCE(SUM(size), 0), (SELECT timestamp FROM runs {scope} ORDER BY ts_key LIMIT 1),"
            f" (SELECT timestamp FROM runs {scope} ORDER BY ts_key DESC LIMIT 1) FROM run_counts {counted}",
            params * 3).fetchone()
        unreadable = size_unreadable = 0
        if user_scope is None:  # an unreadable file has no owner: only unscoped stats count it
            unreadable, size_unreadable = conn.execute(
                "SELECT COUNT(*) + (SELECT value FROM meta WHERE key = 'malformed_files'),"
                " COALESCE(SUM(size), 0) + (SELECT value FROM meta WHERE key = 'malformed_bytes')"
                " FROM unreadable").fetchone()
        return summarize_stats(
            storage_dir=str(self.store.root), total_records=sum(by_config.values()),
            total_size_bytes=size + size_unreadable, by_config=by_config, by_status=by_status,
            first_timestamp=first, last_timestamp=last, unreadable_records=unreadable)
