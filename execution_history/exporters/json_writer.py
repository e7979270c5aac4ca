"""JSON and JSON Lines: lossless, streamed record by record."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from .info import ExportInfo

#: Characters valid in JSON strings that line-splitting readers (str.splitlines, JavaScript)
#: take for line breaks; written as escapes, which every JSON parser reads back unchanged.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def dump_json(record: dict[str, Any]) -> bytes:
    """One record as compact UTF-8 JSON on a single line (orjson: fast, strict, exact floats)."""
    data = orjson.dumps(record)
    for raw, escaped in _LINE_BREAKS:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def write_json(records: Iterable[dict[str, Any]], *, bulk: bool = False, info: ExportInfo | None = None) -> Iterator[bytes]:
    """The record (bulk: a JSON array of records, one per line)."""
    if not bulk:
        for record in records:
            yield dump_json(record) + b"\n"
        return
    separator = b"[\n"
    for record in records:
        yield separator + dump_json(record)
        separator = b",\n"
    yield b"[]\n" if separator == b"[\n" else b"\n]\n"


def write_jsonl(records: Iterable[dict[str, Any]], *, bulk: bool = False, info: ExportInfo | None = None) -> Iterator[bytes]:
    """One record per line."""
    for record in records:
        yield dump_json(record) + b"\n"
