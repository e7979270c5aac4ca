"""The OpenAPI 3 description, generated with apispec from the schemas the code validates with."""
from __future__ import annotations

import functools
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import INCLUDE, Schema, fields

import execution_history
from execution_history.exporters import ALIASES, EXPORTERS, PLANNED
from execution_history.media import MEDIA_TYPES
from execution_history.thumbnails import MIMETYPE as THUMBNAIL_MIMETYPE
from execution_history.records import ITEMS_COUNT, STATUSES, SUMMARY_FIELDS, RunItemSchema, RunRecordSchema

from .params import (
    COMMON_EXPORT_OPTIONS,
    DELETE_PARAMS,
    EXPORT_OPTIONS,
    LINK_PARAMS,
    BulkExportLimitSchema,
    DateOrDateTime,
    IdList,
    ListParamsSchema,
)


def _summary_field(name: str) -> fields.Field:
    """A summary field as the list answers it: the record field's type; null unless the record requires it."""
    if name == ITEMS_COUNT:
        return fields.Integer(required=True)
    source = RunRecordSchema().fields[name]
    metadata = {"format": source.metadata["format"]} if "format" in source.metadata else {}
    if name == "status":
        metadata["enum"] = list(STATUSES)
    return type(source)(required=True, allow_none=not source.required, metadata=metadata)


#: One run in a list: records.SUMMARY_FIELDS, then what the index adds for runs in progress.
RunSummarySchema = Schema.from_dict({
    **{name: _summary_field(name) for name in SUMMARY_FIELDS},
    "last_activity_at": fields.String(allow_none=True, required=True, metadata={
        "format": "date-time", "description": "Runs in progress: when their last item was logged; else null"}),
    "stale": fields.Boolean(required=True, metadata={
        "description": "A run in progress with nothing logged for RUN_HISTORY_STALE_AFTER seconds"}),
}, name="RunSummarySchema")


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
            for name in (*EXPORTERS[fmt].options, *COMMON_EXPORT_OPTIONS)]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": "Error"}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


class JobSchema(Schema):
    """An export job (GET /api/exports/{job_id})."""

    id = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["queued", "running", "done", "failed", "cancelled",
                                                            "expired"]})
    format = fields.String(required=True)
    filters = fields.Dict(required=True, metadata={"description": "The list filters that selected the runs"})
    options = fields.Dict(required=True, metadata={"description": "The writer options (shape, bom, raw, ...)"})
    user = fields.String(allow_none=True, required=True, metadata={"description": "Who queued it"})
    runs_total = fields.Integer(required=True, metadata={"description": "Runs selected when it was queued"})
    runs_done = fields.Integer(required=True)
    percent = fields.Float(required=True)
    eta_seconds = fields.Float(allow_none=True, required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    started_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    finished_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    size_bytes = fields.Integer(allow_none=True, required=True)
    status_url = fields.String(required=True, metadata={"format": "uri"})
    download_url = fields.String(allow_none=True, required=True, metadata={"format": "uri"})
    error = fields.String(allow_none=True, required=True)


class JobListSchema(Schema):
    """GET /api/exports."""

    jobs = fields.List(fields.Nested(JobSchema), required=True)


def _job_paths(spec: APISpec, download: dict[str, Any]) -> None:
    """/api/exports: export jobs."""
    spec.components.schema("Job", schema=JobSchema)
    spec.components.schema("JobList", schema=JobListSchema)
    filters = {name: {k: v for k, v in prop.items() if k != "in"}
               for name, prop in ((p["name"], {**p["schema"], "description": p.get("description", "")})
                                  for p in _query_parameters(BulkExportLimitSchema()))}
    def option(field: fields.Field) -> dict[str, Any]:
        return {"type": "boolean"} if isinstance(field, fields.Boolean) else {"type": "string",
                                                                             "enum": field.metadata["allowed"]}

    # One body per format: each lists only the options its writer takes (others are a 400).
    variants = []
    for name, exporter in EXPORTERS.items():
        names = [name, *(alias for alias, target in ALIASES.items() if target == name)]
        variants.append((names, {option_name: option(EXPORT_OPTIONS[option_name])
                                 for option_name in (*exporter.options, *COMMON_EXPORT_OPTIONS)}))
    variants.append((list(PLANNED), {}))
    body = {"oneOf": [{"type": "object", "required": ["format"], "additionalProperties": False, "properties": {
        "format": {"type": "string", "enum": names, "description": "Export format, case-insensitive; pdf/docx: 501"},
        "filters": {"type": "object", "properties": filters, "additionalProperties": False,
                    "description": "The list parameters (as for GET /api/runs/export/{fmt})"},
        "options": {"type": "object", "properties": options, "additionalProperties": False,
                    "description": "The export options of the format (csv: shape, bom, raw; every format: pseudonymize)"}}}
        for names, options in variants]}
    # The same as form fields (the web page's form): one flat set per format, its options beside the
    # filters (a form field is text: no null, where JSON's null means "not given")
    form_filters = {name: {k: v for k, v in prop.items() if k != "nullable"} for name, prop in filters.items()}
    form = {"oneOf": [{"type": "object", "required": ["format"], "additionalProperties": False, "properties": {
        "format": {"type": "string", "enum": names, "description": "Export format, case-insensitive; pdf/docx: 501"},
        **form_filters, **options}} for names, options in variants]}
    job_id = {"in": "path", "name": "job_id", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    denied = {"401": _error("No valid bearer token (or session)"), "404": _error("No such job, or another user's")}
    spec.path(path="/api/exports", operations={
        "post": {"operationId": "create_export_job",
                 "summary": "Queue an export of the runs the filters select now (or the same as form fields)",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": body},
                                                               "application/x-www-form-urlencoded": {"schema": form}}},
                 "responses": {"202": {**_json("Queued (Location: its status URL)", "Job"),
                                       "headers": {"Location": {"schema": {"type": "string"}}}},
                               "400": _error("Unknown format, bad or unknown parameter, or EXPORT_TOO_LARGE"),
                               "401": _error("No valid bearer token (or session)"),
                               "403": _error("A session call without its CSRF token"),
                               "413": _error("Body over 64 KB"), "501": _error("A planned format (pdf, docx)")}},
        "get": {"operationId": "list_export_jobs", "summary": "The caller's export jobs, newest first (admin: all)",
                "responses": {"200": _json("Jobs", "JobList"), "400": _error("An unknown parameter"),
                              "401": _error("No valid bearer token (or session)")}}})
    spec.path(path="/api/exports/{job_id}", operations={
        "get": {"operationId": "get_export_job", "summary": "A job's state and progress", "parameters": [job_id],
                "responses": {"200": _json("The job", "Job"), **denied}},
        "delete": {"operationId": "delete_export_job", "summary": "Cancel or delete a job (then it is 404)",
                   "parameters": [job_id], "responses": {"204": {"description": "Deleted"}, **denied,
                                                         "403": _error("A session call without its CSRF token")}}})
    spec.path(path="/api/exports/{job_id}/download", operations={"get": {
        "operationId": "download_export_job", "summary": "A done job's file, as a direct download would send it",
        "parameters": [job_id], "responses": {"200": download, **denied, "409": _error("NOT_READY: not done"),
                                              "410": _error("EXPORT_EXPIRED: past RUN_HISTORY_EXPORT_TTL")}}})


