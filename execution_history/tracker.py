"""ExecutionTracker: what pipeline code calls to record the steps of one run."""
from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import execution_history.stores as stores  # the module itself, not the package's re-exports
from .errors import RunAlreadyExists, StorageError
from .journal import Journal
from .legacy_calls import EarlierTrackerCalls, accept_earlier_shapes, describe_earlier_shape
from .records import (
    DEFAULT_SESSION_ID,
    DEFAULT_USER_ID,
    TRACKER_STATUSES,
    build_record,
    dump_record,
    format_timestamp,
    make_json_safe,
    make_text,
    new_execution_id,
    status_of,
    utc_now,
)
from .storage import RunStore
from .taxonomy import STAGES, TAXONOMY, TAXONOMY_VERSION, ItemType, media_type_of

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How often finalize draws a new id when the drawn one is taken (32 random bits: never in practice).
_PUBLISH_ATTEMPTS = 5


def _failsafe(default: Any = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Log any exception of the wrapped method instead of raising it into the pipeline."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapper(self: ExecutionTracker, *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, *args, **kwargs)
            except Exception:  # noqa: BLE001 - the tracker must never break a pipeline
                log.exception("execution tracker %s: %s failed", self.execution_id, method.__name__)
                return default() if callable(default) else default

        return wrapper

    return decorate


class ExecutionTracker(EarlierTrackerCalls):
    """Records the items of one pipeline run and finalizes them into one record file.

    Use it as a context manager (leaving the block finalizes the run: ``completed``, or
    ``failed`` if an exception escaped, which then propagates unchanged) or call
    :meth:`finalize` yourself. Every method is safe to call from several threads and
    never raises: a problem (disk full, a value JSON cannot carry) is logged instead.
    There is one ``log_<item_type>`` method per taxonomy type, plus the generic :meth:`log`;
    they also take the earlier tracker's call shapes (see ``legacy_calls.py``).
    """

    def __init__(self, config_name: str, execution_mode: str | None = None,
                 safety_level: str | None = None, user_id: str = DEFAULT_USER_ID,
                 session_id: str = DEFAULT_SESSION_ID, *, data_dir: str | os.PathLike[str] | None = None,
                 store: RunStore | Any | None = None, journal_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        """Start a run now. *data_dir* (a folder or ``s3://bucket/prefix``) defaults to
        ``RUN_HISTORY_DIR`` or ``exports/pipeline_runs``; *journal_dir* to
        ``RUN_HISTORY_JOURNAL_DIR`` or the store's default; *clock* returns aware UTC
        datetimes (tests inject one)."""
        self._clock = clock
        self._lock = threading.RLock()
        self._items: list[dict[str, Any]] = []
        self._finalized = False
        self._started = self._now()
        self.execution_id = new_execution_id(self._started)
        self.store = store or self._open_store(data_dir)
        self._journal_dir = journal_dir
        self._header = (self._make_header(config_name, execution_mode, safety_level, user_id, session_id)
                        or self._make_header("unknown", None, None, None, None))
        self._journal = self._open_journal()

    @staticmethod
    def _open_store(data_dir: str | os.PathLike[str] | None) -> Any:
        try:
            return stores.open_store(data_dir)
        except Exception:  # noqa: BLE001 - a bad location is logged at finalize, never raised
            log.exception("execution tracker: store %s cannot be opened; using the default folder", data_dir)
            return RunStore(stores.DEFAULT_DATA_DIR)

    @_failsafe()
    def _open_journal(self) -> Journal:
        # Items are durable from here on: a crash leaves a journal that recovery turns into a record.
        folder = self._journal_dir if self._journal_dir is not None else stores.default_journal_dir(self.store)
        return Journal(folder, self._run_header())

    def _run_header(self) -> dict[str, Any]:
        """The run fields known from the start: the journal's header, and the record's with its items."""
        return {"execution_id": self.execution_id, **self._header,
                "timestamp": format_timestamp(self._started), "taxonomy_version": TAXONOMY_VERSION}

    @_failsafe()
    def _make_header(self, config_name: Any, execution_mode: Any, safety_level: Any,
                     user_id: Any, session_id: Any) -> dict[str, Any]:
        return {
            "config_name": make_text(config_name) or "unknown",
            "execution_mode": make_text(execution_mode),
            "safety_level": make_text(safety_level),
            "user_id": make_text(user_id) or DEFAULT_USER_ID,
            "session_id": make_text(session_id) or DEFAULT_SESSION_ID,
        }

    def _now(self) -> dt.datetime:
        try:
            now = self._clock()
            return now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)
        except Exception:  # noqa: BLE001 - a broken injected clock falls back to the real one
            return utc_now()

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> ExecutionTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            self.finalize("completed")
        else:
            self._log_failure(exc)
            self.finalize("failed")
        return False  # the pipeline's exception propagates unchanged

    @_failsafe()
    def _log_failure(self, exc: BaseException) -> None:
        message = make_text(_exception_text(exc))
        self.log("pipeline_error", message,
                 metadata={"exception_type": type(exc).__name__, "error": message})

    # ------------------------------------------------------------ logging

    @_failsafe()
    def log(self, item_type: str, content: Any = None, *, stage: int | None = None,
            stage_iteration: int | None = None, loop_iteration: int | None = None,
            file_path: Any = None, model_used: Any = None, backend_used: Any = None,
            execution_time: float | None = None, metadata: Any = None, config_used: Any = None,
            backend_type: Any = None) -> int | None:
        """Record one item; *stage* defaults to the taxonomy's stage for *item_type*.

        *stage_iteration* and *loop_iteration* default to what ``set_stage_iteration`` and
        ``set_loop_iteration`` said last; *backend_type* is the earlier name of *backend_used*.

        :returns: the item's sequence number, or None if nothing was recorded (the run
            was already finalized, or the item could not be made safe: both logged).
        """
        item_type = make_text(item_type) or "unknown"
        entry = TAXONOMY.get(item_type)
        if entry is None:
            log.warning("execution tracker %s: unknown item type %r kept as given", self.execution_id, item_type)
        item = {
            "sequence_number": 0,
            "stage": self._stage(stage, entry),
            "stage_iteration": _count(self.default_stage_iteration if stage_iteration is None else stage_iteration),
            "loop_iteration": _count(self.default_loop_iteration if loop_iteration is None else loop_iteration),
            "item_type": item_type,
            "timestamp": format_timestamp(self._now()),
            "content": make_text(content),
            "file_path": make_text(os.fspath(file_path) if isinstance(file_path, os.PathLike) else file_path),
            "model_used": make_text(model_used),
            "backend_used": make_text(backend_type if backend_used is None else backend_used),
            "media_type": media_type_of(item_type),
            "config_used": make_text(config_used),
            "execution_time": _seconds(execution_time),
            "metadata": _metadata(metadata),
        }
        with self._lock:
            if self._finalized:
                log.warning("execution tracker %s: %s logged after finalize, not recorded",
                            self.execution_id, item_type)
                return None
            item["sequence_number"] = len(self._items) + 1
            self._items.append(item)
            self._journal_write(Journal.append_item, item)
            return item["sequence_number"]

    def _journal_write(self, write: Callable[..., None], *args: Any) -> None:
        if self._journal is None:
            return
        try:
            write(self._journal, *args)
        except Exception:  # noqa: BLE001 - the item is still kept in memory
            log.exception("execution tracker %s: journal write failed", self.execution_id)

    def _stage(self, stage: Any, entry: ItemType | None) -> int:
        if isinstance(stage, int) and not isinstance(stage, bool) and stage in STAGES:
            return stage
        if stage is not None:
            log.warning("execution tracker %s: stage %r is not 0-4, using the taxonomy's",
                        self.execution_id, stage)
        return entry.stage if entry else 0

    @property
    def items_count(self) -> int:
        """How many items have been recorded so far."""
        with self._lock:
            return len(self._items)

    # ------------------------------------------------------------ finalizing

    @_failsafe(default=lambda: None)
    def finalize(self, status: str | None = None) -> str:
        """Write the run's record file and return the execution id.

        A second call returns the id again and changes nothing. *status* is one of
        ``completed``, ``blocked``, ``failed``; anything else is logged and stored as
        ``failed``. Without one it is inferred: ``failed`` if a ``pipeline_error`` was
        logged, else ``blocked`` if a ``stage1_blocked`` was, else ``completed``. If the
        file cannot be written the error is logged, not raised.
        """
        with self._lock:
            if self._finalized:
                return self.execution_id
            if status is None:
                status = status_of((item["item_type"] for item in self._items), unfinished="completed")
            self._finalized = True
            if status not in TRACKER_STATUSES:
                log.error("execution tracker %s: status %r is not one of %s; stored as failed",
                          self.execution_id, status, ", ".join(TRACKER_STATUSES))
                status = "failed"
            record = self._record(status)
            self._journal_write(Journal.note_finalize, status, record["finished_at"])
            published = self._publish(record)
            self._journal_write(Journal.close, published)  # a journal not published stays for recovery
            return self.execution_id

    def _record(self, status: str) -> dict[str, Any]:
        return build_record(self._run_header(), self._items, status, format_timestamp(self._now()))

    def _publish(self, record: dict[str, Any]) -> bool:
        """Save the record through the store; False (logged truthfully) if it could not be.

        The record is then kept in the per-user state folder (``pending/``), which
        ``runs recover`` publishes later; the journal, if there is one, stays too.
        """
        for _ in range(_PUBLISH_ATTEMPTS):
            try:
                self.store.save(record)
            except (StorageError, ValueError) as err:
                self._keep_unpublished(record, getattr(err, "context", {}).get("reason") or err)
                return False
            except RunAlreadyExists:
                new_id = new_execution_id(self._started)
                log.warning("execution tracker %s: id already taken, stored as %s", self.execution_id, new_id)
                self.execution_id = record["execution_id"] = new_id
                continue
            return True
        log.error("execution tracker %s: no free id found, run not stored", self.execution_id)
        return False

    def _keep_unpublished(self, record: dict[str, Any], reason: Any) -> None:
        """Say where a run the store refused is kept, and keep it there (never claim a journal
        that does not exist)."""
        kept = []
        if self._journal is not None and self._journal.path.exists():
            kept.append(f"its journal {self._journal.path}")
        try:
            kept.append(f"{stores.keep_pending(self.store, record, dump_record(record))}")
        except (OSError, ValueError) as err:
            log.error("execution tracker %s: the record cannot be kept in the state folder either (%s)",
                      self.execution_id, err)
        if kept:
            log.error("execution tracker %s: run not saved (%s); kept in %s until "
                      "`flask --app wsgi runs recover` publishes it",
                      self.execution_id, reason, " and ".join(kept))
        else:
            log.error("execution tracker %s: run not saved (%s) and no journal or state folder could keep it: "
                      "the run is lost", self.execution_id, reason)

def _exception_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        log.warning("execution tracker: iteration %r is not a number, stored as null", value)
        return None


def _seconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        log.warning("execution tracker: execution_time %r is not a number, stored as null", value)
        return None
    return seconds if math.isfinite(seconds) else None


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    safe = make_json_safe(value)
    return safe if isinstance(safe, dict) else {"value": safe}


def _make_log_method(entry: ItemType) -> Callable[..., int | None]:
    if entry.iteration == "stage":
        def method(self: ExecutionTracker, stage_iteration: int | None, content: Any = None,
                   **kwargs: Any) -> int | None:
            return self.log(entry.name, content, stage_iteration=stage_iteration, **kwargs)
    else:
        def method(self: ExecutionTracker, content: Any = None, **kwargs: Any) -> int | None:
            return self.log(entry.name, content, **kwargs)
    method = accept_earlier_shapes(entry.name, method)
    method.__name__ = method.__qualname__ = f"log_{entry.name}"
    method.__doc__ = (f"Record a ``{entry.name}`` item (stage {entry.stage}): {entry.description}\n\n"
                      "Keyword arguments are those of :meth:`ExecutionTracker.log`."
                      + describe_earlier_shape(entry.name))
    return _failsafe()(method)


for _entry in TAXONOMY.values():
    setattr(ExecutionTracker, f"log_{_entry.name}", _make_log_method(_entry))
del _entry
