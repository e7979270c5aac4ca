"""The index's SQL schema and what it keeps of a record (extraction, per-file parsing).

Bumping ``SCHEMA_VERSION`` makes every index rebuild itself from the record files.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRecord
from ..filters import ITEM_SEPARATOR, fold_text
from .. import records
from ..records import parse_record, parse_timestamp
from ..regular import NotARegularFile, read_regular, special_identity

SCHEMA_VERSION = "15"  # 6: files of the earlier tracker became readable; 7: totals table, sort indexes;
#                        9: cold builds in two phases (summaries, then text), progress in meta;
#                        10: finished_at kept, total_execution_time stored as the record has it;
#                        12: text_pending and recent_text (a few runs' text, searched apart);
#                        13: text_orphans (a text search's total from the search index alone);
#                        14: run_item_types and run_models keyed by run first (appended to in a build),
#                            runs_running (totals from run_counts);
#                        15: run_text in a file of its own (SEARCH_NAME), text progress there
#: The index lives in a hidden subfolder of the data folder: SQLite creates and deletes its
#: journal files as connections come and go, which must not touch the data folder's mtime.
INDEX_DIR = ".index"
INDEX_NAME = "runs.sqlite3"
#: The large search index, beside it in a database file of its own (attached as ``search``), so
#: a long write to it (a segment merge: 100-650 ms at 100k runs) holds its own lock, not the
#: index's: lists and new runs go on meanwhile.
SEARCH_NAME = "search.sqlite3"
#: Summary columns in the order the list API answers them.
SUMMARY_COLUMNS = (*records.SUMMARY_FIELDS, "last_activity_at")
#: Columns a bulk CSV of run rows reads (records.EXPORT_RUN_FIELDS): the rows come from the
#: index, not from parsing every record file, with the very values the files hold.
RUN_ROW_COLUMNS = records.EXPORT_RUN_FIELDS
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
    finished_at TEXT,
    ts_key INTEGER NOT NULL,
    status TEXT NOT NULL,
    execution_mode TEXT,
    safety_level TEXT,
    user_id TEXT,
    session_id TEXT,
    total_execution_time,         -- no type: an integer in the file stays one (CSV writes "3", not "3.0")
    items_count INTEGER NOT NULL,
    taxonomy_version TEXT,
    last_activity_at TEXT,        -- runs in progress: their journal's last write
    source TEXT NOT NULL,         -- 'file' (a record file) or 'journal' (a run in progress)
    inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
);
CREATE TABLE unreadable (
    execution_id TEXT PRIMARY KEY, inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- keyed by run first: a batch of new runs is appended (their ids grow), not written into one
-- place per value; the filters read the index by value
CREATE TABLE run_item_types (run_id INTEGER, item_type TEXT, PRIMARY KEY (run_id, item_type)) WITHOUT ROWID;
CREATE TABLE run_models (run_id INTEGER, model TEXT, PRIMARY KEY (run_id, model)) WITHOUT ROWID;
CREATE INDEX run_item_types_value ON run_item_types (item_type, run_id);
CREATE INDEX run_models_value ON run_models (model, run_id);
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
-- the runs in progress (a few): counted beside run_counts, which counts record files only
-- (queries.py names it: it is never dropped, not even during a cold build)
CREATE INDEX runs_running ON runs (config_name, status, user_id) WHERE source = 'journal';
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
-- the folded text of runs indexed a few at a time, searched in the small recent_text until a
-- batch is full and moves into search.run_text (sync.py: each write to run_text makes a segment
-- of a large index, and merging its segments is what makes a small write slow); runs with
-- rowid <= search.meta's moved_upto are in run_text already (moved, not yet deleted here)
CREATE TABLE text_pending (rowid INTEGER PRIMARY KEY, content TEXT NOT NULL);
CREATE VIRTUAL TABLE recent_text USING fts5(content, content='', tokenize='unicode61 remove_diacritics 2');
-- runs rows deleted (or replaced: a new id) whose terms may stay in run_text (recent = 0: a
-- contentless table cannot drop them) or in recent_text until its next rebuild (recent = 1), so a
-- text search's total is its matches less the orphans among them (queries.py)
CREATE TABLE text_orphans (rowid INTEGER PRIMARY KEY, recent INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('dir_mtime_ns', NULL), ('full_check_at', 0),
    -- when the last scan's final listing began (wall clock, ns): requests that arrived before
    -- it need no scan of their own (sync.py)
    ('listed_at_ns', 0),
    ('malformed_files', 0), ('malformed_bytes', 0),
    -- a cold build's progress (see sync.py): files to index and indexed in its summaries phase,
    -- then the text phase: runs rows with search.meta's text_after < id <= text_upto have no
    -- text indexed yet
    ('build_total', NULL), ('build_indexed', 0), ('text_upto', NULL), ('text_total', 0);
"""
#: The search database (attached as ``search``). Its own progress, written in the same
#: transactions as its terms: ``moved_upto``, pending text moved in up to that run id;
#: ``text_after`` and ``text_done``, a cold build's text phase (sync.py).
_SEARCH_SCHEMA = """
CREATE TABLE search.meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
-- contentless: the text lives in the record files, the index keeps only its search terms
CREATE VIRTUAL TABLE search.run_text USING fts5(content, content='', tokenize='unicode61 remove_diacritics 2');
INSERT INTO search.meta VALUES ('moved_upto', 0), ('text_after', 0), ('text_done', 0);
"""

