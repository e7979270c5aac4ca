"""The OpenAPI 3 description, generated with apispec from the schemas the code validates with."""
from __future__ import annotations

import functools
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import INCLUDE, Schema, fields

import execution_history
from execution_history.exporters import ALIASES, EXPORTERS, PLANNED
from execution_history.records import STATUSES, RunItemSchema, RunRecordSchema

from .params import (
    EXPORT_OPTIONS,
    LINK_PARAMS,
    BulkExportLimitSchema,
    DateOrDateTime,
    IdList,
    ListParamsSchema,
)


class RunSummarySchema(Schema):
    """One run in a list."""

    execution_id = fields.String(required=True)
    config_name = fields.String(required=True)
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    status = fields.String(required=True, metadata={"enum": list(STATUSES)})
    execution_mode = fields.String(allow_none=True, required=True)
    safety_level = fields.String(allow_none=True, required=True)
    total_execution_time = fields.Float(allow_none=True, required=True)
    items_count = fields.Integer(required=True)
    user_id = fields.String(allow_none=True, required=True)
    session_id = fields.String(allow_none=True, required=True)
    taxonomy_version = fields.String(allow_none=True, required=True)
    last_activity_at = fields.String(allow_none=True, required=True, metadata={
        "format": "date-time", "description": "Runs in progress: when their last item was logged; else null"})
    stale = fields.Boolean(required=True, metadata={
        "description": "A run in progress with nothing logged for RUN_HISTORY_STALE_AFTER seconds"})


class RunListSchema(Schema):
    """GET /api/runs."""

    executions = fields.List(fields.Nested(RunSummarySchema), required=True)
    total = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)
    returned = fields.Integer(required=True)
    filters = fields.Dict(required=True, metadata={"description": "Every filter, null when not given."})
    order_by = fields.String(required=True)
    order = fields.String(required=True)


class StatsSchema(Schema):
    """GET /api/runs/stats."""

    total_records = fields.Integer(required=True)
    total_size_bytes = fields.Integer(required=True)
    total_size_mb = fields.Float(required=True, metadata={"description": "bytes / 2^20, 2 decimals"})
    storage_dir = fields.String(required=True)
    by_config = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    first_timestamp = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    last_timestamp = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    unreadable_records = fields.Integer(required=True)


class LinkSchema(Schema):
    """A temporary download link."""

    url = fields.String(required=True, metadata={"format": "uri"})
    expires_at = fields.String(required=True, metadata={"format": "date-time"})


class ErrorSchema(Schema):
    """Every error; more context keys (parameter, allowed, execution_id, ...) may follow."""

    class Meta:
        unknown = INCLUDE

    error = fields.String(required=True)
    code = fields.String(required=True)
    request_id = fields.String(required=True)


def _options(fmt: str) -> list[dict[str, Any]]:
    """The writer options of a format as query parameters (only that format takes them)."""
    return [{"in": "query", "name": name, "required": False,
             "description": EXPORT_OPTIONS[name].metadata["description"],
             "schema": {"type": "boolean"} if isinstance(EXPORT_OPTIONS[name], fields.Boolean)
             else {"type": "string", "enum": EXPORT_OPTIONS[name].metadata["allowed"]}}
            for name in EXPORTERS[fmt].options]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": "Error"}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@functools.cache
