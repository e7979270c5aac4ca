"""RunIndex: a SQLite cache of what listing, filtering, sorting, counting and search need.

The record files stay the source of truth; the index (``.index/runs.sqlite3`` in the data
folder, or ``RUN_HISTORY_INDEX_DIR``, its large search index beside it in ``search.sqlite3``)
is rebuilt from them whenever it is missing, corrupt or of another schema version. The
package has one module per concern, and RunIndex puts them together behind the one public API:

- ``schema``: the SQL schema, ``SCHEMA_VERSION``, and what the index keeps of a record
  (``extract``, ``IndexedRun``, ``read_indexed``);
- ``connection``: connections per process and thread, write transactions and locks, a
  damaged index thrown away;
- ``sync``: keeping in step with the store (listing, parsing in worker processes, runs in
  progress from their journals, cold builds in two phases with their progress);
- ``queries``: pages, counts and ids, and the SQL that a ``RunQuery`` selects;
- ``stats``: the stats body and runs per day.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import journal
from ..storage import RunStore
from .connection import BUSY_TIMEOUT_MS, CACHE_KIB, JOURNAL_MODE, WRITE_DEADLINE_SECONDS, IndexConnection
from .queries import IndexQueries, order_sql, where_sql
from .schema import (
    FILE,
    INDEX_DIR,
    INDEX_NAME,
    JOURNAL,
    SCHEMA_VERSION,
    SEARCH_NAME,
    SUMMARY_COLUMNS,
    IndexedRun,
    Parsed,
    extract,
    read_indexed,
    to_key,
)
from .stats import IndexStats
from .sync import BATCH, CHUNK, PARALLEL_MIN, RACY_NS, IndexSync, iter_parsed, read_chunk


class RunIndex(IndexSync, IndexQueries, IndexStats, IndexConnection):
    """The SQLite index of one RunStore's folder (``.index/runs.sqlite3`` inside it)."""

    def __init__(self, store: RunStore, rescan_seconds: float = 60.0, stale_after: float = 600.0,
                 running_refresh: float = 1.0, clock: Callable[[], float] = time.time,
                 folder: str | os.PathLike[str] | None = None,
                 journal_dir: str | os.PathLike[str] | None = None,
                 build_in_background: bool = False, watch: bool = True) -> None:
        """*folder*: the index folder (``RUN_HISTORY_INDEX_DIR``; default ``<data dir>/.index``);
        *journal_dir*: where runs in progress journal (default ``<data dir>/.journal``);
        *build_in_background*: a cold build runs in a thread and requests meanwhile raise
        IndexBuilding (the app), instead of waiting for it (the CLI, scripts); *watch*: False keeps
        in step by listing the folder, without the folder watch (``RUN_HISTORY_FOLDER_WATCH=0``)."""
        self.store = store
        self.stale_after = stale_after
        self.running_refresh = running_refresh
        self._journals_checked_at = float("-inf")
        self.journal_dir = Path(journal_dir) if journal_dir is not None else journal.journal_dir(store)
        self.folder = Path(folder) if folder is not None else store.root / INDEX_DIR
        self.path = self.folder / INDEX_NAME
        self.search_path = self.folder / SEARCH_NAME
        self.lock_path = self.folder / "scan.lock"
        self.rescan_seconds = rescan_seconds
        self.build_in_background = build_in_background
        self._clock = clock
        self._local = threading.local()
        self.watch_folder = watch
        self._watch = None
        self._watch_lock = threading.Lock()
        self._watch_tried_at = float("-inf")


__all__ = [
    "BATCH", "BUSY_TIMEOUT_MS", "CACHE_KIB", "CHUNK", "FILE", "INDEX_DIR", "INDEX_NAME", "JOURNAL", "JOURNAL_MODE",
    "PARALLEL_MIN", "RACY_NS", "SCHEMA_VERSION", "SEARCH_NAME", "SUMMARY_COLUMNS", "WRITE_DEADLINE_SECONDS", "IndexedRun",
    "Parsed", "RunIndex", "RunStore", "extract", "iter_parsed", "order_sql", "read_chunk", "read_indexed",
    "to_key", "where_sql",
]
