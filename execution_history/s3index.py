"""S3RunIndex: the run index of an S3 store, kept in step by listing keys instead of a folder mtime.

A bucket has no cheap "did anything change" marker like a folder's mtime, so each process
looks at most every ``POLL_SECONDS`` (a request in between is answered from the index):

- **New keys.** Keys are ``<prefix>/exec_<UTC start time>_<hex>.json``, so new runs sort
  after old ones: the index lists only the keys after the newest key it has seen, less a
  ``LOOKBACK_SECONDS`` window that absorbs clock skew between pipeline hosts.
- **Change notices.** A run that started long ago (a long run, a recovered one) sorts
  before keys already seen. Every publication (and deletion) through S3Store also leaves
  a notice keyed by the *publication* time (see s3store.py); the index lists the notices
  after the last one it has seen (again less the lookback window) and looks at their runs.
- **Full listing** every ``rescan_seconds`` (and when the index is new): every key with
  its ETag, which catches deletions, objects rewritten or copied in by other tools.
  Notices older than ``NOTICE_KEEP_SECONDS`` are removed then.

So a run published on any host is listed by every API host within about
``POLL_SECONDS`` plus one listing. Records are fetched by a few threads at once (a cold
build is network-bound); an endpoint that does not answer raises StoreUnavailable (503).
"""
from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import InvalidRecord, RunNotFound, StorageError
from .index import BATCH, FILE, PARALLEL_MIN, IndexedRun, Parsed, RunIndex, extract
from .index.connection import index_error, notes_unwritable
from .records import parse_record
from .storage import Malformed

log = logging.getLogger(__name__)

#: How often one process looks at the bucket (the "within 2 s" of API.md 7, with room to spare).
POLL_SECONDS = 0.5
#: Keys and notices this much older than the newest seen are looked at again (clock skew).
LOOKBACK_SECONDS = 300
#: Notices older than this are removed at a full listing (which catches what they said anyway).
NOTICE_KEEP_SECONDS = 3600
#: Records fetched at once.
FETCH_THREADS = 8

_ID_TIME = "%Y%m%d_%H%M%S"
_NOTICE_TIME = "%Y%m%dT%H%M%S%f"


def _before(name: str | None, fmt: str, width: int, prefix: str = "") -> str | None:
    """A listing start *LOOKBACK_SECONDS* before the time at the start of *name*."""
    if not name:
        return None
    try:
        when = dt.datetime.strptime(name[len(prefix):len(prefix) + width], fmt)
    except ValueError:
        return None
    return prefix + (when - dt.timedelta(seconds=LOOKBACK_SECONDS)).strftime(fmt)


