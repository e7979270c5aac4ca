"""CheckedRecords: a small per-process cache of checked records, by the identity of their file.

Checking a record (``records.check_record``: every field of every item, timestamps parsed,
older files upgraded) costs more than reading and parsing its file, and so does writing
its rows; yet the same runs are read again and again: the newest runs of a config exported
every few seconds, a run opened in the browser. So a checked record is kept, as its compact
JSON bytes, under the identity of the file it came from (inode, size, mtime and ctime of
the opened file); a later read of the unchanged file parses those bytes instead of reading
and checking the file again, and what a writer derived from the record (:func:`derived`:
a run's CSV rows) is kept with it.

- Nothing is trusted that was not checked here: a file that changed in any way (a new
  inode, size, mtime or ctime) is read and checked afresh, and so is every file the first
  time. The identity comes from ``fstat`` on the descriptor the read would use. (The one
  change it cannot see: an edit in place that keeps the size, puts the mtime back and falls
  within the file system's timestamp tick of the previous change, a few ms: no ctime moves.)
- Every reader gets a record of its own (parsed from the bytes, a :class:`LoadedRecord`),
  never a dict shared with another request. A copy of it (``dict(record)``, as pseudonyms
  make) is a plain dict: nothing derived is reused for it.
- Records read in another naive time zone (``records.set_naive_timezone``) are not reused.
- A record is kept the second time its file is read (the first read notes the file's
  identity only, among the last SEEN ids): a bulk export of thousands of runs, each read
  once, pays nothing for it and flushes nothing out.
- What is kept is bounded (``RUN_HISTORY_RECORD_CACHE_MB``, default 4 per process, counted
  as memory: the bytes, the derived text, a fixed overhead per run; 0 turns the cache off),
  the least recently used run dropped first. (The same bulk export of up to SEEN runs made
  twice keeps its runs, and may push others out: that is what least recently used means.)
"""
from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from . import records

#: The default bound, in bytes of memory per process (RUN_HISTORY_RECORD_CACHE_MB: 4).
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

#: How many files read once are remembered (by id and identity), waiting for a second read
#: (about 0.4 MB, besides the bound).
SEEN = 1024
#: What an entry takes besides its bytes (the entry, its identity, its place in the map).
ENTRY_OVERHEAD = 1024

Identity = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def file_identity(st: os.stat_result) -> Identity:
    """What tells one file from another, and from itself changed: inode, size, mtime, ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _Entry:
    """One run's checked record, as kept: valid for one file identity and naive time zone."""

    __slots__ = ("execution_id", "identity", "zone", "blob", "derived", "size")

    def __init__(self, execution_id: str, identity: Identity, zone: str, blob: bytes) -> None:
        self.execution_id = execution_id
        self.identity = identity
        self.zone = zone
        self.blob = blob
        self.derived: dict[Hashable, str] = {}
        self.size = sys.getsizeof(blob) + ENTRY_OVERHEAD


class LoadedRecord(dict):  # type: ignore[type-arg]
    """A record as the store loaded it: a plain dict to every reader and writer, which
    also knows the cache entry of its file (for :func:`derived`)."""

    __slots__ = ("_cache", "_entry")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: a plain dict (no lock to carry)
        return dict, (dict(self),)


def derived(record: dict[str, Any], key: Hashable, make: Callable[[], str]) -> str:
    """``make()``, a text a writer derives from *record* alone (and *key*, which names the
    writer and its options): made once per file for records the store loaded unchanged."""
    if type(record) is not LoadedRecord:
        return make()
    return record._cache._derived(record._entry, key, make)


class CheckedRecords:
    """Checked records by execution id, each valid for one file identity (see module doc)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._seen: OrderedDict[str, Identity] = OrderedDict()  # read once: (id -> identity)
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, execution_id: str, identity: Identity) -> LoadedRecord | None:
        """A fresh copy of the checked record of this file, or None if none is kept."""
        with self._lock:
            entry = self._entries.get(execution_id)
            if entry is None or entry.identity != identity or entry.zone != records.naive_timezone():
                return None
            self._entries.move_to_end(execution_id)
        return self._loaded(orjson.loads(entry.blob), entry)

    def put(self, execution_id: str, identity: Identity, record: dict[str, Any], zone: str) -> dict[str, Any]:
        """Keep *record*, checked from the file of this identity in the naive time zone *zone*
        (as it was before the check began), if this is the second read of the file; return it,
        as a LoadedRecord if kept (a record orjson cannot write, or one over an eighth of the
        bound, is not)."""
        if self.max_bytes <= 0:
            return record
        with self._lock:
            if self._seen.pop(execution_id, None) != identity:  # a first read: noted only
                self._seen[execution_id] = identity
                if len(self._seen) > SEEN:
                    self._seen.popitem(last=False)
                return record
        try:  # a copy of the exact size: orjson's own bytes hold a larger block behind them
            blob = memoryview(orjson.dumps(record)).tobytes()
        except TypeError:
            return record
        if len(blob) > self.max_bytes // 8:  # one huge record never flushes the rest
            return record
        entry = _Entry(execution_id, identity, zone, blob)
        with self._lock:
            self._drop(execution_id)
            self._entries[execution_id] = entry
            self._bytes += entry.size
            self._trim()
        return self._loaded(record, entry)

    def discard(self, execution_id: str) -> None:
        """Forget a run (deleted)."""
        with self._lock:
            self._drop(execution_id)
            self._seen.pop(execution_id, None)

    def _loaded(self, record: dict[str, Any], entry: _Entry) -> LoadedRecord:
        loaded = LoadedRecord(record)
        loaded._cache, loaded._entry = self, entry
        return loaded

    def _derived(self, entry: _Entry, key: Hashable, make: Callable[[], str]) -> str:
        text = entry.derived.get(key)
        if text is not None:
            return text
        text = make()
        size = sys.getsizeof(text)  # memory, not characters: non-ASCII text takes 2 or 4 bytes a character
        if size > self.max_bytes // 8:
            return text
        with self._lock:
            if self._entries.get(entry.execution_id) is entry and key not in entry.derived:  # still kept
                entry.derived[key] = text
                entry.size += size
                self._bytes += size
                self._trim()
        return text

    def _drop(self, execution_id: str) -> None:
        old = self._entries.pop(execution_id, None)
        if old is not None:
            self._bytes -= old.size

    def _trim(self) -> None:
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size
