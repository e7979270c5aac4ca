"""CSV: RFC 4180 (CRLF, minimal quoting), UTF-8, header row always, formula cells neutralized."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import InvalidParameter
from .cells import ITEM_COLUMNS, RUN_COLUMNS, iter_item_rows, neutralize, run_row
from .info import ExportInfo

SHAPES = ("items", "runs")
_FLUSH_BYTES = 64 * 1024


def write_csv(records: Iterable[dict[str, Any]], *, bulk: bool = False, info: ExportInfo | None = None,
              shape: str | None = None, bom: bool = False, raw: bool = False) -> Iterator[bytes]:
    """Rows of the records: ``shape="items"`` (default for one run) or ``"runs"`` (default for bulk).

    :param bom: start with a UTF-8 byte order mark (for Excel).
    :param raw: do not neutralize formula-like text (for scripts).
    :raises InvalidParameter: for another shape (raised before the first byte).
    """
    shape = shape or ("runs" if bulk else "items")
    if shape not in SHAPES:
        raise InvalidParameter("Invalid value for shape", parameter="shape", value=shape[:100], allowed=list(SHAPES))
    return _rows(records, shape, bom, raw)


def _rows(records: Iterable[dict[str, Any]], shape: str, bom: bool, raw: bool) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ITEM_COLUMNS if shape == "items" else RUN_COLUMNS)
    prefix = "\ufeff" if bom else ""
    for record in records:
        rows = iter_item_rows(record) if shape == "items" else (run_row(record),)
        # csv writes None as an empty cell; only text may need neutralizing
        writer.writerows(rows if raw else ([neutralize(v) if type(v) is str else v for v in row] for row in rows))
        if buffer.tell() >= _FLUSH_BYTES:
            yield (prefix + buffer.getvalue()).encode("utf-8")
            prefix = ""
            buffer.seek(0)
            buffer.truncate()
    yield (prefix + buffer.getvalue()).encode("utf-8")
