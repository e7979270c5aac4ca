"""Journals: the append-only file of a run in progress, and recovering runs whose process died.

A tracker writes ``<journal dir>/<execution_id>.jsonl`` (``RUN_HISTORY_JOURNAL_DIR``; by default
``<data dir>/.journal`` for a writable local folder, see ``stores.layout_for``): a header line, then one
line per item, each with a single ``write`` to an ``O_APPEND`` descriptor (no user-space
buffer: a SIGKILL loses at most the line being written), and a ``finalize`` line with
the status it is about to save. It holds an exclusive ``flock`` on the file while it
lives; the kernel drops the lock when the process dies, however it dies. So a journal
whose lock can be taken belongs to a dead process, and :func:`recover` turns it into a
record: the status its finalize line asked for, else ``interrupted`` with ``finished_at``
the time of the last item; a torn last line is dropped, never the whole run.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .errors import InvalidRecord, RunAlreadyExists, RunNotFound, StorageError
from . import atomic, records
from .records import (
    check_record,
    format_timestamp,
    is_valid_execution_id,
)
from .storage import JOURNAL_DIR, RunStore

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


#: A journal folder, or a local store (whose default folder, ``<data dir>/.journal``, is meant).
Where = Union[RunStore, str, os.PathLike]


def journal_dir(where: Where) -> Path:
    """The journal folder *where* names (a folder, or a local store's default one)."""
    if isinstance(where, (str, os.PathLike)):
        return Path(where)
    return Path(where.root) / JOURNAL_DIR


def journal_path(where: Where, execution_id: str) -> Path:
    """The journal of a run (the id is validated first, like every path from an id)."""
    if not is_valid_execution_id(execution_id):
        raise RunNotFound("Execution not found", execution_id=execution_id)
    return journal_dir(where) / f"{execution_id}{SUFFIX}"


class Journal:
    """The writing side, owned by one tracker."""

    def __init__(self, where: Where, header: dict[str, Any]) -> None:
        """Create the journal in the folder *where* names, and lock it.

        :raises OSError: if it cannot be created (the tracker logs it and carries on in memory).
        """
        self.path = journal_path(where, header["execution_id"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Locked and given its header under a temp name no one lists, then linked into place
        # (atomic.py's create-if-absent, without fsync: a journal guards against a killed
        # process, not a power cut): never seen unlocked or without its header while its
        # tracker lives. The descriptor stays open for the items.
        temp, self._fd = atomic.open_temp(self.path, 0o644, append=True)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._write({"header": header, "pid": os.getpid()})
            atomic.link_new(temp, self.path)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        finally:
            temp.unlink(missing_ok=True)

    def _write(self, entry: dict[str, Any]) -> None:
        atomic.write_all(self._fd, (json.dumps(entry, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))

    def append_item(self, item: dict[str, Any]) -> None:
        self._write({"item": item})

    def note_finalize(self, status: str, finished_at: str) -> None:
        """Record the status being saved, so a failed save is recovered with it."""
        self._write({"finalize": {"status": status, "finished_at": finished_at}})

    def close(self, remove: bool) -> None:
        """Release the lock; *remove* once the record is safely published."""
        if self._fd < 0:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


@dataclass
class JournalState:
    """What a journal holds: the run so far."""

    header: dict[str, Any]
    items: list[dict[str, Any]]
    finalize: dict[str, Any] | None
    torn_lines: int


def read_journal(path: Path) -> JournalState:
    """Parse a journal, dropping lines that do not parse (a torn last line).

    :raises InvalidRecord: if it has no readable header.
    """
    header = None
    items: list[dict[str, Any]] = []
    finalize = None
    torn = 0
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                entry = json.loads(raw)
            except ValueError:
                torn += 1
                continue
            if not isinstance(entry, dict):
                torn += 1
            elif "header" in entry:
                header = entry["header"]
            elif "item" in entry:
                items.append(entry["item"])
            elif "finalize" in entry:
                finalize = entry["finalize"]
    if not isinstance(header, dict) or not is_valid_execution_id(header.get("execution_id")):
        raise InvalidRecord("journal without a readable header")
    return JournalState(header, items, finalize, torn)


def build_record(state: JournalState, status: str | None = None) -> dict[str, Any]:
    """The record a journal stands for: *status* (default: its finalize line's, else interrupted).

    Made by ``records.build_record``, as the tracker makes it, then checked.
    """
    finalize = state.finalize or {}
    finished = finalize.get("finished_at") or (state.items[-1]["timestamp"] if state.items else state.header["timestamp"])
    status = status or finalize.get("status") or "interrupted"
    return check_record(records.build_record(state.header, state.items, status,
                                             None if status == "running" else finished))


def is_locked(path: Path) -> bool | None:
    """True if a live tracker holds the journal; None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases our lock if we got it
    return False


def iter_journals(where: Where) -> Iterator[Path]:
    """The journals in the folder *where* names."""
    try:
        entries = list(os.scandir(journal_dir(where)))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(SUFFIX) and is_valid_execution_id(entry.name[: -len(SUFFIX)]):
            yield Path(entry.path)


def load_running(where: Where, execution_id: str) -> dict[str, Any] | None:
    """The record so far of a run in progress (status ``running``), or None."""
    path = journal_path(where, execution_id)
    if is_locked(path) is not True:
        return None
    try:
        return build_record(read_journal(path), status="running")
    except (OSError, InvalidRecord, KeyError, TypeError, ValueError):
        return None


def recover(store: Any, folder: Where | None = None) -> list[str]:
    """Turn the journals of dead processes into records, published through *store*; returns
    the ids recovered. *folder*: the journal folder (default: the local store's own).

    Idempotent and safe to run from several processes at once (each journal is locked
    while it is recovered; a record already published is not written again).
    """
    recovered = []
    for path in iter_journals(folder if folder is not None else store):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its tracker is alive
            if not path.exists():  # another process finished it while we waited
                continue
            try:
                state = read_journal(path)
                record = build_record(state)
            except (OSError, InvalidRecord, KeyError, TypeError, ValueError) as err:
                # kept for a person to look at, under a name recovery does not list again
                log.error("journal %s cannot be recovered (%s); kept as .bad", path.name, err)
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(f".bad-{path.name}"))
                continue
            try:
                store.save(record)
                recovered.append(record["execution_id"])
                log.warning("recovered run %s as %s with %d items (%d torn lines dropped)",
                            record["execution_id"], record["status"], len(record["items"]), state.torn_lines)
            except RunAlreadyExists:
                pass  # published before the process died: the journal is just left over
            except StorageError as err:
                log.error("run %s could not be recovered now (%s); the journal stays", record["execution_id"], err)
                continue
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return recovered


def activity_time(st: os.stat_result) -> str:
    """A journal's last write as an ISO UTC timestamp."""
    return format_timestamp(dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc))
