"""`bp` for /api/runs: thin views that parse, call the core and respond."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from execution_history.errors import InvalidRecord, RunNotFound

from . import get_store

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/runs/stats")
def get_stats() -> Response:
    """Counts by config and status, storage size, first/last run, unreadable files."""
    return jsonify(get_store().scan_stats())


@bp.get("/runs/<path:execution_id>")
def get_run(execution_id: str) -> Response:
    """One whole record."""
    try:
        return jsonify(get_store().load(execution_id))
    except InvalidRecord:  # an unreadable file is counted in stats, never served
        raise RunNotFound("Execution not found", execution_id=execution_id) from None