def build_spec() -> dict[str, Any]:
    """The OpenAPI document served at /api/openapi.json."""
    plugin = MarshmallowPlugin()
    spec = APISpec(title="Run history", version=execution_history.__version__, openapi_version="3.0.3",
                   plugins=[plugin], info={"description": "Records of AI pipeline runs: list, fetch, export."})
    spec.components.security_scheme("bearer", {
        "type": "http", "scheme": "bearer",
        "description": "Needed on every /api route when RUN_HISTORY_TOKENS is set (access control on)"})
    spec.options["security"] = [{"bearer": []}]
    plugin.map_to_openapi_type(DateOrDateTime, "string", "date-time")  # a bare date is accepted too
    plugin.map_to_openapi_type(IdList, "string", None)
    for name, schema in [("RunItem", RunItemSchema), ("RunRecord", RunRecordSchema),
                         ("RunSummary", RunSummarySchema), ("RunList", RunListSchema),
                         ("Stats", StatsSchema), ("Link", LinkSchema), ("Error", ErrorSchema)]:
        spec.components.schema(name, schema=schema)
    run_id = {"in": "path", "name": "execution_id", "required": True,
              "schema": {"type": "string", "pattern": execution_history.records.EXECUTION_ID_PATTERN}}
    spec.path(path="/api/runs", operations={"get": {
        "operationId": "list_runs", "summary": "Filtered, sorted, paginated run summaries",
        "parameters": [{"in": "query", "schema": ListParamsSchema}],
        "responses": {"200": {**_json("A page of runs (X-Total-Count and Link headers)", "RunList"),
                              "headers": {"X-Total-Count": {"schema": {"type": "integer"}},
                                          "Link": {"schema": {"type": "string"}}}},
                      "400": _error("A bad or unknown parameter"), "401": _error("No valid bearer token")}}})
    spec.path(path="/api/runs/stats", operations={"get": {
        "operationId": "get_stats", "summary": "Counts by config and status, storage size",
        "responses": {"200": _json("Stats", "Stats"), "401": _error("No valid bearer token")}}})
    spec.path(path="/api/runs/{execution_id}", operations={"get": {
        "operationId": "get_run", "summary": "One whole record", "parameters": [run_id],
        "responses": {"200": _json("The record", "RunRecord"), "401": _error("No valid bearer token"),
                      "403": _error("Another user's run"), "404": _error("No such run")}}})
    def downloads(json_schema: dict[str, Any]) -> dict[str, Any]:
        content = {exporter.mimetype: {"schema": {"type": "string", "format": "binary"}}
                   for exporter in EXPORTERS.values()}
        content[EXPORTERS["json"].mimetype] = {"schema": json_schema}
        return {"description": "The download (Content-Disposition: attachment)", "content": content}

    download = downloads({"$ref": "#/components/schemas/RunRecord"})
    bulk_download = {**downloads({"type": "array", "items": {"$ref": "#/components/schemas/RunRecord"}}),
                     "headers": {"X-Total-Count": {"schema": {"type": "integer"}}}}
    errors = {"400": _error("Unknown format, bad or unknown parameter, or EXPORT_TOO_LARGE"),
              "401": _error("No valid bearer token (access control on)"),
              "501": _error("A planned format (pdf, docx)")}
    run_errors = {**errors, "403": _error("Another user's run"), "404": _error("No such run")}
    link = _json("A temporary download URL", "Link")
    filters = {"in": "query", "schema": BulkExportLimitSchema}
    # Formats with options get a path of their own, so each path lists exactly what it takes.
    plain = [name for name, exporter in EXPORTERS.items() if not exporter.options]
    variants = [("{fmt}", [{"in": "path", "name": "fmt", "required": True,
                            "description": "Export format, case-insensitive (excel = xlsx); pdf/docx: 501",
                            "schema": {"type": "string", "enum": [*plain, *ALIASES, *PLANNED]}}], "")]
    variants += [(name, _options(name), f" ({name})") for name, exporter in EXPORTERS.items() if exporter.options]
    for segment, params, label in variants:
        suffix = "" if segment == "{fmt}" else f"_{segment}"
        spec.path(path=f"/api/runs/{{execution_id}}/export/{segment}", operations={"get": {
            "operationId": f"export_run{suffix}", "summary": f"One run as a download{label}",
            "parameters": [run_id, *params], "responses": {"200": download, **run_errors}}})
        spec.path(path=f"/api/runs/export/{segment}", operations={"get": {
            "operationId": f"export_runs{suffix}",
            "summary": f"Every run the list filters select, streamed, in list order{label}",
            "parameters": [filters, *params], "responses": {"200": bulk_download, **errors}}})
        spec.path(path=f"/api/runs/{{execution_id}}/export/{segment}/link", operations={"get": {
            "operationId": f"link_run{suffix}",
            "summary": f"A signed URL that downloads this run without a token until it expires{label}",
            "parameters": [run_id, *params], "responses": {"200": link, **run_errors}}})
        spec.path(path=f"/api/runs/export/{segment}/link", operations={"get": {
            "operationId": f"link_runs{suffix}", "summary": f"A signed URL that downloads this selection{label}",
            "parameters": [filters, *params], "responses": {"200": link, **errors}}})
    spec.path(path="/api/download", operations={"get": {
        "operationId": "download_link", "summary": "Download through a signed link (no token; the creator's scope)",
        "parameters": [{"in": "query", "schema": LINK_PARAMS}], "security": [],
        "responses": {"200": downloads({}), "400": _error("No link given"), "403": _error("A tampered link"),
                      "404": _error("The run is gone"), "410": _error("An expired link")}}})
    spec.path(path="/api/schema/execution_record.xsd", operations={"get": {
        "operationId": "get_xsd", "summary": "The XSD every XML export validates against",
        "responses": {"200": {"description": "XML Schema", "content": {"application/xml": {"schema": {"type": "string"}}}}}}})
    spec.path(path="/api/openapi.json", operations={"get": {
        "operationId": "get_openapi", "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    document = spec.to_dict()
    # Every route that reads the record store answers 503 while the store does not (API.md 7).
    unavailable = {"description": "The record store does not answer (STORE_UNAVAILABLE); retry after Retry-After",
                   "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in document["paths"].items():
        if path.startswith(("/api/runs", "/api/download")):
            for operation in operations.values():
                operation["responses"].setdefault("503", unavailable)
    return document
