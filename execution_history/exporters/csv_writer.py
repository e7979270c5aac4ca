"""CSV: RFC 4180 (CRLF, minimal quoting), UTF-8, header row always, formula cells neutralized."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import InvalidParameter
from .cells import FORMULA_TRIGGERS, ITEM_COLUMNS, RUN_COLUMNS, iter_item_rows, run_row
from .info import ExportInfo

SHAPES = ("items", "runs")
#: FORMULA_TRIGGERS as a set: each is one character, so ``v[:1] in`` it is ``v.startswith(...)``.
_TRIGGERS = frozenset(FORMULA_TRIGGERS)
_RUN_PART = len(ITEM_COLUMNS) - 14  # the run's columns that start every item row
_FLUSH_BYTES = 64 * 1024
_BATCH_ROWS = 256


def write_csv(records: Iterable[dict[str, Any]], *, bulk: bool = False, info: ExportInfo | None = None,
              shape: str | None = None, bom: bool = False, raw: bool = False) -> Iterator[bytes]:
    """Rows of the records: ``shape="items"`` (default for one run) or ``"runs"`` (default for bulk).

    For run rows, a record may also be a run's export fields alone (``items_count`` instead of
    ``items``), as the index gives them (:func:`takes_run_rows`).

    :param bom: start with a UTF-8 byte order mark (for Excel).
    :param raw: do not neutralize formula-like text (for scripts).
    :raises InvalidParameter: for another shape (raised before the first byte).
    """
    shape = shape or ("runs" if bulk else "items")
    if shape not in SHAPES:
        raise InvalidParameter("Invalid value for shape", parameter="shape", value=shape[:100], allowed=list(SHAPES))
    return _rows(records, shape, bom, raw)


def takes_run_rows(options: dict[str, Any]) -> bool:
    """True if a bulk CSV with these options writes run rows only (the default shape), which
    need a run's fields but not its items: the index gives them without reading record files."""
    return (options.get("shape") or "runs") == "runs"


def _rows(records: Iterable[dict[str, Any]], shape: str, bom: bool, raw: bool) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ITEM_COLUMNS if shape == "items" else RUN_COLUMNS)
    prefix = "\ufeff" if bom else ""
    pending: list[Any] = []  # rows handed to the writer a batch at a time (one C call, not one a row)
    for record in records:
        if shape == "runs":
            row = run_row(record)
            pending.append(row if raw else ["'" + v if type(v) is str and v[:1] in _TRIGGERS else v for v in row])
        else:
            pending += iter_item_rows(record) if raw else _neutralized_item_rows(record)
        if len(pending) >= _BATCH_ROWS:
            writer.writerows(pending)
            pending.clear()
            if buffer.tell() >= _FLUSH_BYTES:
                yield (prefix + buffer.getvalue()).encode("utf-8")
                prefix = ""
                buffer.seek(0)
                buffer.truncate()
    writer.writerows(pending)
    yield (prefix + buffer.getvalue()).encode("utf-8")


def _neutralized_item_rows(record: dict[str, Any]) -> list[list[Any]]:
    """:func:`iter_item_rows` with formula-like text neutralized (what :func:`neutralize`
    does to each text cell), the run's columns done once per run instead of once per item."""
    rows = iter_item_rows(record)
    first = next(rows)
    head = ["'" + v if type(v) is str and v[:1] in _TRIGGERS else v for v in first[:_RUN_PART]]
    out = []
    for row in (first, *rows):
        cells = head.copy()
        cells += ["'" + v if type(v) is str and v[:1] in _TRIGGERS else v for v in row[_RUN_PART:]]
        out.append(cells)
    return out
