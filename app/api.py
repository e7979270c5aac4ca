"""`bp` for /api/runs: thin views that parse, call the core and respond."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request


from execution_history.exporters import get_exporter
from execution_history.exporters.xml_writer import xsd_bytes

from . import downloads, get_index, get_store
from .listing import link_header, list_body
from .openapi import build_spec
from .params import LIST_PARAMS, export_params, load_params, load_query

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/runs")
def list_runs() -> Response:
    """Filtered, sorted, paginated run summaries."""
    query, _ = load_query(LIST_PARAMS, request.args)
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


@bp.get("/runs/export/<fmt>")
def export_runs(fmt: str) -> Response:
    """Every run the list filters select, as one streamed download."""
    exporter = get_exporter(fmt)
    query, options = load_query(export_params(exporter, bulk=True), request.args)
    return downloads.export_runs(exporter, query, options)


@bp.get("/runs/<execution_id>/export/<fmt>")
def export_run(execution_id: str, fmt: str) -> Response:
    """One run as a download."""
    exporter = get_exporter(fmt)
    options = load_params(export_params(exporter, bulk=False), request.args)
    return downloads.export_run(exporter, execution_id, options)


@bp.get("/schema/execution_record.xsd")
def get_xsd() -> Response:
    """The XSD every XML export validates against."""
    return Response(xsd_bytes(), content_type="application/xml; charset=utf-8")


@bp.get("/runs/<path:execution_id>")
def get_run(execution_id: str) -> Response:
    """One whole record."""
    return jsonify(get_store().get(execution_id))
