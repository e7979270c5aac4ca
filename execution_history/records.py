"""Run records and items: the one schema, its fast checker, id rules and JSON-safe values.

A record is kept as the plain JSON object of its file (a ``dict``): that is what the
API serves, what every exporter reads and what the index extracts from. Its shape is
defined once, by the marshmallow schemas below. They document the record (OpenAPI
uses them) and validate single records; the hot paths (indexing and exporting
hundreds of thousands of records) use :func:`parse_record`, a checker compiled from
the same schemas that only tests types, about 50x faster than ``Schema.validate``.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import secrets
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from marshmallow import INCLUDE, Schema, ValidationError, fields, missing, validate

from .errors import InvalidRecord
from .taxonomy import LEGACY_TAXONOMY_VERSION, RECORD_STAGES

#: ``exec_`` + UTC ``YYYYMMDD_HHMMSS`` + ``_`` + 8 lowercase hex digits.
EXECUTION_ID_PATTERN = r"exec_[0-9]{8}_[0-9]{6}_[0-9a-f]{8}"  # ASCII digits only (\d takes any script's)
_EXECUTION_ID_RE = re.compile(rf"\A{EXECUTION_ID_PATTERN}\Z")

#: Statuses a finished record may have (``running`` exists only while a journal does).
FINAL_STATUSES = ("completed", "blocked", "failed", "interrupted")
STATUSES = ("running", *FINAL_STATUSES)
#: Statuses a pipeline may pass to ``finalize``.
TRACKER_STATUSES = ("completed", "blocked", "failed")

DEFAULT_USER_ID = "anonymous"
DEFAULT_SESSION_ID = "default"

# ---------------------------------------------------------------- the field lists
# Every module that lists a record's fields takes them from here (exporters, OpenAPI, the
# index); test_records.py checks them against the schemas below.

#: A record file's run fields, in the contract's key order (API.md 1); ``items`` follows them.
RUN_FIELDS = ("execution_id", "config_name", "timestamp", "finished_at", "status", "execution_mode",
              "safety_level", "user_id", "session_id", "total_execution_time", "taxonomy_version")
#: Run fields only older files carry (API.md 1b): served, and exported, where a file has them.
OPTIONAL_RUN_FIELDS = ("used_seed",)
#: An item's fields, in the order the tracker writes them.
ITEM_FIELDS = ("sequence_number", "stage", "stage_iteration", "loop_iteration", "item_type", "timestamp",
               "content", "file_path", "model_used", "backend_used", "media_type", "config_used",
               "execution_time", "metadata")
#: The count of a record's items, derived: exports and summaries carry it beside the run fields.
ITEMS_COUNT = "items_count"
#: The run fields of an export (XML metadata, CSV/XLSX run rows): RUN_FIELDS with the item count.
EXPORT_RUN_FIELDS = (*RUN_FIELDS[:-1], ITEMS_COUNT, RUN_FIELDS[-1])
#: A run's summary, in the order the list API answers it (``GET /api/runs``; the index stores these).
SUMMARY_FIELDS = ("execution_id", "config_name", "timestamp", "status", "execution_mode", "safety_level",
                  "total_execution_time", ITEMS_COUNT, "user_id", "session_id", "taxonomy_version")
#: The run fields a tabular item row repeats (CSV/XLSX; ``timestamp`` named ``run_timestamp`` there).
ITEM_ROW_RUN_FIELDS = ("execution_id", "config_name", "timestamp", "status", "execution_mode", "safety_level",
                       "user_id", "session_id")
#: The item fields of a tabular item row, in its column order (``timestamp`` named ``item_timestamp``):
#: the long text and the metadata last, where a spreadsheet reader expects them.
ITEM_ROW_FIELDS = ("sequence_number", "stage", "stage_iteration", "loop_iteration", "item_type", "timestamp",
                   "model_used", "backend_used", "media_type", "config_used", "execution_time", "file_path",
                   "content", "metadata")


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A checked record's summary (SUMMARY_FIELDS), as the list API shows a run."""
    return {name: len(record["items"]) if name == ITEMS_COUNT else record.get(name) for name in SUMMARY_FIELDS}


