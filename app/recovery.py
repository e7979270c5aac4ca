"""Opening the record store at start-up, and recovering what dead pipelines left (never in a request).

Recovery (records kept in the state folder's ``pending/``, then journals whose tracker
died) publishes through the store. It runs when the app starts, in ``runs recover``, and
every ``RECOVER_SECONDS`` in one background thread per worker process: a GET never
writes a record.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from execution_history import stores
from execution_history.errors import StorageError, StoreUnavailable

from . import extensions

log = logging.getLogger(__name__)

#: Seconds between two background recoveries in one worker process.
RECOVER_SECONDS = 5.0


class StoreStartupError(RuntimeError):
    """The configured store cannot be used: the app does not start (the message says why)."""


def open_checked_store(config: Mapping[str, Any]) -> tuple[Any, stores.Layout, list[str]]:
    """The store RUN_HISTORY_DIR names, its folders on this host, and the ids recovered now.

    :raises StoreStartupError: a missing bucket, refused credentials, or an S3 store without
        RUN_HISTORY_SECRET_KEY (every host must share it). An endpoint that does not answer
        is logged, and requests get 503 until it does.
    """
    location = stores.resolve_location(config["RUN_HISTORY_DIR"])
    store = stores.open_store(location, config["RUN_HISTORY_S3_ENDPOINT_URL"])
    if not stores.is_s3(store):  # a local folder keeps the records it reads again (record_cache.py)
        store.checked.max_bytes = max(0, config["RUN_HISTORY_RECORD_CACHE_MB"]) * 1024 * 1024
    else:
        if not config["RUN_HISTORY_SECRET_KEY"]:
            raise StoreStartupError(
                f"RUN_HISTORY_SECRET_KEY must be set for the S3 store {store.url}: every API host must "
                "sign links and sessions with the same key, and a generated one would differ per host")
        try:
            store.check()
        except StoreUnavailable as err:
            # Not answering is not refusing: a worker that gunicorn (re)starts during an outage
            # must come up and answer 503 until the endpoint is back, not take the server down.
            log.error("run history: the S3 endpoint %s does not answer (%s); serving 503 STORE_UNAVAILABLE "
                      "until it does", store.endpoint_url or "AWS", err.context.get("reason"))
        except StorageError as err:
            raise StoreStartupError(
                f"Record store {store.url} cannot be used: {err.message} ({err.context.get('reason')}). "
                f"Endpoint: {store.endpoint_url or 'AWS'}. No bucket is created implicitly.") from err
    layout = stores.layout_for(store, config["RUN_HISTORY_INDEX_DIR"], config["RUN_HISTORY_JOURNAL_DIR"])
    if stores.is_s3(store):
        log.warning("run history: records in %s; this host keeps its index in %s, journals in %s, "
                    "the audit log and unpublished records in %s", store.url, layout.index, layout.journal,
                    layout.state)
    elif layout.uses_state_folder:
        log.warning("run history: %s (or its parent) cannot be written; the index, locks, journals, side area, "
                    "generated secret key and audit log are kept in the state folder %s", store.root, layout.state)
    if layout.writable:
        store.sweep_temp_files()
    recovered = _recover(store, layout)  # runs whose pipeline died while no app was running
    return store, layout, recovered


def _recover(store: Any, layout: stores.Layout) -> list[str]:
    try:
        return stores.recover(store, layout.journal)
    except StorageError as err:  # the store is down or read-only: the next round tries again
        log.warning("run history: recovery postponed (%s)", err.context.get("reason") or err.message)
        return []


def recover_now(app: Flask) -> list[str]:
    """Publish what dead pipelines left, for *app*'s store (``runs recover`` and the background)."""
    return _recover(extensions.get_store(app), extensions.get_layout(app))


def start_recovery() -> None:
    """Start this worker process's background recovery thread, once (a ``before_request`` hook:
    threads do not survive gunicorn's fork, so each worker starts its own)."""
    state = extensions.state()
    if state.get("recovery_pid") == os.getpid():
        return
    state["recovery_pid"] = os.getpid()
    ref = weakref.ref(current_app._get_current_object())  # the thread ends with its app
    threading.Thread(target=_recover_forever, args=(ref,), name="run-history-recovery", daemon=True).start()


def _recover_forever(ref: weakref.ref) -> None:
    wake = threading.Event()
    while not wake.wait(RECOVER_SECONDS):
        app = ref()
        if app is None:
            return
        try:
            recover_now(app)
        except Exception:  # noqa: BLE001 - the thread must outlive any one failure
            log.exception("run history: background recovery failed")
        del app
