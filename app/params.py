"""marshmallow schemas for query parameters; they validate requests and feed OpenAPI."""
from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict

from execution_history.errors import InvalidParameter, UnknownParameter
from execution_history.exporters import Exporter
from execution_history.exporters.csv_writer import SHAPES
from execution_history.filters import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ORDER_BY,
    ORDERS,
    RunFilters,
    RunQuery,
    fts_query,
)
from execution_history.records import (
    EXECUTION_ID_PATTERN,
    STATUSES,
    is_valid_execution_id,
)

MAX_IDS = 250  # what fits in gunicorn's 8190-byte request line, with room for other parameters
#: Beyond any real store, and within SQLite's 64-bit integers.
MAX_COUNT = 2**62
MAX_TEXT = 500


#: The only spellings accepted (API.md 3), ASCII digits only: Python's ``fromisoformat``
#: alone also takes ISO week dates (2025-W45-1), compact dates (20251103) and more.
_DATE_RE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_DATETIME_RE = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
                          r"(?:Z|[+-][0-9]{2}:[0-9]{2})?\Z")
_DIGITS_RE = re.compile(r"\A[0-9]{1,20}\Z")


def _strict_date(text: str) -> dt.date:
    if not _DATE_RE.match(text):
        raise ValueError(text)
    return dt.date.fromisoformat(text)


class StrictDate(fields.Date):
    """``YYYY-MM-DD`` only (no week or ordinal dates, no compact form), ASCII digits."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.date:
        try:
            return _strict_date(str(value))
        except ValueError:
            raise ValidationError("Not a date YYYY-MM-DD.") from None


class StrictInteger(fields.Integer):
    """A whole number in ASCII digits only: no sign, spaces, underscores or other scripts' digits
    (``int()`` takes ``+5``, `` 5``, ``1_0`` and ``５``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not _DIGITS_RE.match(str(value)):
            raise ValidationError("Not a valid integer (ASCII digits only).")
        return super()._deserialize(value, attr, data, **kwargs)


class DateOrDateTime(fields.Field):
    """``YYYY-MM-DD`` (a whole UTC day) or ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` with an optional
    ``Z`` or ``±HH:MM`` (no offset means UTC)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.date | dt.datetime:
        text = str(value)
        try:
            if _DATE_RE.match(text):
                return _strict_date(text)
            if not _DATETIME_RE.match(text):
                raise ValueError(text)
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError("Not a date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM[:SS[.ffffff]], "
                                  "optional Z or ±HH:MM).") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


class IdList(fields.Field):
    """Comma-separated execution ids."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        ids = tuple(dict.fromkeys(part.strip() for part in str(value).split(",") if part.strip()))
        if not ids or len(ids) > MAX_IDS or not all(is_valid_execution_id(i) for i in ids):
            raise ValidationError("Not a list of execution ids.")
        return ids


def _validate_q(value: str) -> None:
    try:
        fts_query(value)
    except InvalidParameter as err:
        raise ValidationError(err.context["allowed"]) from None


def _text(description: str) -> fields.String:
    return fields.String(validate=validate.Length(max=MAX_TEXT),
                         metadata={"description": description, "allowed": f"text of at most {MAX_TEXT} characters"})


class FilterParamsSchema(Schema):
    """The list filters, shared by the list and the bulk export."""

    class Meta:
        unknown = EXCLUDE  # unknown parameters are rejected before loading, with their own code

    config = _text("Runs of this config_name.")
    date = StrictDate(metadata={"description": "Runs started on this UTC day.", "allowed": "a date YYYY-MM-DD"})
    date_from = DateOrDateTime(metadata={
        "description": "Runs started at or after (a date: its start; no offset: UTC).",
        "allowed": "a date YYYY-MM-DD or a datetime YYYY-MM-DDTHH:MM[:SS[.ffffff]] (optional Z or ±HH:MM)"})
    date_to = DateOrDateTime(metadata={
        "description": "Runs started at or before (a date: its end, inclusive; no offset: UTC).",
        "allowed": "a date YYYY-MM-DD or a datetime YYYY-MM-DDTHH:MM[:SS[.ffffff]] (optional Z or ±HH:MM)"})
    user_id = _text("Runs of this user.")
    session_id = _text("Runs of this session.")
    execution_mode = _text("Runs in this execution mode (e.g. eco, fast).")
    safety_level = _text("Runs at this safety level (e.g. kids, youth, adult).")
    status = fields.String(validate=validate.OneOf(STATUSES), metadata={
        "description": "Runs with this status.", "allowed": list(STATUSES)})
    item_type = _text("Runs that contain an item of this type.")
    model = _text("Runs in which an item's model_used equals this.")
    q = fields.String(validate=[validate.Length(max=MAX_TEXT), _validate_q], metadata={
        "pattern": "[0-9A-Za-z]",
        "description": 'Text search in item content: every word must occur (case- and accent-insensitive), '
                       '"quoted phrase" as a phrase.',
        "allowed": f"words or \"quoted phrases\", at most {MAX_TEXT} characters"})
    ids = IdList(metadata={"description": f"Comma-separated execution ids (at most {MAX_IDS}).",
                           "allowed": f"comma-separated execution ids, at most {MAX_IDS}",
                           "pattern": rf"^ *{EXECUTION_ID_PATTERN} *(, *{EXECUTION_ID_PATTERN} *)*$"})
    order_by = fields.String(load_default="timestamp", validate=validate.OneOf(ORDER_BY), metadata={
        "description": "Sort key; ties are broken by execution_id in the same direction.",
        "allowed": list(ORDER_BY)})
    order = fields.String(load_default="desc", validate=validate.OneOf(ORDERS), metadata={
        "description": "Sort direction.", "allowed": list(ORDERS)})
    offset = StrictInteger(load_default=0, validate=validate.Range(min=0, max=MAX_COUNT), metadata={
        "description": "Runs to skip.", "allowed": f"an integer from 0 to {MAX_COUNT}"})


class ListParamsSchema(FilterParamsSchema):
    """GET /api/runs: the filters plus a page of 1-100 runs."""

    limit = StrictInteger(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT), metadata={
        "description": "Runs per page.", "allowed": f"an integer from 1 to {MAX_LIMIT}"})


