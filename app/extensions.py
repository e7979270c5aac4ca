"""The app's shared objects (store, layout, index, tokens, links, audit log, side area, export
jobs, media) in ``app.extensions["run_history"]``, and the typed accessors every module uses.

The one module that knows that dict: the others ask for what they need here, instead of
reaching into it or importing each other for it. Each accessor reads the current app,
or *app* where one is given (start-up, background threads, the session interface).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from flask import Flask, current_app

if TYPE_CHECKING:  # types only: the modules that define them import this one
    from execution_history.audit import AuditLog
    from execution_history.index import RunIndex
    from execution_history.jobs import JobExecutor, JobStore
    from execution_history.lifecycle import Retention
    from execution_history.media import MediaRoot
    from execution_history.side import SideArea
    from execution_history.stores import AnyStore, Layout
    from execution_history.thumbnails import ThumbnailCache

    from .auth import TokenStore
    from .links import LinkSigner

KEY = "run_history"


class RunHistory(TypedDict, total=False):
    """What ``app.extensions["run_history"]`` holds."""

    store: AnyStore
    layout: Layout
    recovered_at_start: list[str]       # what `runs recover` reports with its own round
    index: RunIndex
    tokens: TokenStore | None           # None: access control is off
    links: LinkSigner
    audit: AuditLog
    side: SideArea                      # export jobs, sessions, leases: shared by every host
    jobs: JobStore
    executor: JobExecutor
    media_root: Path                    # the local media dir
    media_sources: MediaRoot            # where media are read from: that dir and/or an S3 area
    thumbnails: ThumbnailCache
    trusted_hosts: list[str]
    retention: Retention                # only with RUN_HISTORY_RETENTION_DAYS
    # per process (gunicorn forks after start-up): whose thread or check this is
    recovery_pid: int
    executor_checked: int | None


def install(app: Flask, **objects: Any) -> RunHistory:
    """Give *app* its shared objects (create_app, once); more are added with :func:`add`."""
    app.extensions[KEY] = RunHistory(**objects)  # type: ignore[typeddict-item]
    return app.extensions[KEY]


def add(app: Flask, **objects: Any) -> None:
    """Add shared objects to *app* (the parts that set up their own: jobs, media, hosts, retention)."""
    state(app).update(**objects)  # type: ignore[typeddict-item]


def state(app: Flask | None = None) -> RunHistory:
    """All of them, for the few that keep per-process flags there (recovery, the executor check)."""
    return (app if app is not None else current_app).extensions[KEY]


def get_store(app: Flask | None = None) -> AnyStore:
    """The run store."""
    return state(app)["store"]


def get_layout(app: Flask | None = None) -> Layout:
    """Where the store's companions (index, journals, state folder) live on this host."""
    return state(app)["layout"]


def get_index(app: Flask | None = None) -> RunIndex:
    """The run index."""
    return state(app)["index"]


def get_tokens(app: Flask | None = None) -> TokenStore | None:
    """The token store, or None when access control is off."""
    return state(app)["tokens"]


def get_links(app: Flask | None = None) -> LinkSigner:
    """The link signer."""
    return state(app)["links"]


def get_audit(app: Flask | None = None) -> AuditLog:
    """The audit log."""
    return state(app)["audit"]


def get_side(app: Flask | None = None) -> SideArea:
    """The side area (shared by every worker and host of the store)."""
    return state(app)["side"]


def get_jobs(app: Flask | None = None) -> JobStore:
    """The export jobs."""
    return state(app)["jobs"]


def get_executor(app: Flask | None = None) -> JobExecutor:
    """The export jobs' executor (this process's)."""
    return state(app)["executor"]


def get_media_root(app: Flask | None = None) -> Path:
    """The media dir (``RUN_HISTORY_MEDIA_DIR``, default: the start-up working directory)."""
    return state(app)["media_root"]


def get_media_sources(app: Flask | None = None) -> MediaRoot:
    """Where media are read from: the local media dir and/or an S3 area (``media_root_for``)."""
    return state(app)["media_sources"]


def get_thumbnails(app: Flask | None = None) -> ThumbnailCache:
    """The thumbnail cache."""
    return state(app)["thumbnails"]


def get_trusted_hosts(app: Flask | None = None) -> list[str]:
    """The Host values the app answers to (RUN_HISTORY_TRUSTED_HOSTS)."""
    return state(app)["trusted_hosts"]


def get_recovered_at_start(app: Flask | None = None) -> list[str]:
    """The ids recovered when the app started."""
    return state(app)["recovered_at_start"]


def get_retention(app: Any) -> Retention | None:
    """*app*'s retention thread, if it has one (None too for another WSGI app gunicorn serves)."""
    return _optional(app, "retention")


def find_executor(app: Any) -> JobExecutor | None:
    """*app*'s export jobs' executor, or None for another WSGI app gunicorn serves."""
    return _optional(app, "executor")


def find_index(app: Any) -> RunIndex | None:
    """*app*'s run index, or None for another WSGI app gunicorn serves."""
    return _optional(app, "index")


def _optional(app: Any, name: str) -> Any:
    """``app.extensions["run_history"][name]`` for any WSGI app (None where it has none)."""
    return getattr(app, "extensions", {}).get(KEY, {}).get(name)
