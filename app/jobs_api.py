"""`bp` for /api/exports: export jobs (queue, watch, download, list, delete), and their executor's wiring."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from marshmallow import Schema
from werkzeug.datastructures import MultiDict

from execution_history.errors import InvalidParameter, RunNotFound, UnknownParameter
from execution_history.exporters import check_fits, get_exporter
from execution_history.jobs import JobExecutor, JobStore

from . import audit_hooks, downloads, extensions
from .auth import SESSION_ENDPOINTS, principal
from .extensions import get_executor, get_index, get_jobs, get_side
from .hosts import external_url_for
from .params import export_params, load_params, load_query

bp = Blueprint("jobs", __name__, url_prefix="/api")

#: Endpoints the pages call with the sign-in session instead of a bearer token.
#: Keys of a JSON request body.
BODY_KEYS = ("format", "filters", "options")
#: Test hook: seconds added per run, so a test can watch a job's progress (never set it in production).
TEST_DELAY_ENV = "RUN_HISTORY_TEST_EXPORT_DELAY"
#: The shortest RUN_HISTORY_EXPORT_STALE_AFTER: four heartbeats (HEARTBEAT_SECONDS) and more.
MIN_STALE_AFTER = 2
NO_PARAMS = Schema.from_dict({}, name="NoParams")()


def install(app: Flask) -> None:
    """Give *app* its job store and executor (started lazily in each process) and the routes."""
    side = extensions.get_side(app)
    store = extensions.get_store(app)
    stale_after = app.config["RUN_HISTORY_EXPORT_STALE_AFTER"]
    if stale_after < MIN_STALE_AFTER:  # a busy worker's beats must never look like a dead one's
        raise ValueError(f"RUN_HISTORY_EXPORT_STALE_AFTER must be at least {MIN_STALE_AFTER} seconds, not {stale_after}")
    jobs = JobStore(side, ttl=app.config["RUN_HISTORY_EXPORT_TTL"], stale_after=stale_after)
    # One slot folder per host and store, shared by the host's workers: the per-host limit.
    store_hash = hashlib.sha256(str(store.root).encode()).hexdigest()[:16]
    slots = os.path.join(tempfile.gettempdir(), f"run-history-export-slots-{os.getuid()}-{store_hash}")
    executor = JobExecutor(jobs, store, workers=app.config["RUN_HISTORY_EXPORT_WORKERS"], slots_dir=slots,
                           run_delay=float(os.environ.get(TEST_DELAY_ENV) or 0), secret_key=app.config["SECRET_KEY"],
                           media_root=extensions.get_media_sources(app))
    extensions.add(app, jobs=jobs, executor=executor, executor_checked=None)
    app.before_request(_start_executor)
    app.register_blueprint(bp)


def _start_executor() -> None:
    """Start this process's executor at its first job request, or at its first request of any
    kind if jobs exist (a restarted server picks up queued jobs and fails dead ones)."""
    state = extensions.state()
    if request.endpoint in SESSION_ENDPOINTS or request.endpoint == "pages.list_exports":
        get_executor().ensure_started()
    elif state["executor_checked"] != os.getpid():
        state["executor_checked"] = os.getpid()
        if get_side().list("jobs"):
            get_executor().ensure_started()


def _wire_value(name: str, value: Any) -> str | None:
    """A JSON filter or option value as the query-string text the schemas read."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if name == "ids" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise InvalidParameter(f"Invalid value for {name}", parameter=name[:100],
                           allowed="a string, number or boolean")