_INSERT_RUN = f"""INSERT INTO runs (id, {', '.join(SUMMARY_COLUMNS)}, finished_at, ts_key, source, inode, size, mtime_ns)
VALUES ({', '.join('?' * (len(SUMMARY_COLUMNS) + 7))})"""
#: Every secondary index (name, statement) but the partial ones (a few rows each, always there):
#: a cold build creates them after the rows, one sorted pass each, instead of updating
#: eighteen B-trees per inserted row.
SECONDARY_INDEXES = tuple(
    (line.split()[2], line.rstrip(";"))
    for line in _SCHEMA.splitlines() if line.startswith("CREATE INDEX ") and " WHERE " not in line)
#: The secondary index a cold build makes again before lists answer: the default order (newest
#: first). The others are made first thing in its text phase (3 of a 100k-run build's 15 s
#: before lists answered); a list that would use one meanwhile reads the table instead:
#: slower (tens of ms), never wrong.
FIRST_INDEXES = frozenset({"runs_ts"})


def to_key(value: dt.datetime) -> int:
    """A timestamp as integer microseconds since the epoch (the index's sort key)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class IndexedRun:
    """What the index keeps of one readable record file."""

    summary: tuple[Any, ...]        # SUMMARY_COLUMNS
    finished_at: str | None
    ts_key: int
    source: str
    item_types: frozenset[str]
    models: frozenset[str]
    text: bytes                     # UTF-8: a quarter of a str's memory for text with emoji
    identity: tuple[int, int, int]  # inode, size, mtime_ns


def _shared(value: str | None) -> str | None:
    """A value many runs repeat (a config, a status, an item type), as one string object: a
    chunk of parsed runs pickled from a worker carries each such string once, not per run."""
    return value if value is None or len(value) > 64 else sys.intern(value)


def extract(record: dict[str, Any], identity: tuple[int, int, int], last_activity_at: str | None = None,
            text: bool = True) -> IndexedRun:
    """Reduce a checked record to what the index keeps (*last_activity_at*: a run in progress;
    *text*: False for the summaries phase of a cold build, whose text is indexed afterwards)."""
    items = record["items"]
    in_progress = last_activity_at is not None
    return IndexedRun(
        summary=(record["execution_id"], _shared(record["config_name"]), record["timestamp"],
                 _shared(record["status"]), _shared(record["execution_mode"]), _shared(record["safety_level"]),
                 record["total_execution_time"], len(items), _shared(record["user_id"]), record["session_id"],
                 _shared(record["taxonomy_version"]), last_activity_at),
        finished_at=record["finished_at"],
        ts_key=to_key(parse_timestamp(record["timestamp"])),
        source=JOURNAL if in_progress else FILE,
        item_types=frozenset(_shared(item["item_type"]) for item in items),
        models=frozenset(_shared(item["model_used"]) for item in items if item["model_used"] is not None),
        # runs in progress are not searched by text: a contentless FTS row cannot be updated
        # FTS5 reads a bound blob as UTF-8 text: the index holds the same terms as for a str
        text=b"" if in_progress or not text else fold_text(
            ITEM_SEPARATOR.join(item["content"] for item in items if item["content"])).encode(),
        identity=identity,
    )


def read_indexed(path: Path, execution_id: str, text: bool = True) -> IndexedRun | tuple[int, int, int] | None:
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
            return extract(parse_record(raw, execution_id), identity, text=text)
        except InvalidRecord:
            return identity
    return identity


Parsed = tuple[str, "IndexedRun | tuple[int, int, int] | None"]
