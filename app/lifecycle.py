"""Request side of the data lifecycle: who may delete, and the app's retention thread."""
from __future__ import annotations

import logging

from flask import Flask

from execution_history import lifecycle
from execution_history.errors import ExecutionHistoryError, Forbidden

from . import extensions
from .audit_hooks import note
from .auth import principal
from .extensions import get_index, get_layout, get_media_sources, get_store, get_thumbnails

log = logging.getLogger(__name__)


def delete_as_admin(execution_id: str, media: bool) -> lifecycle.Deleted:
    """Delete a run for the current principal, who must be an admin (the API and the page).

    With access control off there is no admin: every delete is refused, since anyone who
    reaches the host could otherwise erase runs (``flask runs delete`` works on the host).

    :raises Forbidden: for a researcher, or with access control off.
    :raises RunNotFound: for an unknown run.
    :raises RunInProgress: for a run still logging.
    """
    who = principal()
    if who.role != "admin":
        raise Forbidden("Only an admin may delete runs" if who.role != "open" else
                        "Deleting runs needs access control on and an admin token (or `flask runs delete` on the host)",
                        execution_id=execution_id)
    root = get_media_sources() if media else None  # the local media dir and/or the bucket's
    deleted = lifecycle.delete_run(get_store(), get_index(), execution_id, media_root=root,
                                   journals=get_layout().journal, thumbnails=get_thumbnails())
    # the line written when the response goes out says what went
    note(config=deleted.config_name, media_deleted=len(deleted.media_files) if media else None)
    return deleted


def setup_retention(app: Flask) -> None:
    """With ``RUN_HISTORY_RETENTION_DAYS`` set: a retention thread per process, started by
    the process's first request or by gunicorn's ``post_worker_init`` (after the fork)."""
    days = app.config["RUN_HISTORY_RETENTION_DAYS"]
    if days is None:
        return
    retention = lifecycle.Retention(extensions.get_store(app), extensions.get_index(app), extensions.get_side(app),
                                    days, audit=extensions.get_audit(app), journals=extensions.get_layout(app).journal)
    extensions.add(app, retention=retention)
    app.before_request(retention.start)


def start_background(app: Flask) -> None:
    """Start what the app runs in the background (gunicorn's post_worker_init calls this): the
    retention thread, and the export jobs' executor if jobs exist, so a worker gunicorn
    restarted (or a restarted server) runs queued jobs, fails its dead ones and deletes
    expired files before any request comes; and the index's folder watch, so an edit in
    place made once the worker is up is seen by its next request."""
    index = extensions.find_index(app)
    if index is not None:
        index.start_watch()
    retention = extensions.get_retention(app)  # another WSGI app: none
    if retention is not None:
        retention.start()
    executor = extensions.find_executor(app)
    if executor is not None:
        try:
            if extensions.get_side(app).list("jobs"):
                executor.ensure_started()
        except ExecutionHistoryError:  # the store is down: the first request tries again
            log.warning("export jobs: the side area cannot be read; the executor starts with a request")
