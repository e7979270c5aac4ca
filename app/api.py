"""`bp` for /api/runs: thin views that parse, call the core and respond."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from execution_history.errors import InvalidRecord, RunNotFound

from . import get_index, get_store
from .listing import link_header, list_body
from .openapi import build_spec
from .params import LIST_PARAMS, load_params

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/runs")
def list_runs() -> Response:
    """Filtered, sorted, paginated run summaries."""
    query = load_params(LIST_PARAMS, request.args)
    executions, total = get_index().query(query)
    response = jsonify(list_body(query, executions, total))
    response.headers["X-Total-Count"] = str(total)
    if links := link_header(request.base_url, request.args, query, total):
        response.headers["Link"] = links
    return response


@bp.get("/runs/stats")
def get_stats() -> Response:
    """Counts by config and status, storage size, first/last run, unreadable files."""
    return jsonify(get_index().stats())


@bp.get("/openapi.json")
def get_openapi() -> Response:
    """The OpenAPI 3 description of this API."""
    return jsonify(build_spec())


@bp.get("/runs/<path:execution_id>")
def get_run(execution_id: str) -> Response:
    """One whole record."""
    try:
        return jsonify(get_store().load(execution_id))
    except InvalidRecord:  # an unreadable file is counted in stats, never served
        raise RunNotFound("Execution not found", execution_id=execution_id) from None