def build_record(header: Mapping[str, Any], items: list[dict[str, Any]], status: str,
                 finished_at: str | None) -> dict[str, Any]:
    """A run's record from its header and items: the one place both the tracker and the
    journal's recovery make one, so they write the same bytes.

    *header* holds the run fields known at the start (``execution_id``, ``config_name``,
    ``timestamp``, ``execution_mode``, ``safety_level``, ``user_id``, ``session_id``,
    ``taxonomy_version``; a missing optional one is null). ``total_execution_time`` is
    *finished_at* minus ``timestamp`` in seconds (never negative, 6 decimals), null when
    *finished_at* is (a run in progress). Keys in RUN_FIELDS order, then ``items`` (the
    list itself, not a copy). Nothing is checked here: callers that read a journal
    follow with :func:`check_record`.
    """
    total = None
    if finished_at is not None:
        seconds = (parse_timestamp(finished_at) - parse_timestamp(header["timestamp"])).total_seconds()
        total = round(max(seconds, 0.0), 6)
    derived = {"finished_at": finished_at, "status": status, "total_execution_time": total}
    record = {name: derived[name] if name in derived else header.get(name) for name in RUN_FIELDS}
    record["items"] = items
    return record


def is_valid_execution_id(value: object) -> bool:
    """True if *value* is a well-formed execution id (the only ids that become paths)."""
    return isinstance(value, str) and _EXECUTION_ID_RE.match(value) is not None


def new_execution_id(now: dt.datetime | None = None) -> str:
    """A fresh execution id for a run starting at *now* (UTC); 32 random bits keep it unique."""
    now = (now or utc_now()).astimezone(dt.timezone.utc)
    return f"exec_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def format_timestamp(value: dt.datetime) -> str:
    """ISO 8601 with an explicit offset; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


def parse_timestamp(value: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp; one without an offset is read as UTC.

    (A checked record holds no naive timestamp: :func:`check_record` reads those of older
    files in the naive time zone and converts them to UTC.)

    :raises ValueError: if *value* is not ISO 8601.
    """
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed


# ---------------------------------------------------------------- the naive time zone

#: The zone naive timestamps of older record files are read in (RUN_HISTORY_NAIVE_TIMEZONE).
#: A process-wide setting, because every reader of records (the app, the CLI, the index's
#: worker processes) must read a file the same way; create_app sets it.
_naive_zone: dt.tzinfo = dt.timezone.utc
_naive_zone_name = "UTC"


def set_naive_timezone(name: str) -> None:
    """Read naive timestamps of older files in the IANA zone *name* from now on (this process).

    :raises ValueError: if *name* is not a known IANA time zone.
    """
    global _naive_zone, _naive_zone_name
    if not isinstance(name, str) or not name:
        raise ValueError(f"RUN_HISTORY_NAIVE_TIMEZONE must name an IANA time zone, not {name!r}")
    try:
        # the default needs no time zone database (a slim image may have none)
        zone = dt.timezone.utc if name == "UTC" else zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: a malformed key like "../x"
        raise ValueError(f"RUN_HISTORY_NAIVE_TIMEZONE: unknown time zone {name!r} "
                         "(an IANA name such as 'UTC' or 'Europe/Berlin')") from None
    _naive_zone, _naive_zone_name = zone, name


def naive_timezone() -> str:
    """The name of the zone naive timestamps are read in (to hand to worker processes)."""
    return _naive_zone_name


# ---------------------------------------------------------------- the schema


def _validate_timestamp(value: str) -> None:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("Not an ISO 8601 timestamp.") from None


def _timestamp_field(**kwargs: Any) -> fields.String:
    """An ISO 8601 timestamp, kept as the string the file holds."""
    kwargs.setdefault("metadata", {})["format"] = "date-time"
    return fields.String(validate=_validate_timestamp, **kwargs)


