"""Record -> rows, shared by the tabular formats (CSV, XLSX): columns, values, safety rules."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ..records import EXPORT_RUN_FIELDS, ITEM_ROW_FIELDS, ITEM_ROW_RUN_FIELDS, ITEMS_COUNT

#: One row per run.
RUN_COLUMNS = EXPORT_RUN_FIELDS
#: One row per item, the run's columns repeated (the two timestamps told apart by name). Fields
#: beyond these (a run's used_seed, an item's backend_type, unknown extras) are in JSON, JSON Lines
#: and XML only.
ITEM_COLUMNS = (*("run_timestamp" if name == "timestamp" else name for name in ITEM_ROW_RUN_FIELDS),
                *("item_timestamp" if name == "timestamp" else name for name in ITEM_ROW_FIELDS))
#: Item columns that hold timestamps (XLSX turns them into dates).
TIMESTAMP_COLUMNS = frozenset({"timestamp", "finished_at", "run_timestamp", "item_timestamp"})

#: First characters that make a spreadsheet evaluate a cell (OWASP CSV injection), plus
#: the quote itself, so that neutralizing stays reversible: strip one leading "'".
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def run_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """The values of a record's run row, in RUN_COLUMNS order (None for null). *record* may
    also be the run fields alone, ``items_count`` given instead of ``items`` (from the index)."""
    return (record["execution_id"], record["config_name"], record["timestamp"], record["finished_at"],
            record["status"], record["execution_mode"], record["safety_level"], record["user_id"],
            record["session_id"], record["total_execution_time"],
            len(record["items"]) if "items" in record else record[ITEMS_COUNT], record["taxonomy_version"])


def iter_item_rows(record: dict[str, Any], cells: Callable[[tuple[Any, ...], int], Any] | None = None
                   ) -> Iterator[Any]:
    """The values of a record's item rows, in ITEM_COLUMNS order; metadata as compact JSON.

    A run without items still gets one row (its item columns empty), so that no run
    vanishes from an items export. *cells*, if given, turns values into what a writer
    wants; it is called with the values and the index of their first column, the run's
    values once for all its items, then each item's, and a row is the two concatenated.
    """
    convert = cells or _as_is
    head = item_row_head(record)
    start = len(head)
    head = convert(head, 0)
    if not record["items"]:
        yield head + convert((None,) * (len(ITEM_COLUMNS) - start), start)
    for item in record["items"]:
        yield head + convert(item_row_tail(item), start)


def _as_is(values: tuple[Any, ...], start: int) -> tuple[Any, ...]:
    return values


def item_row_head(record: dict[str, Any]) -> tuple[Any, ...]:
    """The run's values that start each of its item rows (ITEM_ROW_RUN_FIELDS)."""
    return (record["execution_id"], record["config_name"], record["timestamp"], record["status"],
            record["execution_mode"], record["safety_level"], record["user_id"], record["session_id"])


def item_row_tail(item: dict[str, Any]) -> tuple[Any, ...]:
    """An item's values in an item row, after the run's (ITEM_ROW_FIELDS; metadata as JSON text)."""
    return (item["sequence_number"], item["stage"], item["stage_iteration"], item["loop_iteration"],
            item["item_type"], item["timestamp"], item["model_used"], item["backend_used"], item["media_type"],
            item["config_used"], item["execution_time"], item["file_path"], item["content"],
            metadata_text(item["metadata"]))


def metadata_text(metadata: dict[str, Any]) -> str:
    """Item metadata as compact JSON text (non-ASCII kept as is)."""
    return orjson.dumps(metadata).decode("utf-8")


def neutralize(value: str) -> str:
    """Prefix ``'`` to text a spreadsheet would run as a formula (reverse: drop one leading ``'``)."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def truncate(value: str, limit: int, measure: Callable[[str], int] = len) -> str:
    """*value* cut to at most *limit* (as *measure* counts), ending with a visible marker when cut.

    The marker counts the characters (code points) cut off.
    """
    if measure(value) <= limit:
        return value
    cut = limit
    while True:  # the marker's own length depends on the number it carries: find the fitting cut
        marker = f"…[truncated {len(value) - cut} characters]"
        over = measure(value[:cut]) + measure(marker) - limit
        if over <= 0:
            return value[:cut] + marker
        cut -= max(1, over // 2)