class S3RunIndex(RunIndex):
    """The SQLite index of an S3Store, in a local folder of this host (``RUN_HISTORY_INDEX_DIR``)."""

    def __init__(self, store: Any, **options: Any) -> None:
        super().__init__(store, **options)
        self._polled_at = float("-inf")

    @notes_unwritable
    def sync(self, full: bool = False) -> None:
        """Bring the index in step with the bucket (a listing at most every POLL_SECONDS).

        :param full: list every key now (what happens every ``rescan_seconds`` anyway).
        :raises StoreUnavailable: if the endpoint does not answer.
        :raises StorageError: if the index cannot be opened or written.
        """
        try:
            conn = self._connection()
            now = time.monotonic()
            if now - self._journals_checked_at >= self.running_refresh:
                self._journals_checked_at = now
                self._sync_journals(conn)
            if not full and now - self._polled_at < POLL_SECONDS \
                    and self._meta(conn).get("dir_mtime_ns") is not None:  # a new index is filled at once
                return
            with self._scan_lock():
                conn = self._connection()  # the index may have been rebuilt meanwhile
                meta = self._meta(conn)
                if full or meta.get("dir_mtime_ns") is None or \
                        self._clock() - float(meta.get("full_check_at") or 0) >= self.rescan_seconds:
                    self._full_listing(conn)
                else:
                    self._incremental(conn, meta)
            self._polled_at = time.monotonic()
        except sqlite3.Error as err:
            raise index_error(err) from err

    # ------------------------------------------------------------ listings

    def _known(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int, int]]:
        return {row[0]: tuple(row[1:]) for row in conn.execute(
            f"SELECT execution_id, inode, size, mtime_ns FROM runs WHERE source = '{FILE}'"
            " UNION ALL SELECT execution_id, inode, size, mtime_ns FROM unreadable")}

    def _full_listing(self, conn: sqlite3.Connection) -> None:
        # The notices' position first: whatever is published while we list is noticed next time.
        notices = list(self.store.iter_changes())
        malformed = Malformed()
        present = {f.execution_id: (f.inode, f.size, f.mtime_ns)
                   for f in self.store.iter_listing(malformed=malformed)}
        known = self._known(conn)
        stale = [i for i, identity in present.items() if known.get(i) != identity]
        removed = [i for i in known if i not in present]
        if stale or removed:
            log.info("index of %s: %d new or changed records, %d removed", self.store.url, len(stale), len(removed))
        self._index(conn, [(i, present[i]) for i in stale], removed)
        self._remember(conn, last_key=max(present, default=None), last_change=notices[-1][0] if notices else None,
                       full=True, malformed=malformed)
        if len(stale) >= PARALLEL_MIN:  # table statistics, so the planner picks the narrow index
            self._write(conn, lambda c: c.execute("ANALYZE"))
        self._drop_old_notices(notices)

    def _incremental(self, conn: sqlite3.Connection, meta: dict[str, Any]) -> None:
        last_key, last_change = meta.get("s3_last_key"), meta.get("s3_last_change")
        known = self._known(conn)
        listed = {f.execution_id: (f.inode, f.size, f.mtime_ns)
                  for f in self.store.iter_listing(start_after=_before(last_key, _ID_TIME, 15, "exec_"))}
        todo: dict[str, tuple[int, int, int] | None] = {
            i: identity for i, identity in listed.items() if known.get(i) != identity}
        newest_notice = last_change
        for name, execution_id in self.store.iter_changes(start_after=_before(last_change, _NOTICE_TIME, 21)):
            newest_notice = max(newest_notice or name, name)
            if execution_id in todo or execution_id in listed:
                continue
            # a run the index lacks (however old its key), or news of one it has (deleted, replaced)
            if execution_id not in known or (last_change is None or name > last_change):
                todo[execution_id] = None
        self._index(conn, list(todo.items()), [])
        self._remember(conn, last_key=max([k for k in (last_key, *listed) if k], default=None),
                       last_change=newest_notice)

    # ------------------------------------------------------------ fetching and writing

    def _fetch(self, execution_id: str, identity: tuple[int, int, int] | None) -> Parsed:
        """One record read for the index: an IndexedRun, its identity if unreadable, None if gone."""
        try:
            raw, actual = self.store.fetch(execution_id)
        except RunNotFound:
            return execution_id, None
        try:
            return execution_id, extract(parse_record(raw, execution_id), actual)
        except InvalidRecord:
            return execution_id, actual

    def _index(self, conn: sqlite3.Connection, todo: list[tuple[str, tuple[int, int, int] | None]],
               removed: list[str]) -> None:
        """Fetch and index *todo* in batches (each its own short write), and drop *removed*."""
        if removed:
            self._write(conn, lambda c: self._delete(c, removed))
        if not todo:
            return
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for start in range(0, len(todo), BATCH):
                batch = todo[start:start + BATCH]
                parsed = list(pool.map(lambda entry: self._fetch(*entry), batch))
                gone = [i for i, result in parsed if result is None]
                found = [(i, result) for i, result in parsed if result is not None]

                def work(c: sqlite3.Connection) -> None:
                    self._delete(c, gone)
                    self._store_batch(c, found)

                self._write(conn, work)

    def _remember(self, conn: sqlite3.Connection, last_key: str | None, last_change: str | None,
                  full: bool = False, malformed: Malformed | None = None) -> None:
        values = {"dir_mtime_ns": 1, "s3_last_key": last_key, "s3_last_change": last_change}
        if full:
            values["full_check_at"] = self._clock()
        if malformed is not None:
            values.update(malformed_files=malformed.count, malformed_bytes=malformed.size)
        self._write(conn, lambda c: c.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())))

    def _drop_old_notices(self, notices: list[tuple[str, str]]) -> None:
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=NOTICE_KEEP_SECONDS)).strftime(_NOTICE_TIME)
        for name, _ in notices:
            if name >= cutoff:
                break
            try:
                self.store.side.delete(f"changes/{name}")
            except StorageError:  # another host's cleanup, or a hiccup: the next full listing retries
                return


__all__ = ["IndexedRun", "S3RunIndex"]
