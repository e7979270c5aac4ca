"""The Flask app factory: config layers, store/index, access control, blueprints, handlers, request ids."""
from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request

from execution_history import records, stores
from execution_history.audit import AuditLog
from execution_history.indexes import open_index

from . import (
    api,
    audit_hooks,
    auth,
    cli,
    extensions,
    health,
    hosts,
    job_pages,  # noqa: F401 - adds the export-job pages to the pages blueprint
    jobs_api,
    lifecycle,
    media,
    pages,
    sessions,
)
from .config import load_config
from .errors import register_error_handlers
from .links import LinkSigner
from .recovery import open_checked_store, start_recovery

log = logging.getLogger(__name__)

_CLIENT_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
#: On every response. Pages load their script and style from /static only (no inline code).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then RUN_HISTORY_* from the environment, then *config*."""
    app = Flask(__name__)
    app.config.update(load_config(config))
    app.json.sort_keys = False  # keep the contract's key order
    app.json.ensure_ascii = False
    # Before anything reads a record; an unknown zone name stops start-up with a clear ValueError.
    records.set_naive_timezone(app.config["RUN_HISTORY_NAIVE_TIMEZONE"])

    store, layout, recovered = open_checked_store(app.config)  # the one place the store and its folders are picked
    secret = auth.load_secret_key(app.config["RUN_HISTORY_SECRET_KEY"],
                                  layout.beside / "data")  # the generated key goes beside this: layout.beside
    app.config.update(SECRET_KEY=secret, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SECURE=True,
                      SESSION_COOKIE_SAMESITE="Lax", MAX_CONTENT_LENGTH=64 * 1024, MAX_FORM_MEMORY_SIZE=16 * 1024)
    tokens_file = app.config["RUN_HISTORY_TOKENS"]
    audit_path = app.config["RUN_HISTORY_AUDIT_LOG"] or layout.beside / "audit.log"
    extensions.install(
        app,
        store=store,
        layout=layout,
        recovered_at_start=recovered,  # what `runs recover` reports with its own round
        # No SQLite connection is opened here: gunicorn may fork after this (preload_app).
        index=open_index(layout, rescan_seconds=app.config["RUN_HISTORY_RESCAN_SECONDS"],
                         stale_after=app.config["RUN_HISTORY_STALE_AFTER"],
                         running_refresh=app.config["RUN_HISTORY_RUNNING_REFRESH"],
                         watch=bool(app.config["RUN_HISTORY_FOLDER_WATCH"]),
                         build_in_background=True),  # requests answer 503 INDEX_BUILDING meanwhile
        tokens=auth.TokenStore(Path(tokens_file)) if tokens_file else None,
        links=LinkSigner(secret, app.config["RUN_HISTORY_LINK_TTL"]),
        audit=AuditLog(audit_path),
        side=stores.side_area_for(layout),  # export jobs, sessions, leases: shared by every host
    )

    app.session_interface = sessions.SideSessionInterface()  # sign-in sessions live server-side
    app.before_request(start_recovery)  # journals of dead pipelines, in a background thread
    app.before_request(_assign_request_id)
    hosts.configure(app)  # the Host check runs before anything else looks at the request
    app.before_request(audit_hooks.authenticate_api)  # auth's check; refusals audited as the policy says
    lifecycle.setup_retention(app)  # RUN_HISTORY_RETENTION_DAYS: prune at start, then hourly
    app.after_request(audit_hooks.finish)
    app.after_request(_send_common_headers)
    register_error_handlers(app)

    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    media.init_app(app, store.root if layout.writable else layout.state)  # thumbnails: the data folder or state
    jobs_api.install(app)  # export jobs: store, executor, /api/exports
    audit_hooks.install(app)  # after every blueprint: app/audit_policy.py names their endpoints
    app.cli.add_command(cli.runs)
    return app


def _assign_request_id() -> None:
    sent = request.headers.get("X-Request-ID", "")
    # The id is echoed into every log line: never one that is a token or link the client also sent
    ok = _CLIENT_REQUEST_ID.match(sent) and not auth.is_secret_like(sent)
    g.request_id = sent if ok else uuid.uuid4().hex


def _send_common_headers(response: Response) -> Response:
    if "request_id" not in g:  # a request that failed before before_request ran
        _assign_request_id()
    response.headers["X-Request-ID"] = g.request_id
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
