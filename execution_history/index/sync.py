"""Keeping the index in step with the store, and building it from scratch.

The record files stay the source of truth; the index is rebuilt from them whenever it is
missing, corrupt or of another schema version, and is kept in step with them like this:

- Every request calls :meth:`IndexSync.sync`. Where the process has a folder watch
  (:mod:`.watch`, inotify on Linux) and a listing began after the watch did, it indexes
  only the files the watch names (each compared with its indexed identity, again inside
  the write transaction, since every worker's watch names the same files), and lists
  nothing: what follows is the way without a watch, or while it cannot be trusted.
- It compares the data folder's mtime with the
  one recorded at the last sync (one ``stat``). Adding, deleting or renaming a file in
  the folder changes it, and the next sync lists the folder (names and inodes, no
  ``stat`` per file) and indexes what is new, replaced (another inode) or gone.
- That listing runs under the index's write lock, and only once the folder's mtime is
  older than one clock tick, so a later change always moves the mtime again.
- One process scans at a time (the scan lock); requests that queue for it while pipelines
  keep publishing share the next scan: a scan whose listing began after a request arrived
  has indexed every run published before it (``listed_at_ns`` in ``meta``), so that
  request answers at once instead of listing the folder once more itself.
- The tracker publishes through the store only (it takes no index lock and imports no
  index module): its new file moves the folder's mtime, and the next request lists the
  folder (names and inodes) and indexes it.
- Every ``rescan_seconds`` (60) one process stats every file and re-indexes those whose
  size or mtime changed: that catches files edited in place, which leave the folder's
  mtime alone (with the folder watch: without the write lock while the files are looked at). ``runs reindex`` rebuilds everything at once.
- Runs indexed after a cold build are searched in a small second FTS5 table,
  ``recent_text``, their text kept in ``text_pending`` until TEXT_PENDING_MAX runs wait and
  move into ``run_text`` at once (in a thread of the app): each write to the large search
  index makes a segment, and every so often merging its segments makes a write slow
  (100-650 ms at 100k runs). The large search index is a database file of its own
  (``search.sqlite3``), so that write holds its lock, not the index's: lists, searches and
  new runs go on meanwhile; only the last step of a move (the moved rows dropped from
  ``text_pending``, ``recent_text`` made again of the rest) takes the index's write lock.
- Runs in progress come from their journals (listed through ``journal.load_running``;
  the index recovers nothing), looked at about once a second.

A cold build (an index that never finished a scan, with more than ``BATCH`` files to read)
runs in two phases: the summaries first (runs, item types, models; every secondary index,
the sort and filter indexes of ``runs`` and the by-value indexes of item types and models,
is dropped and made again, one sorted pass and one transaction each instead of eighteen
B-tree updates per row: the default order's at the end of this phase, the others at the
start of the next), then the text search terms, re-read from the files a slab of runs at a time.
Where its time and memory go (``bench.build_profile``): parsing, in worker processes
(spawned; they import only ``execution_history``); in this process, writing, kept cheap
(item types and models one statement per batch, the strings runs repeat interned by the
workers, the text carried as UTF-8 bytes) and small (only the folder's listing is held
whole, and its ids are dropped as the workers take them).
Lists, filters and stats answer as soon as the first phase is done; text search raises
:class:`IndexBuilding` until the second is. Progress lives in the ``meta`` table, so every
process sees it. With ``build_in_background`` (the app), a request that finds the index
cold starts the build in a thread of its process and every request answers
:class:`IndexBuilding` (503) meanwhile, instead of waiting for it.
"""
from __future__ import annotations

import collections
import ctypes
import fcntl
import itertools
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import orjson

from .. import journal, records
from ..errors import IndexBuilding, IndexUnavailable, StorageError
from ..records import is_valid_execution_id
from ..storage import RECORD_SUFFIX, Malformed, RunStore
from .connection import SearchReplaced, _sqlite_errors, index_error, notes_unwritable
from .schema import (
    _INSERT_RUN, FILE, FIRST_INDEXES, JOURNAL, SECONDARY_INDEXES, IndexedRun, Parsed, extract, read_indexed,
)
from .watch import FolderWatch

log = logging.getLogger("execution_history.index")

#: How old the folder's mtime must be before it is listed: a change in the same clock tick as
#: the recorded mtime would not move it. Well above Linux's coarse file-time tick (1-10 ms);
#: file systems with coarser times (FAT) are not supported.
RACY_NS = 100_000_000
#: Runs parsed per write transaction while scanning (bounds memory and lock time).
BATCH = 1000
#: Below this many files to read, a scan parses them itself; above, worker processes help.
PARALLEL_MIN = 2000
CHUNK = 250
#: A cold build's text phase: runs listed from the index at once, and the folded text kept
#: before it is written (UTF-8 bytes; one transaction each), so memory stays flat whatever the corpus.
TEXT_SLAB = 5000
TEXT_BATCH_BYTES = 4_000_000
#: Runs indexed after a cold build are searched in ``recent_text`` until TEXT_PENDING_MAX
#: runs wait (then moved into the search index in a thread of the app, TEXT_MOVE_BATCH runs,
#: one segment of it, per transaction of the search database).
TEXT_PENDING_MAX = 500
TEXT_MOVE_BATCH = 5000

