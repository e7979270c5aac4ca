"""RunStore: the data folder of record files: validated id -> path, atomic save, load, list, stats."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from . import atomic
from .errors import InvalidRecord, RunAlreadyExists, RunNotFound, StorageError
from .record_cache import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES, CheckedRecords, file_identity
from .records import dump_record, is_valid_execution_id, naive_timezone, parse_record, parse_timestamp
from .regular import NotARegularFile, read_regular

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".json"
#: Temp files (atomic.py's) start with a dot and end in ``.tmp``: no reader lists them (readers
#: list ``exec_*.json`` only). The writer's pid is part of the name so sweeping can tell orphans.
TEMP_PREFIX = atomic.TEMP_PREFIX
TEMP_SUFFIX = atomic.TEMP_SUFFIX
#: Journals of runs in progress live in this subfolder (see journal.py).
JOURNAL_DIR = ".journal"
#: A temp file whose writer is gone, or that is older than this, is an orphan.
ORPHAN_AGE_SECONDS = 3600.0


#: Where records go when neither ``RUN_HISTORY_DIR`` nor app config says (relative to the cwd).
DEFAULT_DATA_DIR = Path("exports") / "pipeline_runs"


def resolve_data_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: *configured* (app config), else ``RUN_HISTORY_DIR``, else the default."""
    return Path(configured or os.environ.get("RUN_HISTORY_DIR") or DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class RecordFile:
    """A record file as listed: its id and what ``stat`` says (for change detection)."""

    execution_id: str
    inode: int
    size: int
    mtime_ns: int


@dataclass
class Malformed:
    """A caller's tally of ``exec_*.json`` files whose names are no ids (unreadable records)."""

    count: int = 0
    size: int = 0


@dataclass(frozen=True)
class SavedFile:
    """What :meth:`RunStore.save` published."""

    execution_id: str
    path: Path
    identity: tuple[int, int, int]  # inode, size, mtime_ns of the published file


class RunStore:
    """The folder of ``<execution_id>.json`` files, the source of truth for every run."""

    def __init__(self, root: str | os.PathLike[str], record_cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root).absolute()
        self.checked = CheckedRecords(record_cache_bytes)  # records read again are not checked again

    # ------------------------------------------------------------ paths

    def path_for(self, execution_id: str) -> Path:
        """The file of a run. Malformed ids never become paths.

        :raises RunNotFound: if *execution_id* is not a well-formed id.
        """
        if not is_valid_execution_id(execution_id):
            raise RunNotFound("Execution not found", execution_id=execution_id)
        return self.root / f"{execution_id}{RECORD_SUFFIX}"

    def ensure_root(self) -> None:
        """Create the data folder, and its journal folder, if they are missing.

        (Both at once, so the data folder's mtime settles before the index relies on it.)

        :raises StorageError: if it cannot be created.
        """
        try:
            (self.root / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError("Data folder cannot be created", reason=err.strerror) from err

    def check(self) -> None:
        """Whether the store answers (``/api/health``): the local folder can be listed.

        A missing folder is created, as the first request would.

        :raises StorageError: if the folder cannot be listed.
        """
        try:
            try:
                os.scandir(self.root).close()
            except FileNotFoundError:
                self.ensure_root()
                os.scandir(self.root).close()
        except OSError as err:
            raise StorageError("Data folder cannot be listed", reason=err.strerror) from err

    # ------------------------------------------------------------ writing

    def save(self, record: dict[str, Any]) -> SavedFile:
        """Publish a record atomically; never overwrites an existing run.

        The bytes go to a temp file in the same folder (a name no reader lists), are
        fsynced, made readable by other users (0o644), then hard-linked to the final name,
        which fails if that name exists; the folder is fsynced last (``atomic.create_file``).
        A reader therefore sees the whole file or none, even if this process is killed
        half-way; a killed writer's temp file is swept later by :meth:`sweep_temp_files`.

        :raises RunAlreadyExists: if a run with this id is already stored.
        :raises StorageError: if the folder cannot be written (permissions, disk full).
        :raises ValueError: if the record holds values JSON cannot carry.
        """
        execution_id = record["execution_id"]
        path = self.path_for(execution_id)
        if not self._create(execution_id, path, dump_record(record)):
            raise RunAlreadyExists("Run already stored", execution_id=execution_id)
        try:
            st = path.stat()
        except OSError as err:
            raise StorageError("Run could not be saved", execution_id=execution_id,
                               reason=err.strerror or str(err)) from err
        return SavedFile(execution_id, path, (st.st_ino, st.st_size, st.st_mtime_ns))

    def save_bytes(self, execution_id: str, data: bytes) -> bool:
        """Publish the bytes of a record file as they are (an import); never overwrites.

        Atomic like :meth:`save` (temp file, fsync, hard link). The caller validates *data*
        first (``parse_record``): the store keeps a file byte for byte, and reading upgrades it.

        :returns: True if stored, False if a run with this id is already stored (nothing written).
        :raises RunNotFound: if *execution_id* is malformed.
        :raises StorageError: if the folder cannot be written.
        """
        return self._create(execution_id, self.path_for(execution_id), data)

    def _create(self, execution_id: str, path: Path, data: bytes) -> bool:
        self.ensure_root()
        try:
            return atomic.create_file(path, data)
        except OSError as err:
            raise StorageError("Run could not be saved", execution_id=execution_id,
                               reason=err.strerror or str(err)) from err

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Remove temp files whose writer has died or that are older than an hour.

        :returns: how many were removed.
        """
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return 0
        for entry in entries:
            if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
                continue
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            if age > ORPHAN_AGE_SECONDS or not atomic.is_writer_alive(_writer_pid(entry.name)):
                if _unlink_quietly(Path(entry.path)):
                    removed += 1
        return removed

    def delete(self, execution_id: str) -> bool:
        """Remove a run's record file for good (unlink, then fsync of the folder).

        :returns: False if there was no such file.
        :raises RunNotFound: if *execution_id* is not a well-formed id.
        :raises StorageError: if the file exists but cannot be removed.
        """
        path = self.path_for(execution_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StorageError("Run could not be deleted", execution_id=execution_id,
                               reason=err.strerror or str(err)) from err
        self.checked.discard(execution_id)
        atomic.fsync_dir(self.root)  # the removal survives a power cut, like a publication
        return True

    # ------------------------------------------------------------ reading

    def read_bytes(self, execution_id: str) -> bytes:
        """The raw bytes of a run's file.

        :raises RunNotFound: if the id is malformed, no such file exists or it is not a regular
            file (FIFO, socket, device, folder, dangling symlink: counted unreadable, never served).
        :raises StorageError: if the file exists but cannot be read.
        """
        return cast(bytes, self._read(execution_id)[0])  # bytes: nothing said "unless"

    def _read(self, execution_id: str, unless: Callable[[os.stat_result], bool] | None = None,
              ) -> tuple[bytes | None, os.stat_result]:
        """``read_regular`` of a run's file (*unless* as there), its errors as the store's."""
        path = self.path_for(execution_id)
        try:
            return read_regular(path, unless)  # never blocks on a FIFO, never reads a device
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, NotARegularFile):
            raise RunNotFound("Execution not found", execution_id=execution_id) from None
        except OSError as err:
            raise StorageError("Run could not be read", execution_id=execution_id,
                               reason=err.strerror) from err

    def load(self, execution_id: str) -> dict[str, Any]:
        """One checked record (of an unchanged file read before: from ``self.checked``, unread).

        :raises RunNotFound: if the id is malformed or no such file exists.
        :raises InvalidRecord: if the file is not a run record (truncated, foreign).
        """
        kept: list[dict[str, Any]] = []

        def known(st: os.stat_result) -> bool:
            record = self.checked.get(execution_id, file_identity(st))
            if record is not None:
                kept.append(record)
            return record is not None

        zone = naive_timezone()  # before the check: a record is kept for the zone it was read in
        raw, st = self._read(execution_id, unless=known)
        if raw is None:
            return kept[0]
        return self.checked.put(execution_id, file_identity(st), parse_record(raw, execution_id), zone)

    def get(self, execution_id: str) -> dict[str, Any]:
        """One record to serve: an unreadable file is as good as missing.

        :raises RunNotFound: if the id is malformed, no file exists or it is not a run record.
        """
        try:
            return self.load(execution_id)
        except InvalidRecord:  # counted in stats as unreadable, never served
            raise RunNotFound("Execution not found", execution_id=execution_id) from None

    def iter_records(self, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records for *execution_ids* in that order; files gone or unreadable meanwhile are skipped."""
        for execution_id in execution_ids:
            try:
                yield self.load(execution_id)
            except (RunNotFound, InvalidRecord, StorageError) as err:
                log.warning("skipping run %s: %s", execution_id, err.message)

    def _iter_entries(self, malformed: Malformed | None = None) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(id, directory entry) of every ``exec_*.json`` file with a well-formed id.

        Files named ``exec_*.json`` whose name is not a valid id are unreadable records:
        they are tallied in *malformed*, if given, during the same listing, never opened.
        """
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StorageError("Data folder cannot be listed", reason=err.strerror) from err
        with entries:
            for entry in entries:
                name = entry.name
                if not (name.startswith("exec_") and name.endswith(RECORD_SUFFIX)):
                    continue
                execution_id = name[: -len(RECORD_SUFFIX)]
                if is_valid_execution_id(execution_id):
                    yield execution_id, entry
                elif malformed is not None:
                    malformed.count += 1
                    with contextlib.suppress(OSError):
                        malformed.size += entry.stat().st_size

    def list_files(self, malformed: Malformed | None = None) -> list[RecordFile]:
        """Every record file with its inode, size and mtime (*malformed*: see ``_iter_entries``)."""
        files = []
        for execution_id, entry in self._iter_entries(malformed):
            try:
                st = entry.stat()
            except OSError:  # deleted since the listing, or a dangling symlink (an unreadable record)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
            files.append(RecordFile(execution_id, st.st_ino, st.st_size, st.st_mtime_ns))
        return files

    def identity(self, execution_id: str) -> tuple[int, int, int] | None:
        """(inode, size, mtime_ns) of a record file, as ``list_files`` has it; None: no such file."""
        path = self.path_for(execution_id)
        for follow in (True, False):  # a dangling symlink: the link's own
            try:
                st = os.stat(path, follow_symlinks=follow)
            except OSError:
                continue
            return st.st_ino, st.st_size, st.st_mtime_ns
        return None

    def list_inodes(self, malformed: Malformed | None = None) -> dict[str, int]:
        """Id -> inode of every record file, from the folder listing alone (no ``stat`` per file)."""
        return {execution_id: entry.inode() for execution_id, entry in self._iter_entries(malformed)}

    def list_ids(self) -> list[str]:
        """Ids of every record file, newest first (ids start with their UTC start time)."""
        return sorted((f.execution_id for f in self.list_files()), reverse=True)

    def scan_stats(self) -> dict[str, Any]:
        """Stats computed by reading every file: the slow, index-free way (CLI, checks).

        Same keys as the API's ``/api/runs/stats``.
        """
        by_config: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        timestamps = []
        malformed = Malformed()
        files = self.list_files(malformed)
        unreadable, size = malformed.count, malformed.size
        for file in files:
            size += file.size
            try:
                record = self.load(file.execution_id)
            except (InvalidRecord, StorageError, RunNotFound):
                unreadable += 1
                continue
            by_config[record["config_name"]] += 1
            by_status[record["status"]] += 1
            timestamps.append(record["timestamp"])
        return summarize_stats(
            storage_dir=str(self.root), total_records=sum(by_config.values()), total_size_bytes=size,
            by_config=dict(by_config), by_status=dict(by_status),
            first_timestamp=min(timestamps, default=None, key=parse_timestamp),
            last_timestamp=max(timestamps, default=None, key=parse_timestamp),
            unreadable_records=unreadable)


def summarize_stats(**stats: Any) -> dict[str, Any]:
    """The stats body in contract order, with ``total_size_mb`` derived from the bytes."""
    return {
        "total_records": stats["total_records"],
        "total_size_bytes": stats["total_size_bytes"],
        "total_size_mb": round(stats["total_size_bytes"] / 2**20, 2),
        "storage_dir": stats["storage_dir"],
        "by_config": dict(sorted(stats["by_config"].items())),
        "by_status": dict(sorted(stats["by_status"].items())),
        "first_timestamp": stats["first_timestamp"],
        "last_timestamp": stats["last_timestamp"],
        "unreadable_records": stats["unreadable_records"],
    }



def _writer_pid(name: str) -> int:
    try:
        return int(name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return 0




def _unlink_quietly(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as err:
        log.warning("could not remove temp file %s: %s", path.name, err.strerror)
        return False