class RunItemSchema(Schema):
    """One logged step of a run."""

    class Meta:
        unknown = INCLUDE  # fields written by newer code are kept, never dropped

    sequence_number = fields.Integer(required=True, strict=True, validate=validate.Range(min=1),
                                     metadata={"description": "1, 2, 3 ... global order within the run"})
    stage = fields.Integer(required=True, strict=True,
                           validate=validate.Range(RECORD_STAGES.start, RECORD_STAGES.stop - 1),
                           metadata={"description": "Pipeline stage 0-4 (5: an older file's pipeline_complete)"})
    stage_iteration = fields.Integer(load_default=None, allow_none=True, strict=True,
                                     metadata={"description": "Iteration of a recursive stage, else null"})
    loop_iteration = fields.Integer(load_default=None, allow_none=True, strict=True,
                                    metadata={"description": "Iteration of the multi-output loop, else null"})
    item_type = fields.String(required=True, metadata={"description": "A name from the taxonomy"})
    timestamp = _timestamp_field(required=True, metadata={"description": "When it was logged (UTC)"})
    content = fields.String(load_default=None, allow_none=True, metadata={"description": "The text, or null"})
    file_path = fields.String(load_default=None, allow_none=True, metadata={"description": "Path of a media output"})
    model_used = fields.String(load_default=None, allow_none=True)
    backend_used = fields.String(load_default=None, allow_none=True,
                                 metadata={"description": "Older files may say backend_type: served here, "
                                                          "the original key kept"})
    media_type = fields.String(load_default=None, allow_none=True,
                               metadata={"description": "text, image, audio, music, video, 3d or metadata "
                                                        "(null in files of taxonomy 1.0 written without it)"})
    config_used = fields.String(load_default=None, allow_none=True,
                                metadata={"description": "The configuration this step ran with, or null"})
    execution_time = fields.Float(load_default=None, allow_none=True, metadata={"description": "Seconds"})
    metadata = fields.Dict(load_default=dict, metadata={"description": "Model params, safety results, anything else"})


class RunRecordSchema(Schema):
    """A finished (or interrupted) run, as stored in ``<data dir>/<execution_id>.json``."""

    class Meta:
        unknown = INCLUDE

    execution_id = fields.String(required=True, validate=validate.Regexp(_EXECUTION_ID_RE),
                                 metadata={"pattern": EXECUTION_ID_PATTERN})
    config_name = fields.String(required=True)
    timestamp = _timestamp_field(required=True, metadata={"description": "Run start"})
    finished_at = _timestamp_field(load_default=None, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES),
                           metadata={"description": "Inferred from the items for older files without one"})
    execution_mode = fields.String(load_default=None, allow_none=True)
    safety_level = fields.String(load_default=None, allow_none=True)
    user_id = fields.String(load_default=DEFAULT_USER_ID)
    session_id = fields.String(load_default=DEFAULT_SESSION_ID)
    total_execution_time = fields.Float(load_default=None, allow_none=True, metadata={"description": "Seconds"})
    taxonomy_version = fields.String(load_default=LEGACY_TAXONOMY_VERSION,
                                     metadata={"description": "1.1 for new records; 1.0 for a file without one"})
    # Optional, no default: only older files carry it, and a record is served as its file holds it.
    used_seed = fields.Integer(allow_none=True, strict=True,
                               metadata={"description": "The seed an older run used (only in files that have it)"})
    items = fields.List(fields.Nested(RunItemSchema), required=True)


#: Timestamp fields: checked with ``parse_timestamp`` and given an offset when they lack one.
_TIMESTAMP_FIELDS = frozenset({"timestamp", "finished_at"})


_MISSING = object()