#: prctl option (<linux/prctl.h>): the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


def read_chunk(root: str, execution_ids: list[str], naive_timezone: str | None = None,
               text: bool = True) -> list[Parsed]:
    """Parse a chunk of files (runs in a worker process during large scans).

    :param naive_timezone: the parent's naive zone (a spawned worker starts with the default).
    :param text: False: leave the search text out (the summaries phase of a cold build).
    """
    if naive_timezone is not None and naive_timezone != records.naive_timezone():
        records.set_naive_timezone(naive_timezone)
    store = RunStore(root)
    return [(i, read_indexed(store.path_for(i), i, text=text)) for i in execution_ids]


def die_with_parent(parent: int) -> None:
    """Where a parse worker starts: it is killed with the process that started it (Linux's
    ``PR_SET_PDEATHSIG``), so a server killed mid-build leaves no orphans parsing on."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends when its work queue closes
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def iter_parsed(store: RunStore, execution_ids: Iterable[str], text: bool = True,
                total: int | None = None) -> Iterator[list[Parsed]]:
    """Parsed files in chunks, in order; spread over worker processes when there are many.

    Reading and parsing JSON is most of a cold build, and it is CPU-bound: with two
    cores, two spawned workers parse while this process writes to SQLite. At most a few
    chunks wait at once, so memory stays flat whatever the number of files. The ids are
    taken as they are needed (*total*: how many there are, when they are no list).
    """
    ids = iter(execution_ids)
    count = len(execution_ids) if total is None else total  # type: ignore[arg-type]
    chunks = iter(lambda: list(itertools.islice(ids, CHUNK)), [])
    workers = min(os.cpu_count() or 1, 4)
    if count >= PARALLEL_MIN and workers > 1:
        left: list[list[str]] = []  # chunks taken but not parsed when the workers fail
        pending: collections.deque = collections.deque()
        try:
            # spawn, not fork: this may run in a threaded gunicorn worker
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                for chunk in chunks:
                    pending.append([chunk, None])  # in flight from here on, even if submit fails
                    pending[-1][1] = pool.submit(read_chunk, str(store.root), chunk, records.naive_timezone(), text)
                    if len(pending) > 2 * workers:
                        yield pending[0][1].result()
                        pending.popleft()
                while pending:
                    yield pending[0][1].result()
                    pending.popleft()
        except (BrokenProcessPool, OSError, RuntimeError) as err:
            # e.g. a __main__ that cannot be imported again by spawn: this process does the rest
            log.warning("index: worker processes failed (%s); parsing in this process", err)
            left = [chunk for chunk, _ in pending]
        for chunk in left:
            yield read_chunk(str(store.root), chunk, text=text)
    for chunk in chunks:
        yield read_chunk(str(store.root), chunk, text=text)


def _identity_of(result: IndexedRun | tuple[int, int, int] | None) -> tuple[int, ...] | None:
    """The identity a parsed file is indexed with (None: the file is gone)."""
    return result.identity if isinstance(result, IndexedRun) else result


def _drain(ids: list[str]) -> Iterator[str]:
    """The items of *ids* in order, each dropped from the list as it is handed out (the ids
    of a cold build's files are not all kept until its end)."""
    ids.reverse()
    while ids:
        yield ids.pop()


def _if_not_exists(statement: str) -> str:
    return statement.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1)