LIST_PARAMS = ListParamsSchema()

#: GET /api/download: the signed link alone.
LINK_PARAMS = Schema.from_dict({"link": fields.String(required=True, validate=validate.Length(min=1, max=8192), metadata={
    "description": "The signed link from an export's /link route.", "allowed": "a link token"})},
    name="DownloadLinkParams")()


#: DELETE /api/runs/<id>: whether the media files only that run names go too.
DELETE_PARAMS = Schema.from_dict({"media": fields.Boolean(load_default=False, metadata={
    "description": "Also delete the media files that only this run names (inside RUN_HISTORY_MEDIA_DIR, "
                   "and on an S3 store under the bucket's media prefix).",
    "allowed": "true or false"})}, name="DeleteRunParams")()


class BulkExportLimitSchema(FilterParamsSchema):
    """GET /api/runs/export/<format>: the list filters; without ``limit``, every match."""

    limit = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_COUNT), metadata={
        "description": "At most this many runs (default: every match).", "allowed": f"an integer from 1 to {MAX_COUNT}"})


#: Options of the writers, by name; each exporter lists the ones it takes.
EXPORT_OPTIONS: dict[str, fields.Field] = {
    "shape": fields.String(validate=validate.OneOf(SHAPES), metadata={
        "description": "csv: one row per item (default for one run) or per run (default for bulk).",
        "allowed": list(SHAPES)}),
    "bom": fields.Boolean(load_default=False, metadata={
        "description": "csv: start with a UTF-8 byte order mark (for Excel).", "allowed": "true or false"}),
    "raw": fields.Boolean(load_default=False, metadata={
        "description": "csv: do not neutralize formula-like cells (for scripts).", "allowed": "true or false"}),
    # no default: absent unless asked for, so a writer never sees it (pseudonyms.prepare_export takes it)
    "pseudonymize": fields.Boolean(metadata={
        "description": "Replace user_id and session_id with keyed pseudonyms (u_..., s_...); the file name "
                       "gains _pseudonymized. Content and metadata are not rewritten.",
        "allowed": "true or false"}),
}
#: Options every export format takes (the others belong to the formats that list them).
COMMON_EXPORT_OPTIONS = ("pseudonymize",)


@functools.cache
def export_params(exporter: Exporter, bulk: bool) -> Schema:
    """The parameter schema of an export route: filters (bulk) plus the format's options."""
    options = {name: EXPORT_OPTIONS[name] for name in (*exporter.options, *COMMON_EXPORT_OPTIONS)}
    if not bulk:
        return Schema.from_dict(options, name=f"{exporter.name.title()}RunExportParams")()
    return type(f"{exporter.name.title()}BulkExportParams", (BulkExportLimitSchema,), dict(options))()


def load_query(schema: Schema, args: MultiDict[str, str]) -> tuple[RunQuery, dict[str, Any]]:
    """Validate a list or bulk-export request: (the query, the writer options)."""
    data = load_params(schema, args)
    options = {name: data.pop(name) for name in list(data) if name in EXPORT_OPTIONS}
    filters = RunFilters(
        config_name=data.get("config"), date=data.get("date"), date_from=data.get("date_from"),
        date_to=data.get("date_to"), user_id=data.get("user_id"), session_id=data.get("session_id"),
        execution_mode=data.get("execution_mode"), safety_level=data.get("safety_level"),
        status=data.get("status"), item_type=data.get("item_type"), model=data.get("model"),
        q=data.get("q"), ids=data.get("ids"))
    query = RunQuery(filters=filters, order_by=data["order_by"], order=data["order"],
                     limit=data.get("limit"), offset=data["offset"])
    return query, options


def load_params(schema: Schema, args: MultiDict[str, str]) -> Any:
    """Validate query arguments with *schema*: empty values are absent, unknown names rejected.

    :raises UnknownParameter: for a name the schema does not take.
    :raises InvalidParameter: for a repeated name or a bad value (names the parameter and
        what it allows).
    """
    allowed = sorted(schema.fields)
    given: dict[str, str] = {}
    for name in args:
        values = [v for v in args.getlist(name) if v != ""]
        if name not in schema.fields:
            raise UnknownParameter(f"Unknown parameter: {name}", parameter=name[:100], allowed=allowed)
        if len(values) > 1:
            raise InvalidParameter(f"Parameter given more than once: {name}", parameter=name,
                                   allowed=_allowed(schema, name))
        if values:
            given[name] = values[0]
    try:
        return schema.load(given)
    except ValidationError as err:
        name = sorted(err.messages)[0]
        raise InvalidParameter(f"Invalid value for {name}", parameter=name, value=given.get(name, "")[:200],
                               allowed=_allowed(schema, name), details=_first(err.messages[name])) from None


def _allowed(schema: Schema, name: str) -> Any:
    return schema.fields[name].metadata.get("allowed")


def _first(messages: Any) -> str:
    while isinstance(messages, (list, dict)):
        messages = next(iter(messages.values() if isinstance(messages, dict) else messages), "")
    return str(messages)