def _query_parameters(schema: Schema) -> list[dict[str, Any]]:
    """A params schema as OpenAPI query parameters (what apispec makes of it)."""
    converter = OpenAPIConverter(openapi_version="3.0.3", schema_name_resolver=lambda s: None, spec=None)
    return converter.schema2parameters(schema, location="query")


@functools.cache
def build_spec() -> dict[str, Any]:
    """The OpenAPI document served at /api/openapi.json."""
    plugin = MarshmallowPlugin()
    spec = APISpec(title="Run history", version=execution_history.__version__, openapi_version="3.0.3",
                   plugins=[plugin], info={"description": "Records of AI pipeline runs: list, fetch, export. Every route "
                                             "answers 400 INVALID_HOST to a Host header that is not trusted "
                                             "(RUN_HISTORY_TRUSTED_HOSTS)."})
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
                      "403": _error("Another user's run"), "404": _error("No such run")}},
        "delete": {
            "operationId": "delete_run", "summary": "Delete a finished run for good (admins only)",
            "description": "The record leaves the store and at once every list, search, stats and export. "
                           "With access control off every delete is refused (403).",
            "parameters": [run_id, {"in": "query", "schema": DELETE_PARAMS}],
            "responses": {"204": {"description": "Deleted"}, "400": _error("A bad or unknown parameter"),
                          "401": _error("No valid bearer token"),
                          "403": _error("Not an admin (or access control off)"), "404": _error("No such run"),
                          "409": _error("RUN_IN_PROGRESS: the run is still logging")}}})
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
    media_content = {mimetype: {"schema": {"type": "string", "format": "binary"}}
                     for mimetype in dict.fromkeys(mimetype for mimetype, _ in MEDIA_TYPES.values())}
    filters = {"in": "query", "schema": BulkExportLimitSchema}
    # Formats with options get a path of their own, so each path lists exactly what it takes.
    plain = [name for name, exporter in EXPORTERS.items() if not exporter.options]
    variants = [("{fmt}", [{"in": "path", "name": "fmt", "required": True,
                            "description": "Export format, case-insensitive (excel = xlsx); pdf/docx: 501",
                            "schema": {"type": "string", "enum": [*plain, *ALIASES, *PLANNED]}},
                           *_options(plain[0])], "")]  # a plain format's options: the common ones
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
    media_errors = {"401": _error("No valid bearer token"), "403": _error("Another user's run"),
                    "404": _error("No such run or item, no file, or a file that is missing or not media")}
    validators = {"ETag": {"schema": {"type": "string"}}, "Last-Modified": {"schema": {"type": "string"}}}
    spec.path(path="/api/runs/{execution_id}/items/{sequence_number}/file", operations={"get": {
        "operationId": "get_item_file",
        "summary": "The media file an item's file_path names (inline for images, audio, video; Range, ETag, HEAD)",
        "description": "Only allow-listed media inside RUN_HISTORY_MEDIA_DIR are served; anything else is a 404. "
                       "On an S3 store (or with RUN_HISTORY_MEDIA_DIR=s3://bucket/prefix) a file not found locally "
                       "is the object <prefix>/media/<file_path> (<prefix>/<file_path> for an s3:// media dir), "
                       "with the same headers; an endpoint that does not answer is a 503.",
        "parameters": [run_id, {"in": "path", "name": "sequence_number", "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
                       {"in": "header", "name": "Range", "required": False, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The file", "headers": validators, "content": media_content},
                      "206": {"description": "The requested range (Content-Range)", "content": media_content},
                      "304": {"description": "Not modified (If-None-Match / If-Modified-Since)"},
                      "416": _error("A range outside the file (RANGE_NOT_SATISFIABLE)"),
                      "503": _error("Media on S3 and the endpoint does not answer (STORE_UNAVAILABLE)"),
                      **media_errors}}})
    spec.path(path="/api/runs/{execution_id}/thumbnail", operations={"get": {
        "operationId": "get_thumbnail", "summary": "A small WebP of the run's first output image (gallery view)",
        "parameters": [run_id],
        "responses": {"200": {"description": "The thumbnail", "headers": validators,
                              "content": {THUMBNAIL_MIMETYPE: {"schema": {"type": "string", "format": "binary"}}}},
                      "304": {"description": "Not modified"}, **media_errors}}})
    spec.path(path="/api/download", operations={"get": {
        "operationId": "download_link", "summary": "Download through a signed link (no token; the creator's scope)",
        "parameters": [{"in": "query", "schema": LINK_PARAMS}], "security": [],
        "responses": {"200": downloads({}), "400": _error("No link given"), "403": _error("A tampered link"),
                      "404": _error("The run is gone"), "410": _error("An expired link")}}})
    _job_paths(spec, downloads({}))
    spec.path(path="/api/schema/execution_record.xsd", operations={"get": {
        "operationId": "get_xsd", "summary": "The XSD every XML export validates against",
        "responses": {"200": {"description": "XML Schema", "content": {"application/xml": {"schema": {"type": "string"}}}}}}})
    health = {"type": "object", "required": ["store", "index"], "properties": {
        "store": {"type": "string", "enum": ["ok", "unavailable"]},
        "index": {"type": "string", "enum": ["ready", "building", "unavailable"]},
        "runs_indexed": {"type": "integer"}, "error": {"type": "string"}, "code": {"type": "string"},
        "build": {"type": "object",
                  "description": "A cold index build's progress (only while one runs): phase "
                                 "summaries (index building) or text (ready; text search not yet)",
                  "properties": {"phase": {"type": "string", "enum": ["summaries", "text"]},
                                 "indexed": {"type": "integer"}, "total": {"type": "integer"}}}}}
    spec.path(path="/api/health", operations={"get": {
        "operationId": "get_health", "summary": "Readiness for a load balancer (no token needed)",
        "security": [],
        "responses": {"200": {"description": "Store reachable; the index ready or building",
                              "content": {"application/json": {"schema": health}}},
                      "503": {"description": "The store is unreachable (STORE_UNAVAILABLE), or the index must "
                                             "be written and its folder cannot be (INDEX_UNAVAILABLE); Retry-After",
                              "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                              "content": {"application/json": {"schema": health}}}}}})
    spec.path(path="/api/openapi.json", operations={"get": {
        "operationId": "get_openapi", "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    document = spec.to_dict()
    # Every route that reads the record store answers 503 while the store does not (API.md 7),
    # and those that read the index while a cold build indexes its summaries (text search: its text).
    unavailable = {"description": "The record store does not answer (STORE_UNAVAILABLE), or the run index is "
                                  "being built from scratch (INDEX_BUILDING, with phase, indexed and total: "
                                  "lists, stats and exports wait for the summaries phase, text search q also "
                                  "for the text phase), or the index must be written and its folder cannot be "
                                  "(INDEX_UNAVAILABLE, with reason); retry after Retry-After",
                   "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in document["paths"].items():
        if path.startswith(("/api/runs", "/api/download")):
            for operation in operations.values():
                operation["responses"].setdefault("503", unavailable)
    return document