def job_request() -> tuple[str, MultiDict[str, str]]:
    """(format, filters and options as query arguments) of a POST: JSON or form fields."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidParameter("The body is not a JSON object", parameter="body",
                                   allowed='{"format": ..., "filters": {...}, "options": {...}}')
        for key in body:
            if key not in BODY_KEYS:
                raise UnknownParameter(f"Unknown parameter: {key}"[:120], parameter=str(key)[:100],
                                       allowed=list(BODY_KEYS))
        args: MultiDict[str, str] = MultiDict()
        for part in ("filters", "options"):
            given = body.get(part) or {}
            if not isinstance(given, dict):
                raise InvalidParameter(f"Invalid value for {part}", parameter=part, allowed="a JSON object")
            for name, value in given.items():
                if (text := _wire_value(name, value)) is not None:
                    args.add(name, text)
        fmt = body.get("format")
    else:
        args = MultiDict((k, v) for k, v in request.form.items(multi=True) if k != "format")
        fmt = request.form.get("format")
    if not isinstance(fmt, str) or not fmt:
        raise InvalidParameter("The export format is missing", parameter="format", allowed="a format name")
    return fmt[:100], args


def job_body(state: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it (times as ISO 8601 UTC, links absolute)."""
    def iso(value: float | None) -> str | None:
        return None if value is None else dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat()

    done = state["state"] == "done"
    return {
        "id": state["id"], "state": state["state"], "format": state["format"], "filters": state["filters"],
        "options": state["options"], "user": state["user"], "runs_total": state["runs_total"],
        "runs_done": state["runs_done"], "percent": state["percent"], "eta_seconds": state["eta_seconds"],
        "created_at": iso(state["created_at"]), "started_at": iso(state["started_at"]),
        "finished_at": iso(state["finished_at"]), "size_bytes": state["size_bytes"] if done else None,
        "status_url": external_url_for("jobs.get_export_job", job_id=state["id"]),
        "download_url": external_url_for("jobs.download_export_job", job_id=state["id"]) if done else None,
        "error": state["error"] if state["state"] == "failed" else None,
    }


def visible_job(job_id: str) -> dict[str, Any]:
    """A job the current principal may see (its creator's, or any for an admin).

    :raises RunNotFound: 404 for a missing, deleted or another researcher's job.
    """
    state = get_jobs().load(job_id)
    who = principal()
    if state is None or (who.role == "researcher" and state["user"] != who.user):
        raise RunNotFound("Export job not found", job_id=job_id[:100])
    return state


@bp.post("/exports")
def create_export_job() -> Response:
    """Queue an export of the selection as it is now; 202 with its status URL (Location)."""
    fmt, args = job_request()
    audit_hooks.begin(filters=args.to_dict(), format=fmt.lower())
    exporter = get_exporter(fmt)
    query, options = load_query(export_params(exporter, bulk=True), args)
    scope = principal().scope
    check_fits(exporter, get_index(), query, scope)
    ids = list(get_index().iter_ids(query, scope))  # the snapshot: runs recorded later never slip in
    who = principal()
    state = get_jobs().create(user=who.user, role=who.role, fmt=exporter.name, filters=query.filters.to_wire(),
                              options=options, ids=ids)
    audit_hooks.note(rows=len(ids))
    get_executor().ensure_started()
    get_executor().wake()
    response = jsonify(job_body(state))
    response.status_code = 202
    response.headers["Location"] = response.get_json()["status_url"]
    return response


@bp.get("/exports")
def list_export_jobs() -> Response:
    """The caller's jobs, newest first (an admin's: everyone's)."""
    load_params(NO_PARAMS, request.args)
    who = principal()
    return jsonify({"jobs": [job_body(s) for s in get_jobs().list(who.user, all_users=who.role != "researcher")]})


@bp.get("/exports/<job_id>")
def get_export_job(job_id: str) -> Response:
    """A job's state and progress."""
    return jsonify(job_body(visible_job(job_id)))


@bp.get("/exports/<job_id>/download")
def download_export_job(job_id: str) -> Response:
    """A done job's file, with the headers of a direct download (409 before, 410 after the TTL)."""
    audit_hooks.begin(filters={"job_id": job_id[:100]}, format=None)
    visible_job(job_id)
    state, handle = get_jobs().open_file(job_id)
    exporter = get_exporter(state["format"])
    audit_hooks.note(format=exporter.name)
    created = dt.datetime.fromtimestamp(state["created_at"], dt.timezone.utc)
    response = downloads.stream(_iter_file(handle), exporter, downloads.bulk_name(created, state["options"]))
    response.headers["Content-Length"] = str(state["size_bytes"])
    return response


def _iter_file(handle: Any, size: int = 256 * 1024) -> Any:
    with handle:
        while chunk := handle.read(size):
            yield chunk


@bp.delete("/exports/<job_id>")
def delete_export_job(job_id: str) -> Response:
    """Cancel a queued or running job, or delete a finished one: 204, then 404."""
    visible_job(job_id)
    get_jobs().delete(job_id)
    return Response(status=204)