class IndexSync:
    """Keeping the index in step with its store (a part of RunIndex)."""

    store: RunStore
    folder: Path
    rescan_seconds: float
    running_refresh: float
    journal_dir: Path
    build_in_background: bool
    _journals_checked_at: float
    watch_folder: bool
    _watch: FolderWatch | None
    _watch_lock: threading.Lock
    _watch_tried_at: float

    def _dir_mtime(self) -> int | None:
        try:
            return os.stat(self.store.root).st_mtime_ns
        except FileNotFoundError:
            return None

    def _is_current(self, meta: dict[str, Any], dir_mtime: int | None, full: bool) -> bool:
        due = full or self._clock() - float(meta["full_check_at"] or 0) >= self.rescan_seconds
        return not due and meta["dir_mtime_ns"] == dir_mtime

    @notes_unwritable
    def sync(self, full: bool = False) -> None:
        """Bring the index in step with the folder (cheap when nothing changed).

        :param full: stat every file now (what happens every ``rescan_seconds`` anyway).
        :raises IndexBuilding: with ``build_in_background``, while a cold build's summaries
            are being indexed (by this process or another).
        :raises StorageError: if the index cannot be opened or written.
        :raises IndexUnavailable: if it must be written and its folder cannot be (read-only, full).
        """
        arrived, arrived_mono = time.time_ns(), time.monotonic_ns()
        try:
            conn = self._connection()
            now = time.monotonic()
            if now - self._journals_checked_at >= self.running_refresh:  # at most once a second a process
                self._journals_checked_at = now
                self._sync_journals(conn)
            meta = self._meta(conn)
            if meta["text_upto"] is not None:  # a cold build's text phase to do (or to resume)
                self._start_text_phase()
            if not full and self._apply_watch(conn, meta, arrived_mono):
                return
            if self._is_current(meta, self._dir_mtime(), full):
                return
            if self.build_in_background and not full and meta["dir_mtime_ns"] is None:
                self._sync_cold(conn)
                return
            with self._scan_lock():
                conn = self._connection()  # the index may have been rebuilt meanwhile
                meta = self._meta(conn)
                full = full or self._clock() - float(meta["full_check_at"] or 0) >= self.rescan_seconds
                if self._is_current(meta, self._dir_mtime(), full):
                    return
                if not full and int(meta.get("listed_at_ns") or 0) > arrived:
                    # Coalesced: a scan that listed the folder after this request arrived has
                    # finished, so it indexed every run published before; under a steady
                    # stream of new runs, waiting requests share one scan instead of each
                    # doing their own in turn.
                    return
                self._scan(conn, full)
            self._move_pending_text_soon(conn)
            if not self.build_in_background:
                self._index_text()  # a cold build's second phase, here and now
        except sqlite3.Error as err:
            raise index_error(err) from err

    # ------------------------------------------------------------ the folder watch

    def start_watch(self) -> None:
        """Watch the data folder from now on, where the watch is on and to be had (a gunicorn
        worker calls this at boot, before its first request). An edit in place of a file the
        index has is seen by a watch begun before it; one made earlier only by the periodic
        check of every file, as without a watch."""
        self._folder_watch()

    def _folder_watch(self) -> FolderWatch | None:
        """This process's watch of the data folder (made at most once a second until it works)."""
        if not self.watch_folder:
            return None
        watch = self._watch
        if watch is not None and watch.usable:
            return watch
        with self._watch_lock:
            watch = self._watch
            if watch is not None and watch.usable:
                return watch
            now = time.monotonic()
            if now - self._watch_tried_at < 1.0:  # the last try failed
                return None
            self._watch = FolderWatch.open(self.store.root)
            if self._watch is None:
                self._watch_tried_at = now
            return self._watch

    def _apply_watch(self, conn: sqlite3.Connection, meta: dict[str, Any], arrived: int) -> bool:
        """Keep in step through the folder watch: index the files whose names it reported.

        Only once a listing that began after the watch has finished (``listed_at_ns``, by
        any process): that listing and the names read since account for every change, so
        the folder is not listed again, however often its mtime moves. So is a folder whose
        mtime, looked at after the watch began, is still the one the last listing recorded
        (nothing changed since). False: no usable watch yet (or it was lost), and the caller
        goes by the folder's mtime.

        Requests that waited for the watch while another thread applied its names need no read
        of their own when that read began after they arrived (*arrived*, ``monotonic_ns``): it
        saw every change made before. Under a steady stream of new runs, the requests waiting
        share one read and one write instead of each doing its own in turn.
        """
        watch = self._folder_watch()
        if watch is None or meta["dir_mtime_ns"] is None:
            return False
        if not watch.primed:
            if int(meta.get("listed_at_ns") or 0) < watch.created_ns and self._dir_mtime() != meta["dir_mtime_ns"]:
                return False
            watch.primed = True
        with watch.lock:  # a request arriving meanwhile waits: the names read may be the run it wants
            if watch.applied_from_ns > arrived:
                return True
            began = time.monotonic_ns()
            names = watch.read()
            if names is None:  # events dropped, or the folder went: list it again, with a new watch
                log.info("index: the folder watch was lost; listing the folder")
                return False
            ids = [name[: -len(RECORD_SUFFIX)] for name in names
                   if name.startswith("exec_") and name.endswith(RECORD_SUFFIX)]
            if not all(map(is_valid_execution_id, ids)):
                return False  # a record file whose name is no id: counted by a listing only
            if ids:
                try:
                    self._index_changed(conn, ids)
                except BaseException:  # not indexed (disk full, read-only, busy): named again next time
                    watch.put_back(names)
                    raise
            watch.applied_from_ns = began
        if self._clock() - float(meta["full_check_at"] or 0) >= self.rescan_seconds:
            self._check_every_file()
        return True

    def _index_changed(self, conn: sqlite3.Connection, execution_ids: list[str]) -> None:
        """Index these files as they are now, those whose identity differs from the index's.

        Every worker's watch names the same files: the identities are compared again inside
        the write transaction, so a file another worker indexed meanwhile is not written twice.
        """
        stale = [i for i, ident in self._identities(conn, execution_ids).items() if ident != self.store.identity(i)]
        if not stale:
            return
        parsed = [p for chunk in iter_parsed(self.store, stale) for p in chunk]

        def store(c: sqlite3.Connection) -> None:
            known = self._identities(c, stale)
            self._store_batch(c, [(i, result) for i, result in parsed if known[i] != _identity_of(result)])

        self._write(conn, store)
        self._move_pending_text_soon(conn)

    @staticmethod
    def _identities(conn: sqlite3.Connection, execution_ids: list[str]) -> dict[str, tuple[int, ...] | None]:
        """Each id's identity as indexed from its file (None: not indexed)."""
        known: dict[str, tuple[int, ...] | None] = dict.fromkeys(execution_ids)
        for start in range(0, len(execution_ids), CHUNK):
            chunk = execution_ids[start:start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            known.update((row[0], tuple(row[1:])) for row in conn.execute(
                f"SELECT execution_id, inode, size, mtime_ns FROM runs WHERE source = '{FILE}' AND execution_id IN"
                f" ({marks}) UNION ALL SELECT execution_id, inode, size, mtime_ns FROM unreadable"
                f" WHERE execution_id IN ({marks})", chunk * 2))
        return known

    def _check_every_file(self) -> None:
        """The periodic check of every file's size and mtime, with the folder watch on (edits in
        place made before the watch began): by one process, in a thread of its own in the app,
        so no request waits for it; and without the index's write lock while every file is
        looked at (half a second at 100k runs, in which no other process could index a run):
        the files that differ are indexed afterwards like names the watch reported, each
        compared again in the write transaction."""
        fd = self._try_scan_lock()
        if fd is None:  # another process scans
            return

        def check() -> None:
            conn = self._connection()
            if self._clock() - float(self._meta(conn)["full_check_at"] or 0) < self.rescan_seconds:
                return
            checked_at = self._clock()
            stale, removed = self._diff(conn, full=True)
            if stale or removed:
                self._index_changed(conn, stale + removed)
            self._write(conn, lambda c: c.execute("UPDATE meta SET value = ? WHERE key = 'full_check_at'",
                                                  (checked_at,)))

        self._beside_requests(fd, check, "index-check")

    def _beside_requests(self, fd: int, work: Callable[[], None], name: str) -> None:
        """*work* holding the lock *fd* (closed when it ends): in a thread named *name* in the
        app, so no request waits for it, else here and now."""
        def run() -> None:
            try:
                work()
            finally:
                os.close(fd)

        if not self.build_in_background:
            run()
            return

        def logged() -> None:
            try:
                run()
            except Exception:  # noqa: BLE001 - a thread has no caller; the next request tries again
                log.exception("index: %s failed; the next request tries again", name)

        try:
            threading.Thread(target=logged, name=name, daemon=True).start()
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------ cold builds

    def _sync_cold(self, conn: sqlite3.Connection) -> None:
        """An index that never finished a scan: a short scan is done here; a long one (more
        than BATCH files) is started in a thread of this process, holding the scan lock, and
        IndexBuilding raised, as it is by every process until its summaries are in."""
        fd = self._try_scan_lock()
        while fd is None:  # someone scans: a cold build (then answer at once) or a short first scan
            meta = self._meta(conn)
            if meta["build_total"] is not None:
                raise self._building(meta)
            if meta["dir_mtime_ns"] is not None:  # that scan finished meanwhile
                return self.sync()
            time.sleep(0.02)  # a short scan (at most BATCH files, one transaction): wait for it
            fd = self._try_scan_lock()
        handed_over = False
        try:
            conn = self._connection()  # the index may have been rebuilt meanwhile
            meta = self._meta(conn)
            if meta["dir_mtime_ns"] is not None:  # built by another process meanwhile
                if not self._is_current(meta, self._dir_mtime(), False):
                    self._scan(conn, False)
                return None
            listed = self._diff(conn, full=True)  # handed to the build: listed once, not twice
            files = len(listed[0])
            if files <= BATCH:
                self._scan(conn, True)
                return None
            self._write(conn, lambda c: c.executemany("UPDATE meta SET value = ? WHERE key = ?", [
                (files, "build_total"), (0, "build_indexed")]))
            thread = threading.Thread(target=self._build_in_background, args=(fd, listed), name="index-build",
                                      daemon=True)
            thread.start()
            handed_over = True
            log.info("index: cold build of %d files started in the background", files)
            raise self._building(self._meta(conn))
        finally:
            if not handed_over:
                os.close(fd)  # releases the scan lock

    def _build_in_background(self, fd: int, listed: tuple[list[str], list[str]]) -> None:
        """The thread of a cold build: summaries under the scan lock (*fd*), then the text.
        *listed*: the folder's first listing against the index, made under that lock."""
        try:
            try:
                self._scan(self._connection(), True, listed)
            finally:
                os.close(fd)  # releases the scan lock: lists work from here on
            self._index_text()
        except Exception:  # noqa: BLE001 - a thread has no caller; the next request starts it again
            log.exception("index: background build failed; the next request resumes it")

    @staticmethod
    def _building(meta: dict[str, Any]) -> IndexBuilding:
        """IndexBuilding with a cold build's progress, read from *meta* (``_meta(conn, search=True)``)."""
        if meta["dir_mtime_ns"] is None:
            return IndexBuilding(
                f"The run index is being built: indexing {meta['build_indexed'] or 0} of {meta['build_total'] or 0} runs",
                phase="summaries", indexed=int(meta["build_indexed"] or 0), total=int(meta["build_total"] or 0))
        return IndexBuilding(
            f"Text search is being built: indexing {meta['text_done'] or 0} of {meta['text_total'] or 0} runs",
            phase="text", indexed=int(meta["text_done"] or 0), total=int(meta["text_total"] or 0))

    def _check_text_ready(self, conn: sqlite3.Connection) -> None:
        """:raises IndexBuilding: while a cold build's text phase has runs left to index."""
        if self._meta(conn)["text_upto"] is not None:
            raise self._building(self._meta(conn, search=True))

    def _move_pending_text(self) -> int:
        """Move the pending text (of runs still indexed) into the search database's run_text;
        returns how many runs' text was taken. The caller holds ``text.lock``.

        TEXT_MOVE_BATCH runs per transaction of the search database alone, each noting how
        far it got (``moved_upto``: searches skip recent_text's rows up to there, so no run
        is found twice); then one short write of the index drops the pending rows moved and
        makes recent_text again of those left. A move cut short (a killed process) is
        finished by the next. One that finds the search database replaced stops (see
        SearchReplaced): the new file's text phase indexes that text.
        """
        conn = self._connection()
        pinned = self._attached_search()
        moved = 0
        try:
            while True:
                upto = conn.execute("SELECT value FROM search.meta WHERE key = 'moved_upto'").fetchone()[0]
                rows = conn.execute("SELECT p.rowid, p.content, EXISTS (SELECT 1 FROM runs WHERE id = p.rowid)"
                                    " FROM text_pending AS p WHERE p.rowid > ? ORDER BY p.rowid LIMIT ?",
                                    (upto, TEXT_MOVE_BATCH)).fetchall()
                if rows:
                    self._search_write(lambda search, rows=rows: self._store_moved(search, rows), pinned)
                    moved += len(rows)
                if len(rows) < TEXT_MOVE_BATCH:
                    break
            if conn.execute("SELECT EXISTS (SELECT 1 FROM text_pending WHERE rowid <="
                            " (SELECT value FROM search.meta WHERE key = 'moved_upto'))").fetchone()[0]:
                self._write(conn, lambda c: (self._check_search(pinned), self._drop_moved(c)))
        except SearchReplaced as err:
            log.info("index: %s during a move of pending text; the text phase indexes it", err)
        return moved

    @staticmethod
    def _store_moved(search: sqlite3.Connection, rows: list[tuple[int, str, int]]) -> None:
        """Pending text (rowid, text, whether the run is still indexed) into run_text: one
        segment of the search index for them all."""
        # plain VALUES: an INSERT ... SELECT into the FTS5 table, one row per execution,
        # took 30 times as long at 100k runs (11 s for 500 runs)
        search.executemany("INSERT INTO run_text (rowid, content) VALUES (?, ?)",
                           [(i, text) for i, text, indexed in rows if indexed])
        search.execute("UPDATE meta SET value = ? WHERE key = 'moved_upto'", (rows[-1][0],))

    @staticmethod
    def _drop_moved(conn: sqlite3.Connection) -> None:
        """The last step of a move, in a write of the index: the pending rows now in run_text
        go, and recent_text is made again of the text still pending."""
        upto = conn.execute("SELECT value FROM search.meta WHERE key = 'moved_upto'").fetchone()[0]
        conn.execute("DELETE FROM text_pending WHERE rowid <= ?", (upto,))
        # runs deleted since their text moved are orphans of run_text now (a run deleted
        # before has no terms there: such a row is never joined); recent_text will hold none
        conn.execute("UPDATE text_orphans SET recent = 0 WHERE recent = 1 AND rowid <= ?", (upto,))
        conn.execute("DELETE FROM text_orphans WHERE recent = 1")
        conn.execute("INSERT INTO recent_text (recent_text) VALUES ('delete-all')")
        conn.execute("INSERT INTO recent_text (rowid, content) SELECT rowid, content FROM text_pending")

    def _move_pending_text_soon(self, conn: sqlite3.Connection) -> None:
        """Once TEXT_PENDING_MAX runs' text waits, move it (in a thread of the app; one process
        at a time, under the text lock), so it never piles up where no one searches."""
        if conn.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM text_pending LIMIT {TEXT_PENDING_MAX})"
                        ).fetchone()[0] < TEXT_PENDING_MAX:
            return
        fd = self._try_text_lock()
        if fd is None:  # a text phase or another mover is at it
            return
        self._beside_requests(fd, self._move_pending_text, "index-text-pending")

    def _start_text_phase(self) -> None:
        """Resume a text phase no process is running (its builder died): here, or in a thread."""
        fd = self._try_text_lock()
        if fd is None:
            return
        if self.build_in_background:
            threading.Thread(target=self._index_text, args=(fd,), name="index-text", daemon=True).start()
        else:
            self._index_text(fd)

    def _try_text_lock(self) -> int | None:
        fd = self.lock_file("text.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _index_text(self, fd: int | None = None) -> None:
        """A cold build's second phase: first the secondary indexes its first phase left to it
        (see FIRST_INDEXES) and the table statistics, then the search text of the runs its first
        phase indexed without (ids up to ``text_upto``), read again from their files, in batches.

        One process at a time (``text.lock``, *fd* if already taken); scans go on meanwhile:
        a run replaced since has a new row (with its text), a run gone is skipped. A search
        database replaced meanwhile (SearchReplaced) starts it again on the new file.
        """
        if fd is None:
            fd = self._try_text_lock()
            if fd is None:
                return
        try:
            for _ in range(3):  # then the next sync starts it again
                try:
                    return self._text_phase()
                except SearchReplaced as err:
                    log.warning("index: %s during the text phase; indexing the text again", err)
        finally:
            os.close(fd)

    def _text_phase(self) -> None:
        """The work of :meth:`_index_text`, on the search database in place when it starts."""
        conn = self._connection()
        pinned = self._attached_search()
        meta = self._meta(conn, search=True)
        upto, after = meta["text_upto"], int(meta["text_after"] or 0)
        if upto is None:
            return
        if self._make_indexes(conn):  # the secondary indexes the first phase left (FIRST_INDEXES)
            self._write(conn, lambda c: c.execute("ANALYZE"))  # then table statistics, for the planner
        total = conn.execute(f"SELECT COUNT(*) FROM runs WHERE source = '{FILE}' AND id > ? AND id <= ?",
                             (after, upto)).fetchone()[0]
        listed: dict[str, tuple[int, tuple[int, ...]]] = {}  # id -> (row id, identity), for ids in flight
        pending: list[tuple[int, bytes]] = []
        pending_bytes = 0
        done = written = int(meta["text_done"] or 0)
        for parsed in iter_parsed(self.store, self._text_ids(conn, after, upto, listed), text=True, total=total):
            for execution_id, result in parsed:
                run_id, identity = listed.pop(execution_id)
                after = run_id
                if isinstance(result, IndexedRun) and result.identity == identity and result.text:
                    pending.append((run_id, result.text))
                    pending_bytes += len(result.text)
            done += len(parsed)
            # one transaction, and one step of progress, per BATCH runs (or TEXT_BATCH_BYTES of text)
            if done - written >= BATCH or pending_bytes >= TEXT_BATCH_BYTES:
                self._store_text(conn, pending, after, done, pinned)
                pending, pending_bytes, written = [], 0, done
        self._store_text(conn, pending, after, done, pinned)
        self._write(conn, lambda c: (self._check_search(pinned),
                                     c.execute("UPDATE meta SET value = NULL WHERE key = 'text_upto'")))
        log.info("index: text of %d runs indexed", done)

    @staticmethod
    def _text_ids(conn: sqlite3.Connection, after: int, upto: int,
                  listed: dict[str, tuple[int, tuple[int, ...]]]) -> Iterator[str]:
        """Ids of the runs whose text is still to index (row ids *after* < id <= *upto*), read a
        slab at a time (no list of every run in memory), each noted in *listed* until parsed."""
        while rows := conn.execute(
                f"SELECT execution_id, id, inode, size, mtime_ns FROM runs WHERE source = '{FILE}'"
                " AND id > ? AND id <= ? ORDER BY id LIMIT ?", (after, upto, TEXT_SLAB)).fetchall():
            for execution_id, run_id, *identity in rows:
                listed[execution_id] = (run_id, tuple(identity))
                yield execution_id
            after = rows[-1][1]

    def _store_text(self, conn: sqlite3.Connection, texts: list[tuple[int, bytes]], after: int, done: int,
                    pinned: int | None) -> None:
        """Index *texts* (rowid, folded text) of rows still there, and note the progress, in
        one write of the search database *pinned* (the index's write lock stays free for lists)."""
        present = set()
        for start in range(0, len(texts), CHUNK):
            chunk = [run_id for run_id, _ in texts[start:start + CHUNK]]
            present.update(row[0] for row in conn.execute(
                f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk))

        def write(search: sqlite3.Connection) -> None:
            search.executemany("INSERT INTO run_text (rowid, content) VALUES (?, ?)",
                               [(run_id, text) for run_id, text in texts if run_id in present])
            search.executemany("UPDATE meta SET value = ? WHERE key = ?", [(after, "text_after"), (done, "text_done")])

        self._search_write(write, pinned)

    def state(self) -> dict[str, Any]:
        """``{"index": "ready" | "building" | "unavailable", "runs_indexed": N}`` without building
        anything: building until the first scan of the folder has finished (or while the file is
        missing). During a cold build also ``"build": {"phase", "indexed", "total"}``: phase
        ``summaries`` (the index is building) or ``text`` (ready; text search not yet).
        Unavailable: the index cannot be opened or made, or this process's last sync had to
        write it, and its folder cannot be written (read-only, permissions)."""
        if self.unwritable and not self._folder_writable():  # this process's last sync could not write
            return {"index": "unavailable", "runs_indexed": 0}
        if not self.path.exists():
            return {"index": "building" if self._folder_writable() else "unavailable", "runs_indexed": 0}
        try:
            conn = self._connection()
            meta = self._meta(conn, search=True)
            # the record-file runs from the maintained counts: counting the rows took 20 ms at 100k
            indexed = conn.execute("SELECT COALESCE(SUM(runs), 0) FROM run_counts").fetchone()[0]
        except IndexUnavailable:
            return {"index": "unavailable", "runs_indexed": 0}
        except (sqlite3.Error, StorageError) as err:
            unavailable = isinstance(err, sqlite3.Error) and isinstance(index_error(err), IndexUnavailable)
            return {"index": "unavailable" if unavailable else "building", "runs_indexed": 0}
        state: dict[str, Any] = {"index": "ready" if meta["dir_mtime_ns"] is not None else "building",
                                 "runs_indexed": indexed}
        if (meta["dir_mtime_ns"] is None and meta["build_total"] is not None) or meta["text_upto"] is not None:
            state["build"] = dict(self._building(meta).context)
        return state

    def _folder_writable(self) -> bool:
        """Whether the index folder (or, while it is missing, the nearest folder above it)
        can be written: ``access(2)``, which also says no for a read-only mount."""
        folder = self.folder
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return os.access(folder, os.W_OK)

    # ------------------------------------------------------------ keeping in step

    def _sync_journals(self, conn: sqlite3.Connection) -> None:
        """Runs in progress as rows with status ``running`` (journals of dead processes are
        recovered by the app's background step, never inside a request: a GET writes no record)."""
        live: dict[str, os.stat_result] = {}
        for path in journal.iter_journals(self.journal_dir):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if journal.is_locked(path):
                live[path.name[: -len(journal.SUFFIX)]] = st
        known = {row[0]: tuple(row[1:]) for row in conn.execute(
            f"SELECT execution_id, inode, size, mtime_ns FROM runs WHERE source = '{JOURNAL}'")}
        changed = [i for i, st in live.items() if known.get(i) != (st.st_ino, st.st_size, st.st_mtime_ns)]
        gone = [i for i in known if i not in live]
        if not changed and not gone:
            return
        parsed: list[Parsed] = []
        for execution_id in changed:
            st = live[execution_id]
            record = journal.load_running(self.journal_dir, execution_id)  # None: finished or unreadable
            if record is None:
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
            held = getattr(self._local, "conn", None)  # see _reused
            if held is not None:
                held[0].close()
            self._local.conn = None
            self._remove_files()
        self.sync(full=True)

    def _diff(self, conn: sqlite3.Connection, full: bool,
              malformed: Malformed | None = None) -> tuple[list[str], list[str]]:
        """(new or changed ids, removed ids): the folder listed against the index.

        Only the listing is held in memory: the index's rows are streamed past it (no second
        dict of every run). An index with no file rows yet (a cold build) needs no ``stat``
        per file even for a full check: every file is read, and its identity taken then.
        """
        empty = conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM runs WHERE source = '{FILE}')"
                             " AND NOT EXISTS (SELECT 1 FROM unreadable)").fetchone()[0]
        if empty:
            return list(self.store.list_inodes(malformed)), []
        stale: list[str] = []
        removed: list[str] = []
        if full:
            present: dict[str, Any] = {
                f.execution_id: (f.inode, f.size, f.mtime_ns) for f in self.store.list_files(malformed)}
            columns = "inode, size, mtime_ns"
        else:
            present = self.store.list_inodes(malformed)
            columns = "inode"
        for execution_id, *identity in conn.execute(
                f"SELECT execution_id, {columns} FROM runs WHERE source = '{FILE}'"
                f" UNION ALL SELECT execution_id, {columns} FROM unreadable"):
            listed = present.pop(execution_id, None)
            if listed is None:
                removed.append(execution_id)
            elif listed != (tuple(identity) if full else identity[0]):
                stale.append(execution_id)
        stale += present  # listed, not indexed: new
        return stale, removed

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

    def _scan(self, conn: sqlite3.Connection, full: bool,
              listed: tuple[list[str], list[str]] | None = None) -> None:
        """Index what changed in the folder, and record the folder mtime that state matches.

        The final look runs under the index's write lock, so no tracker publishes while
        the folder is listed and every change after it moves the mtime. Should many files
        have changed (a cold build), they are indexed first without the lock, in batches,
        so trackers are never held up for long, and then the folder is looked at again.

        :param listed: (new or changed, removed) ids of a first listing made already, under the
            scan lock (a cold build's, by ``_sync_cold``), used instead of listing again.
        """
        first_full, changed = full, 0
        cold = self._meta(conn)["dir_mtime_ns"] is None  # never built: two phases (module docstring)
        while True:
            if listed is not None and len(listed[0]) > BATCH:  # the final look comes after these
                (stale, removed), listed = listed, None
            else:
                with self._transaction(conn):
                    dir_mtime = self._settled_dir_mtime()
                    listed_at = time.time_ns()
                    malformed = Malformed()
                    stale, removed = self._diff(conn, full, malformed)
                    if len(stale) <= BATCH:
                        if cold:
                            self._end_summaries_phase(conn)
                        self._delete(conn, removed)
                        self._store_batch(conn, [p for chunk in iter_parsed(self.store, stale) for p in chunk])
                        conn.execute("UPDATE meta SET value = ? WHERE key = 'dir_mtime_ns'", (dir_mtime,))
                        conn.execute("INSERT OR REPLACE INTO meta VALUES ('listed_at_ns', ?)", (listed_at,))
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
            if cold:
                self._write(conn, lambda c: self._start_summaries_phase(c, len(stale)))
            pending: list[Parsed] = []
            for parsed in iter_parsed(self.store, _drain(stale), text=not cold, total=len(stale)):
                pending += parsed
                if len(pending) >= BATCH:
                    self._write(conn, lambda c: self._store_batch(c, pending, progress=cold))
                    pending = []
            if pending:
                self._write(conn, lambda c: self._store_batch(c, pending, progress=cold))
            if cold:  # the first index now; the others, and the table statistics, in the text phase
                self._make_indexes(conn, FIRST_INDEXES)
            full = False  # the final look only needs the listing
        if changed >= PARALLEL_MIN and not cold:  # table statistics, so the planner picks the narrow index
            self._write(conn, lambda c: c.execute("ANALYZE"))

    def _make_indexes(self, conn: sqlite3.Connection, names: Iterable[str] | None = None) -> bool:
        """Make the secondary indexes missing (of *names*, default all), each in a write
        transaction of its own (one index's pages in memory at a time); True if any was."""
        wanted = set(names) if names is not None else {name for name, _ in SECONDARY_INDEXES}
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        missing = [statement for name, statement in SECONDARY_INDEXES if name in wanted and name not in present]
        for statement in missing:
            self._write(conn, lambda c, s=statement: c.execute(_if_not_exists(s)))
        return bool(missing)

    @staticmethod
    def _start_summaries_phase(conn: sqlite3.Connection, files: int) -> None:
        """A cold build's first phase: *files* still to index; the secondary indexes go until
        its end (made again in one sorted pass each, much faster)."""
        for name, _ in SECONDARY_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute("UPDATE meta SET value = (SELECT COALESCE(value, 0) FROM meta WHERE key = 'build_indexed') + ?"
                     " WHERE key = 'build_total'", (files,))  # done so far and still to do

    @staticmethod
    def _end_summaries_phase(conn: sqlite3.Connection) -> None:
        """The end of a cold build's first phase (in the transaction that marks the index built):
        the first index made again (if the batches have not: none were dropped if every file
        fitted in one), and the rows indexed so far (all without their text) handed to the
        text phase, which makes the other secondary indexes first (here too if no run was
        indexed: then there is no text phase)."""
        upto, total = conn.execute(f"SELECT MAX(id), COUNT(*) FROM runs WHERE source = '{FILE}'").fetchone()
        for name, statement in SECONDARY_INDEXES:
            if name in FIRST_INDEXES or upto is None:
                conn.execute(_if_not_exists(statement))
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [
            (None, "build_total"), (upto, "text_upto"), (total, "text_total")])

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
                pending = {row[0] for row in conn.execute(
                    f"DELETE FROM text_pending WHERE rowid IN ({marks}) RETURNING rowid", run_ids)}
                conn.executemany("INSERT OR IGNORE INTO text_orphans VALUES (?, ?)",
                                 [(i, int(i in pending)) for i in run_ids])

    @_sqlite_errors
    def forget(self, execution_ids: list[str]) -> None:
        """Drop these runs from the index at once, in one write transaction (after a delete), so
        no list, search, stats or export shows them again, whatever the folder's mtime says."""
        self._write(self._connection(), lambda c: self._delete(c, list(execution_ids)))

    def _store_batch(self, conn: sqlite3.Connection, parsed: list[Parsed], progress: bool = False) -> None:
        """Index parsed files (unreadable ones as such), replacing what was indexed for them.

        Replacing, because a writer may have written a run through since the scan began.
        *progress*: count them in a cold build's progress (``build_indexed``).
        """
        if progress:
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'build_indexed'", (len(parsed),))
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
        conn.executemany(_INSERT_RUN, [(n, *run.summary, run.finished_at, run.ts_key, run.source, *run.identity)
                                       for n, run in numbered])
        self._store_sets(conn, "run_item_types", first, [run.item_types for run in runs])
        self._store_sets(conn, "run_models", first, [run.models for run in runs])
        texts = [(n, run.text) for n, run in numbered if run.text]
        for table in ("text_pending", "recent_text"):  # moved into run_text, a batch at a time, later
            conn.executemany(f"INSERT INTO {table} (rowid, content) VALUES (?, ?)", texts)

    @staticmethod
    def _store_sets(conn: sqlite3.Connection, table: str, first: int, sets: list[frozenset[str]]) -> None:
        """Rows (run id, value) of *table* for runs numbered from *first*, one set of values each.

        One statement per batch: SQLite unfolds a JSON array of arrays itself, about three
        times as fast as an ``executemany`` of a row per value (a cold build writes ~15 per run).
        A value holding U+0000 (JSON functions would cut it there) goes row by row.
        """
        values = orjson.dumps([list(values) for values in sets]).decode()
        if "\\u0000" in values:
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?)",
                             [(n, value) for n, values in enumerate(sets, start=first) for value in values])
            return
        conn.execute(f"INSERT INTO {table} SELECT ? + run.key, value.value"
                     " FROM json_each(?) AS run, json_each(run.value) AS value", (first, values))

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
        except (sqlite3.Error, StorageError, IndexUnavailable) as err:
            log.warning("index: could not recheck %s (%s)", ", ".join(ids), err)
