"""Importing record files from another folder (e.g. the earlier tracker's) into a record store (local or S3)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ExecutionHistoryError, InvalidRecord
from .records import is_valid_execution_id, parse_record
from .storage import RECORD_SUFFIX
from .stores import RecordStore

COPIED = "copied"
ALREADY_THERE = "already there"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Imported:
    """What happened to one file of the source folder."""

    name: str                 # the file's name in the source folder
    outcome: str              # COPIED, ALREADY_THERE or UNREADABLE
    reason: str | None = None  # why it is unreadable, or that the stored file differs


def iter_import(store: RecordStore, source: str | os.PathLike[str]) -> Iterator[Imported]:
    """Copy every ``*.json`` record file of *source* (not its subfolders) into *store*, by name.

    *store* is the local folder or S3 (``save_bytes``: a hard link there, a conditional put
    here); the report is the same on both.

    Each file is validated as a record first (``parse_record``, so older files count as
    records) and then stored byte for byte: it stays as its tracker wrote it and is
    upgraded whenever it is read. Nothing is ever overwritten; dotfiles and other names
    are skipped silently.

    :raises OSError: if *source* cannot be listed.
    """
    with os.scandir(source) as listing:
        entries = sorted((e for e in listing if e.name.endswith(RECORD_SUFFIX) and not e.name.startswith(".")),
                         key=lambda e: e.name)
    for entry in entries:
        yield _import_one(store, entry)


def _import_one(store: RecordStore, entry: os.DirEntry[str]) -> Imported:
    execution_id = entry.name[:-len(RECORD_SUFFIX)]
    try:
        # no symlinks or special files: a FIFO would block the read, a link may point anywhere
        if not entry.is_file(follow_symlinks=False):
            return Imported(entry.name, UNREADABLE, "not a regular file")
    except OSError as err:
        return Imported(entry.name, UNREADABLE, err.strerror or str(err))
    if not is_valid_execution_id(execution_id):
        return Imported(entry.name, UNREADABLE, "the file name is no execution id, exec_YYYYMMDD_HHMMSS_<8 hex>.json")
    try:
        raw = Path(entry.path).read_bytes()
    except OSError as err:
        return Imported(entry.name, UNREADABLE, err.strerror or str(err))
    try:
        parse_record(raw, execution_id)
    except InvalidRecord as err:
        return Imported(entry.name, UNREADABLE, err.message)
    if store.save_bytes(execution_id, raw):
        return Imported(entry.name, COPIED)
    try:
        same = store.read_bytes(execution_id) == raw
    except ExecutionHistoryError:  # gone again meanwhile: still not ours to write
        same = True
    return Imported(entry.name, ALREADY_THERE, None if same else "the stored file differs; kept as it is")
