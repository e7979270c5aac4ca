"""The Flask app factory: config layers, the run store, blueprints, error handlers, request ids."""
from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request

from execution_history import RunStore, resolve_data_dir
from execution_history.index import RunIndex

from .config import load_config
from .errors import register_error_handlers

_CLIENT_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then RUN_HISTORY_* from the environment, then *config*."""
    app = Flask(__name__)
    app.config.update(load_config(config))
    app.json.sort_keys = False  # keep the contract's key order
    app.json.ensure_ascii = False

    store = RunStore(resolve_data_dir(app.config["RUN_HISTORY_DIR"]))
    store.sweep_temp_files()
    # No SQLite connection is opened here: gunicorn may fork after this (preload_app).
    index = RunIndex(store, rescan_seconds=app.config["RUN_HISTORY_RESCAN_SECONDS"])
    app.extensions["run_history"] = {"store": store, "index": index}

    app.before_request(_assign_request_id)
    app.after_request(_send_request_id)
    register_error_handlers(app)

    from . import api, cli, pages
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.cli.add_command(cli.runs)
    return app


def get_store() -> RunStore:
    """The current app's run store."""
    return current_app.extensions["run_history"]["store"]


def get_index() -> RunIndex:
    """The current app's run index."""
    return current_app.extensions["run_history"]["index"]


def _assign_request_id() -> None:
    sent = request.headers.get("X-Request-ID", "")
    g.request_id = sent if _CLIENT_REQUEST_ID.match(sent) else uuid.uuid4().hex


def _send_request_id(response: Response) -> Response:
    if "request_id" not in g:  # a request that failed before before_request ran
        _assign_request_id()
    response.headers["X-Request-ID"] = g.request_id
    return response
