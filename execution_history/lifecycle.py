"""Data lifecycle: deleting a run (and the media only it names), pruning old runs, retention.

One function each, shared by the API, the pages, the CLI and the app's retention thread:
:func:`delete_run` removes one finished run from the store and the index at once;
:func:`prune` deletes every finished run that started before a cut-off; :class:`Retention`
prunes at start and then hourly, one process at a time across every host sharing the
store (a lease in the store's side area).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import journal
from .errors import InvalidRecord, RunInProgress, RunNotFound, StorageError
from .filters import RunFilters, RunQuery
from .media import AreaObject, MediaRoot, delete_media, media_locations, stat_media

if TYPE_CHECKING:
    from .audit import AuditLog
    from .index import RunIndex
    from .side import SideArea
    from .storage import RunStore
    from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

#: The side-area key of the retention lease.
LEASE_KEY = "leases/retention"
#: How long a lease holds if its holder dies mid-prune; then another process takes it over.
LEASE_SECONDS = 15 * 60
#: Retention prunes this often (and once when each process starts).
RETENTION_INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True)
class Deleted:
    """A run that was deleted: what the audit line says about it."""

    execution_id: str
    config_name: str
    user_id: str | None
    media_files: tuple[str, ...] = ()  # real paths (or s3:// URLs) of the media files removed with it


def delete_run(store: RunStore, index: RunIndex, execution_id: str,
               media_root: MediaRoot | None = None, journals: journal.Where | None = None,
               thumbnails: ThumbnailCache | None = None) -> Deleted:
    """Delete a finished run from the store and, in the same call, from the index.

    :param media_root: also delete the media files this run names that no other run
        (finished or in progress) names, inside *media_root* only (a local dir, an S3 media
        area, or both: the app's media sources); None: keep every file.
        Finding the other runs' files reads every record (a full scan, once per delete).
    :param journals: this host's journal folder (RUN_HISTORY_JOURNAL_DIR); None: a local store's default.
    :param thumbnails: the cache whose thumbnails of the deleted media files go with them.
    :raises RunNotFound: for an unknown, malformed or unreadable run.
    :raises RunInProgress: while a live tracker still logs to it.
    :raises StorageError: if the file cannot be removed.
    """
    journals = store if journals is None else journals
    journal_file = journal.journal_path(journals, execution_id)  # validates the id first
    if journal.is_locked(journal_file):
        raise RunInProgress("This run is still in progress; it can be deleted once it has finished",
                            execution_id=execution_id)
    record = store.get(execution_id)
    doomed = media_only_named_by(store, record, media_root, journals) if media_root is not None else []
    # a journal left by a pipeline that died after publishing: recovery would bring the run back;
    # one that recovery set aside as unreadable (.bad-) still holds the run's items
    for leftover in (journal_file, journal_file.with_name(f".bad-{journal_file.name}")):
        leftover.unlink(missing_ok=True)
    existed = store.delete(execution_id)
    index.forget([execution_id])  # also when the file was already gone: the index must not keep it
    if not existed:  # deleted meanwhile by another request
        raise RunNotFound("Execution not found", execution_id=execution_id)
    removed = []
    for location in doomed:
        name = location.url if isinstance(location, AreaObject) else str(location)
        try:
            media = stat_media(location) if thumbnails is not None else None
            if delete_media(location):
                removed.append(name)
            if media is not None:
                thumbnails.forget(media)  # a copy of the image: it goes too
        except (OSError, StorageError) as err:  # the run is gone already; a file left over is logged, not fatal
            log.warning("run %s deleted, but media file %s could not be: %s", execution_id, name,
                        getattr(err, "strerror", None) or getattr(err, "message", err))
    return Deleted(execution_id, record["config_name"], record.get("user_id"), tuple(removed))


def media_only_named_by(store: RunStore, record: dict[str, Any], media_root: MediaRoot,
                        journals: journal.Where | None = None) -> list[Path | AreaObject]:
    """The media files *record* names, inside *media_root*, that no other run names (every
    other record and every run in progress is read: a full scan); see ``media.media_locations``."""
    own = _media_paths([record], media_root)
    if not own:
        return []
    records = _iter_all_records(store, store if journals is None else journals)
    others = (r for r in records if r.get("execution_id") != record["execution_id"])
    shared = _media_paths(others, media_root)
    return sorted(own - shared, key=str)


def _media_paths(records: Iterable[dict[str, Any]], media_root: MediaRoot) -> set[Path | AreaObject]:
    paths: set[Path | AreaObject] = set()
    for record in records:
        for item in record.get("items") or ():
            paths.update(media_locations(item.get("file_path"), media_root))  # none outside the media dir
    return paths


def _iter_all_records(store: RunStore, journals: journal.Where) -> Iterator[dict[str, Any]]:
    """Every finished record, then the record so far of every run in progress."""
    yield from store.iter_records(store.list_ids())
    for path in journal.iter_journals(journals):
        try:
            yield journal.build_record(journal.read_journal(path))
        except (OSError, InvalidRecord, KeyError, TypeError, ValueError):
            continue


# ---------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneCriteria:
    """What a prune deletes: finished runs started more than *older_than_days* days before
    *now*, optionally of one config and one status."""

    older_than_days: int
    config: str | None = None
    status: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The criteria as an audit line's ``filters``."""
        return {"older_than_days": self.older_than_days, "config": self.config, "status": self.status}


def select_prunable(index: RunIndex, criteria: PruneCriteria, now: dt.datetime) -> list[str]:
    """Ids of the finished runs *criteria* select at *now*, oldest first."""
    if criteria.status == "running":  # runs in progress are never pruned
        return []
    cutoff = now - dt.timedelta(days=criteria.older_than_days)
    # date_to is inclusive: one microsecond before the cut-off is "more than N days ago"
    filters = RunFilters(config_name=criteria.config, status=criteria.status,
                         date_to=cutoff - dt.timedelta(microseconds=1))
    return list(index.iter_ids(RunQuery(filters=filters, order="asc", limit=None)))  # finished runs only


def prune(store: RunStore, index: RunIndex, criteria: PruneCriteria, *, dry_run: bool = False,
          now: dt.datetime | None = None, audit: AuditLog | None = None,
          who: tuple[str | None, str] = (None, "cli"),
          on_run: Callable[[str], None] | None = None, journals: journal.Where | None = None) -> list[str]:
    """Delete the finished runs *criteria* select (with *dry_run*, only say which).

    Each run deleted gets one audit line (event ``prune``, *who* as user and role, the
    criteria as ``filters``). A run in progress is never deleted; one deleted meanwhile
    by someone else is skipped. A dry run writes no audit line.

    :returns: the ids deleted (or that would be), oldest first; *on_run* is called with
        each as it goes.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    done = []
    for execution_id in select_prunable(index, criteria, now):
        if not dry_run:
            try:
                deleted = delete_run(store, index, execution_id, journals=journals)
            except (RunNotFound, RunInProgress):
                continue
            except StorageError as err:
                log.error("prune: run %s could not be deleted: %s", execution_id, err.message)
                continue
            if audit is not None:
                audit.append("prune", user=who[0], role=who[1], execution_id=execution_id,
                             config=deleted.config_name, filters=criteria.to_wire())
        done.append(execution_id)
        if on_run is not None:
            on_run(execution_id)
    return done


# ---------------------------------------------------------------- retention


def take_lease(side: SideArea, holder: str, now: dt.datetime, seconds: float = LEASE_SECONDS,
               key: str = LEASE_KEY) -> bool:
    """Take the lease *key* for *seconds* if it is free or its holder let it expire.

    Atomic create-if-absent decides between processes; an expired lease is removed and
    created again, so two processes taking over the same expired lease at the same
    instant may both win: harmless for a prune (a run is deleted once, the other skips it).
    """
    data = json.dumps({"holder": holder, "expires_at": (now + dt.timedelta(seconds=seconds)).isoformat()}).encode()
    if side.create(key, data):
        return True
    current = side.get(key)
    try:
        expires = dt.datetime.fromisoformat(json.loads(current or b"")["expires_at"])
    except (ValueError, KeyError, TypeError):
        expires = None  # unreadable: as good as expired
    if current is not None and expires is not None and expires > now:
        return False
    side.delete(key)
    return side.create(key, data)


def release_lease(side: SideArea, holder: str, key: str = LEASE_KEY) -> None:
    """Give the lease back, if this holder still has it."""
    current = side.get(key)
    try:
        mine = current is not None and json.loads(current)["holder"] == holder
    except (ValueError, KeyError, TypeError):
        mine = False
    if mine:
        side.delete(key)


@dataclass
class Retention:
    """``RUN_HISTORY_RETENTION_DAYS``: prune finished runs older than *days*, when the process
    starts and then every *interval* seconds, in a daemon thread; one process at a time
    over every host that shares the store (the side area's lease)."""

    store: RunStore
    index: RunIndex
    side: SideArea
    days: int
    audit: AuditLog | None = None
    journals: journal.Where | None = None  # this host's journal folder
    interval: float = RETENTION_INTERVAL_SECONDS
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.timezone.utc))
    sleep: Callable[[float], Any] = time.sleep  # injectable: tests move on without waiting an hour
    _pid: int | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"RUN_HISTORY_RETENTION_DAYS must be at least 1, not {self.days}")

    def run_once(self) -> list[str] | None:
        """One prune under the lease: the ids deleted, or None if another process holds it."""
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if not take_lease(self.side, holder, self.clock()):
            return None
        try:
            return prune(self.store, self.index, PruneCriteria(self.days), now=self.clock(), audit=self.audit,
                         who=("retention", "system"), journals=self.journals)
        finally:
            release_lease(self.side, holder)

    def start(self) -> None:
        """Start the thread in this process, once (cheap to call on every request).

        Called after gunicorn forks (a thread does not survive a fork), so each worker runs one.
        """
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="run-history-retention", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                deleted = self.run_once()
                if deleted:
                    log.info("retention: pruned %d run(s) older than %d days", len(deleted), self.days)
            except Exception:  # noqa: BLE001 - a failed prune is logged; the next hour tries again
                log.exception("retention: prune failed")
            self.sleep(self.interval)
