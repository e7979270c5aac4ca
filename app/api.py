"""`bp` for /api/runs: thin views that parse, call the core and respond."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.datastructures import MultiDict

from execution_history.errors import Forbidden
from execution_history.exporters import get_exporter
from execution_history.exporters.xml_writer import xsd_bytes

from . import audit_hooks, downloads, lifecycle
from .auth import OPEN, Principal, load_visible, principal, tokens
from .extensions import get_index, get_links, get_store
from .hosts import external_url, external_url_for
from .links import link_for_export
from .listing import link_header, list_body
from .openapi import build_spec
from .params import DELETE_PARAMS, LINK_PARAMS, LIST_PARAMS, export_params, load_params, load_query

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/runs")
def list_runs() -> Response:
    """Filtered, sorted, paginated run summaries (a researcher's own runs only)."""
    query, _ = load_query(LIST_PARAMS, request.args)
    executions, total = get_index().query(query, principal().scope)
    response = jsonify(list_body(query, executions, total))
    response.headers["X-Total-Count"] = str(total)
    if links := link_header(external_url(request.path), request.args, query, total):
        response.headers["Link"] = links
    return response


@bp.get("/runs/stats")
def get_stats() -> Response:
    """Counts by config and status, storage size, first/last run, unreadable files."""
    return jsonify(get_index().stats(principal().scope))


@bp.get("/runs/export/<fmt>")
def export_runs(fmt: str) -> Response:
    """Every run the list filters select, as one streamed download."""
    exporter = get_exporter(fmt)
    query, options = load_query(export_params(exporter, bulk=True), request.args)
    audit_hooks.note_filters(query)  # filters once validated: never raw arguments
    return downloads.export_runs(exporter, query, options)


@bp.get("/runs/<execution_id>/export/<fmt>")
def export_run(execution_id: str, fmt: str) -> Response:
    """One run as a download."""
    exporter = get_exporter(fmt)
    options = load_params(export_params(exporter, bulk=False), request.args)
    return downloads.export_run(exporter, execution_id, options)


@bp.get("/runs/export/<fmt>/link")
def link_runs(fmt: str) -> Response:
    """A temporary URL that downloads this selection without a token."""
    return _link_response(*link_for_export("bulk", fmt))


@bp.get("/runs/<execution_id>/export/<fmt>/link")
def link_run(execution_id: str, fmt: str) -> Response:
    """A temporary URL that downloads this run without a token."""
    return _link_response(*link_for_export("run", fmt, execution_id))


def _link_response(token: str, expires_at: str) -> Response:
    return jsonify({"url": external_url_for("api.download_link", link=token), "expires_at": expires_at})


@bp.get("/download")
def download_link() -> Response:
    """A signed link's download: no token needed, the creator's scope, never more."""
    link = load_params(LINK_PARAMS, request.args)["link"]
    record = get_links().verify(link)
    store = tokens()
    if store is not None and (record["role"] == OPEN.role or not store.has_hash(record["token_sha256"] or "")):
        raise Forbidden("This link was made with an access token that is no longer valid")
    g.principal = Principal(record["user"], record["role"])
    args = MultiDict([tuple(pair) for pair in record["args"]])
    exporter = get_exporter(record["format"])
    if record["kind"] == "run":
        audit_hooks.note(execution_id=record["execution_id"], format=exporter.name)
        return downloads.export_run(exporter, record["execution_id"],
                                    load_params(export_params(exporter, False), args))
    audit_hooks.note(filters=None, format=exporter.name)
    query, options = load_query(export_params(exporter, bulk=True), args)
    audit_hooks.note_filters(query)
    return downloads.export_runs(exporter, query, options)


@bp.get("/schema/execution_record.xsd")
def get_xsd() -> Response:
    """The XSD every XML export validates against."""
    return Response(xsd_bytes(), content_type="application/xml; charset=utf-8")


@bp.get("/openapi.json")
def get_openapi() -> Response:
    """The OpenAPI 3 description of this API."""
    return jsonify(build_spec())


@bp.get("/runs/<path:execution_id>")
def get_run(execution_id: str) -> Response:
    """One whole record (403 for another user's run)."""
    return jsonify(load_visible(get_store(), execution_id))


@bp.delete("/runs/<path:execution_id>")
def delete_run(execution_id: str) -> Response:
    """Delete a finished run for good (admins only); ``media=true``: the media only it names too."""
    media = load_params(DELETE_PARAMS, request.args)["media"]
    lifecycle.delete_as_admin(execution_id, media)
    return Response(status=204)