def _check_timestamp(data: dict, name: str, value: str, where: str) -> None:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord(f"{where}: {name!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:  # older files: local time of the naive zone, served in UTC
        try:
            data[name] = parsed.replace(tzinfo=_naive_zone).astimezone(dt.timezone.utc).isoformat()
        except OverflowError:  # 0001-01-01 in a zone east of UTC
            raise InvalidRecord(f"{where}: {name!r} is out of range") from None


def _compile_checker(schema: Schema, label: str) -> Callable[[dict, object], None]:
    """Compile *schema*'s fields into one straight-line function that checks a parsed dict.

    Generated code, because this runs for every item of every file the index reads
    (millions): a loop over field descriptions costs three times as much. Types are
    compared exactly (``json.loads`` makes no subclasses), which also keeps ``True``
    out of integer fields.
    """
    kinds = {fields.Integer: ("int",), fields.Float: ("float", "int"), fields.String: ("str",),
             fields.Dict: ("dict",), fields.List: ("list",)}
    namespace: dict[str, Any] = {"MISSING": _MISSING, "InvalidRecord": InvalidRecord,
                                 "check_timestamp": _check_timestamp}
    lines = ["def check(data, where):"]  # where: the item's position, for messages
    for number, (name, field) in enumerate(schema.fields.items()):
        types = next(t for kind, t in kinds.items() if isinstance(field, kind))
        namespace[f"default_{number}"] = field.load_default
        if field.required:
            when_missing = f'        raise InvalidRecord(f"{label}: missing field {name!r}")'
        elif field.load_default is missing:  # optional without a default: absent stays absent
            when_missing = "        pass"
        else:
            when_missing = f"        data[{name!r}] = default_{number}() if callable(default_{number}) else default_{number}"
        # the usual case first: present with the right type is one or two identity tests
        lines += [f"    value = data.get({name!r}, MISSING)",
                  "    kind = type(value)",
                  "    if " + " or ".join(f"kind is {t}" for t in types) + ":",
                  f'        check_timestamp(data, {name!r}, value, f"{label}")' if name in _TIMESTAMP_FIELDS
                  else "        pass",
                  "    elif value is MISSING:",
                  when_missing,
                  "    elif value is None:",
                  "        pass" if field.allow_none else f'        raise InvalidRecord(f"{label}: {name!r} is null")',
                  "    else:",
                  f'        raise InvalidRecord(f"{label}: {name!r} has the wrong type")']
    exec("\n".join(lines), namespace)  # noqa: S102 - code built above from the schema, no outside input
    return namespace["check"]


_check_record_fields = _compile_checker(RunRecordSchema(), "record")
_check_item_fields = _compile_checker(RunItemSchema(), "item {where}")


def check_record(data: object, execution_id: str | None = None) -> dict:
    """Check that *data* is a run record, fill documented defaults and upgrade older files, in place.

    This is the one place where files of the earlier tracker (API.md 1b) become records:
    a missing ``status`` is inferred from the items and a missing ``finished_at`` is
    ``timestamp`` + ``total_execution_time``; naive timestamps are read in the naive
    time zone (:func:`set_naive_timezone`) and given as UTC; an item's ``backend_type``
    is served as ``backend_used``. Unknown extra fields, ``backend_type`` included, are
    kept untouched. Only the parsed object changes, never a file.

    :param execution_id: if given, the record's own id must equal it (the file name).
    :raises InvalidRecord: with a message naming the first problem found.
    """
    if type(data) is not dict:
        raise InvalidRecord("record: not a JSON object")
    if "status" not in data and type(data.get("items")) is list:
        data["status"] = status_of(item.get("item_type") for item in data["items"] if type(item) is dict)
    infer_finished = "finished_at" not in data
    _check_record_fields(data, 0)
    if infer_finished:
        data["finished_at"] = _inferred_finished_at(data["timestamp"], data["total_execution_time"])
    if not is_valid_execution_id(data["execution_id"]):
        raise InvalidRecord("record: malformed execution_id")
    if execution_id is not None and data["execution_id"] != execution_id:
        raise InvalidRecord("record: execution_id does not match its file name")
    if data["status"] not in STATUSES:
        raise InvalidRecord("record: unknown status")
    for position, item in enumerate(data["items"], start=1):
        if type(item) is not dict:
            raise InvalidRecord(f"item {position}: not a JSON object")
        _check_item_fields(item, position)
        if item["stage"] not in RECORD_STAGES:
            raise InvalidRecord(f"item {position}: stage out of range")
        # backend_type: the earlier tracker's name for backend_used (December 2025 on)
        if item["backend_used"] is None and type(item.get("backend_type")) is str:
            item["backend_used"] = item["backend_type"]
    return data


def status_of(item_types: Iterable[Any], unfinished: str = "interrupted") -> str:
    """The status a run's item types imply (API.md 1b): ``failed`` after a ``pipeline_error``,
    else ``blocked`` after a ``stage1_blocked``, else ``completed`` after a ``pipeline_complete``,
    else *unfinished* (an older file: ``interrupted``; ``finalize()`` says ``completed``)."""
    types = set(item_types)
    if "pipeline_error" in types:
        return "failed"
    if "stage1_blocked" in types:
        return "blocked"
    if "pipeline_complete" in types:
        return "completed"
    return unfinished


def _inferred_finished_at(timestamp: str, total: float | None) -> str | None:
    """An older file's end: its (checked, aware) start plus its duration, null if that is missing."""
    if total is None:
        return None
    try:
        return (dt.datetime.fromisoformat(timestamp) + dt.timedelta(seconds=total)).isoformat()
    except (OverflowError, ValueError):  # a duration no calendar holds
        return None


def parse_record(raw: bytes | str, execution_id: str | None = None) -> dict:
    """Parse the bytes of a record file and check them (see :func:`check_record`).

    orjson reads strict JSON about twice as fast as the standard library, which matters
    when the index reads every file. What it refuses but older files may hold (NaN,
    lone surrogate escapes, huge integers) is read leniently and made JSON-safe.

    :raises InvalidRecord: if the bytes are not UTF-8 JSON or not a run record.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _parse_lenient(raw)
    return check_record(data, execution_id)


def _parse_lenient(raw: bytes | str) -> Any:
    try:  # NaN/Infinity read as null; integers as orjson reads them
        data = json.loads(raw, parse_constant=lambda name: None, parse_int=_json_int)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRecord(f"not JSON: {err.__class__.__name__}") from None
    return make_json_safe(data)


def _json_int(text: str) -> int | float | None:
    """A JSON integer as :func:`parse_record`'s strict path (orjson) reads it: exact within
    64 bits (-2**63 to 2**64 - 1), else the nearest float, null if it has none (too big).

    A file read leniently (it holds a NaN, say) then gives the same values as one read
    strictly, and never an integer that orjson cannot write back (every export would fail).
    """
    if len(text) - text.startswith("-") <= 20:  # no int() of thousands of digits (Python refuses)
        value = int(text)
        if -2**63 <= value < 2**64:
            return value
    near = float(text)
    return near if math.isfinite(near) else None


def dump_record(record: Mapping[str, Any]) -> bytes:
    """The bytes of a record file: strict UTF-8 JSON, human-readable.

    :raises ValueError: for NaN/Infinity or lone surrogates (``make_json_safe`` prevents both).
    """
    text = json.dumps(record, ensure_ascii=False, allow_nan=False, indent=1)
    return text.encode("utf-8") + b"\n"


# ---------------------------------------------------------------- JSON-safe values

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 64


def make_json_safe(value: Any, _depth: int = 0, _seen: frozenset = frozenset()) -> Any:
    """Turn any value into one JSON carries faithfully, the documented way.

    - ``str``: lone surrogates (broken LLM output) become U+FFFD.
    - ``float``: NaN and +/-Infinity become ``None``.
    - ``bytes``: decoded as UTF-8 if they are valid UTF-8, else ``"base64:" + base64``.
    - ``datetime``/``date``/``time``: ISO 8601 strings (naive datetimes read as UTC).
    - ``set``/``frozenset``: sorted lists; tuples and other sequences: lists.
    - mappings: dicts with string keys; other objects: ``str(value)``.
    - cycles and nesting deeper than 64 levels become ``"<recursion>"``.
    """
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum and friends become plain numbers
    if isinstance(value, str):
        return _SURROGATE_RE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if _depth >= _MAX_DEPTH or id(value) in _seen:
        return "<recursion>"
    seen = _seen | {id(value)}
    if isinstance(value, Mapping):
        return {_safe_key(k): make_json_safe(v, _depth + 1, seen) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [make_json_safe(v, _depth + 1, seen) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [make_json_safe(v, _depth + 1, seen) for v in value]
    return make_json_safe(_to_text(value))


def _safe_key(key: Any) -> str:
    return make_json_safe(key if isinstance(key, str) else _to_text(key))


def _to_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the item
        return object.__repr__(value)


def make_text(value: Any) -> str | None:
    """Content as text: strings made safe, other values as their JSON-safe text."""
    if value is None:
        return None
    safe = make_json_safe(value)
    return safe if isinstance(safe, str) else json.dumps(safe, ensure_ascii=False)
