"""The store boundary: what a record store offers, and the one place that picks it and its folders.

``RUN_HISTORY_DIR`` is a local folder (:class:`~execution_history.storage.RunStore`, the
embedded default) or ``s3://bucket/prefix`` (:class:`~execution_history.s3store.S3Store`).
The app, the CLI and the tracker all call :func:`open_store` and :func:`layout_for`, so
they agree on where records, journals, the index, the side area and the per-user state
folder are. The index itself is opened by :mod:`execution_history.indexes`, which this
module (imported by the tracker) never imports: pipeline code loads no index and no SQLite.

The per-user state folder (``$XDG_STATE_HOME/run-history/<hash of the store URL>``,
default ``~/.local/state/...``) takes what the service would write beside a data folder
it cannot write (a read-only archive), the journals and index of an S3 store, and
records the tracker could not publish (``pending/``, published by ``runs recover``).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

from .atomic import replace_file
from .errors import InvalidRecord, RunAlreadyExists, StorageError
from .journal import recover as recover_journals
from .records import is_valid_execution_id, parse_record
from .side import LocalSideArea, SideArea
from .storage import DEFAULT_DATA_DIR, JOURNAL_DIR, RECORD_SUFFIX, Malformed, RecordFile, RunStore

if TYPE_CHECKING:
    from .s3store import S3Store

log = logging.getLogger(__name__)

#: ``RunStore`` is the local folder store; the alias names its role beside S3Store.
LocalStore = RunStore
#: Subfolders of a local data folder and of the state folder.
INDEX_DIR = ".index"
SIDE_DIR = ".side"
PENDING_DIR = "pending"


class RecordStore(Protocol):
    """What every record store offers (the local folder and S3)."""

    root: Any  # the folder (a Path) or the s3:// URL (a str): what stats call storage_dir

    def save(self, record: dict[str, Any]) -> Any:
        """Publish a record if no record has its id (save-if-absent); RunAlreadyExists otherwise."""

    def save_bytes(self, execution_id: str, data: bytes) -> bool:
        """Publish a record file's bytes as they are (an import) if no record has its id; False otherwise."""

    def read_bytes(self, execution_id: str) -> bytes:
        """The stored bytes of a record (RunNotFound if none)."""

    def load(self, execution_id: str) -> dict[str, Any]:
        """One checked record (RunNotFound, InvalidRecord)."""

    def get(self, execution_id: str) -> dict[str, Any]:
        """One record to serve (an unreadable one is RunNotFound)."""

    def iter_records(self, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records for these ids, in that order."""

    def list_files(self, malformed: Malformed | None = None) -> list[RecordFile]:
        """Every record with its identity (the cheap change marker: inode or ETag, size, mtime)."""

    def list_ids(self) -> list[str]:
        """Every id, newest first."""

    def scan_stats(self) -> dict[str, Any]:
        """The stats, by reading every record."""

    def delete(self, execution_id: str) -> bool:
        """Remove a record; False if there was none."""

    def check(self) -> None:
        """Raise StorageError (StoreUnavailable) if the store cannot be reached."""

    def ensure_root(self) -> None:
        """Create what the store needs to take records, if it can."""

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Remove what killed writers left behind."""


AnyStore = Union[RunStore, "S3Store"]


def is_s3(location: Any) -> bool:
    """Whether a RUN_HISTORY_DIR value (or a store) names S3."""
    return str(getattr(location, "root", location)).startswith("s3://")


def resolve_location(configured: str | os.PathLike[str] | None = None) -> str:
    """The store's location: *configured* (app config), else ``RUN_HISTORY_DIR``, else the default.

    A string, not a Path: ``Path("s3://b/p")`` would fold the double slash.
    """
    return os.fspath(configured or os.environ.get("RUN_HISTORY_DIR") or DEFAULT_DATA_DIR)


def open_store(location: str | os.PathLike[str] | None = None, endpoint_url: str | None = None) -> AnyStore:
    """The record store that *location* names (default: see :func:`resolve_location`).

    *endpoint_url* defaults to ``RUN_HISTORY_S3_ENDPOINT_URL``; it only matters for S3.
    """
    where = resolve_location(location)
    if is_s3(where):
        from .s3store import S3Store  # boto3 is only imported by those who use S3

        return S3Store(where, endpoint_url or os.environ.get("RUN_HISTORY_S3_ENDPOINT_URL") or None)
    return RunStore(where)


def store_url(store: Any) -> str:
    """The store's identity: the s3:// URL or the local folder's absolute path."""
    return str(store.root)


def state_dir(store: Any) -> Path:
    """The per-user state folder of this store (created on first use, by its users)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha256(store_url(store).encode("utf-8")).hexdigest()[:16]
    return Path(base) / "run-history" / digest


def is_writable(folder: Path) -> bool:
    """Whether files can be created in *folder* (created first if it is missing).

    ``access(2)`` answers for a read-only mount too (EROFS, even for root), and creates
    nothing: a probe file would move the data folder's mtime, which the index watches.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


@dataclass(frozen=True)
class Layout:
    """Where a store's companions live on this host."""

    store: Any
    writable: bool        # a local data folder and its parent take files
    state: Path           # the per-user state folder
    index: Path           # RUN_HISTORY_INDEX_DIR
    journal: Path         # RUN_HISTORY_JOURNAL_DIR
    beside: Path          # the generated secret key and the default audit log
    pending: Path         # records the tracker could not publish

    @property
    def uses_state_folder(self) -> bool:
        """Whether anything is kept in the per-user state folder instead of beside the data."""
        return not self.writable


def layout_for(store: Any, index_dir: str | os.PathLike[str] | None = None,
               journal_dir: str | os.PathLike[str] | None = None) -> Layout:
    """The folders of *store* on this host (configured ones win; else the defaults of API.md 6-7).

    A local folder that (with its parent) can be written keeps everything inside or
    beside it; a read-only one, and S3, use the per-user state folder.
    """
    state = state_dir(store)
    writable = not is_s3(store) and is_writable(Path(store.root)) and is_writable(Path(store.root).parent)
    journal_dir = journal_dir or os.environ.get("RUN_HISTORY_JOURNAL_DIR") or None
    index_dir = index_dir or os.environ.get("RUN_HISTORY_INDEX_DIR") or None
    root = Path(store.root) if not is_s3(store) else None
    return Layout(
        store=store, writable=writable, state=state,
        index=Path(index_dir) if index_dir else (root / INDEX_DIR if writable and root else state / "index"),
        journal=Path(journal_dir) if journal_dir else (root / JOURNAL_DIR if writable and root else state / "journal"),
        beside=root.parent if writable and root else state,
        pending=state / PENDING_DIR,
    )


def default_journal_dir(store: Any) -> Path:
    """Where a tracker journals its runs: the same folder the app's :func:`layout_for` says."""
    return layout_for(store).journal


def side_area_for(layout: Layout) -> SideArea:
    """The store's side area: S3 keys under the prefix, or a folder (``.side`` or the state folder's)."""
    store = layout.store
    if is_s3(store):
        return store.side
    return LocalSideArea(Path(store.root) / SIDE_DIR if layout.writable else layout.state / "side")


# ---------------------------------------------------------------- records not published yet


def keep_pending(store: Any, record: dict[str, Any], data: bytes) -> Path:
    """Keep a record the store did not take in the state folder's ``pending/``; its path.

    :raises OSError: if that cannot be written either.
    """
    folder = state_dir(store) / PENDING_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{record['execution_id']}{RECORD_SUFFIX}"
    replace_file(path, data, 0o600)
    return path


def publish_pending(store: Any) -> list[str]:
    """Publish the records kept in ``pending/`` (idempotent); returns the ids published.

    A record the store already holds is dropped from ``pending/``; one the store still
    refuses stays for the next try.
    """
    folder = state_dir(store) / PENDING_DIR
    published = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(folder.glob(f"exec_*{RECORD_SUFFIX}")):
            execution_id = path.name[: -len(RECORD_SUFFIX)]
            if not is_valid_execution_id(execution_id):
                continue
            try:
                record = parse_record(path.read_bytes(), execution_id)
                store.save(record)
                published.append(execution_id)
                log.warning("published pending run %s from %s", execution_id, folder)
            except RunAlreadyExists:
                pass
            except (OSError, InvalidRecord) as err:
                log.error("pending run %s cannot be read (%s); left in %s", execution_id, err, folder)
                continue
            except StorageError as err:
                log.error("pending run %s not published now (%s); it stays", execution_id,
                          err.context.get("reason") or err.message)
                continue
            path.unlink(missing_ok=True)
    return published


def recover(store: Any, journal_dir: Path | None = None) -> list[str]:
    """Publish what dead pipelines left: records kept in ``pending/``, then journals.

    What app start, ``runs recover`` and the app's background step call; never a request.
    """
    return publish_pending(store) + recover_journals(store, journal_dir or default_journal_dir(store))
