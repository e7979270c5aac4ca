"""CSV: RFC 4180 (CRLF, minimal quoting), UTF-8, header row always, formula cells neutralized."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import InvalidParameter
from ..record_cache import derived
from ..records import ITEM_ROW_RUN_FIELDS
from .cells import FORMULA_TRIGGERS, ITEM_COLUMNS, RUN_COLUMNS, item_row_head, item_row_tail, run_row
from .info import ExportInfo

SHAPES = ("items", "runs")
#: FORMULA_TRIGGERS as a set: each is one character, so ``v[:1] in`` it is ``v.startswith(...)``.
_TRIGGERS = frozenset(FORMULA_TRIGGERS)
#: The line of a run without items: its item columns empty.
_NO_ITEM = "," * (len(ITEM_COLUMNS) - len(ITEM_ROW_RUN_FIELDS)) + "\r\n"
#: The text a chunk holds at least.
_FLUSH_CHARS = 64 * 1024


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
    """The CSV's bytes, about 64 KB at a time: lines built as text (:func:`csv_line`), joined
    and encoded once a chunk. A run's item rows are made once per file (``derived``: read
    again unchanged, a run's rows are not made again)."""
    pieces = ["\ufeff" if bom else "", csv_line(ITEM_COLUMNS if shape == "items" else RUN_COLUMNS, True), "\r\n"]
    size = 0
    for record in records:
        if shape == "runs":
            text = csv_line(run_row(record), raw) + "\r\n"
        else:
            text = derived(record, ("csv items", raw), lambda: _item_lines(record, raw))
        pieces.append(text)
        size += len(text)
        if size >= _FLUSH_CHARS:
            yield "".join(pieces).encode("utf-8")
            pieces, size = [], 0
    yield "".join(pieces).encode("utf-8")


def _item_lines(record: dict[str, Any], raw: bool) -> str:
    """A run's item rows, line ends included (its columns formatted once for all its items)."""
    head = csv_line(item_row_head(record), raw)
    if not record["items"]:
        return head + _NO_ITEM
    return "".join([piece for item in record["items"]
                    for piece in (head, ",", csv_line(item_row_tail(item), raw), "\r\n")])


def csv_line(values: Iterable[Any], raw: bool = False) -> str:
    """One CSV line without its line end: what the stdlib ``csv.writer`` (excel dialect,
    ``QUOTE_MINIMAL``, ``lineterminator="\\r\\n"``) writes for a row of more than one cell,
    formula-like text neutralized first unless *raw* (:func:`~.cells.neutralize`).

    A text cell holding ``"``, ``,``, CR or LF is quoted, its quotes doubled; None is empty;
    numbers are ``str()`` (``repr`` for floats, the same text). Built with str methods, which
    scan a long text cell at memory speed where the csv module looks at each character in
    turn: the bulk of an items export is long text (tests/test_csv_neutralize.py holds the
    two to the same bytes).
    """
    if raw:
        return ",".join([('"' + v.replace('"', '""') + '"' if '"' in v or "," in v or "\n" in v or "\r" in v else v)
                         if type(v) is str else "" if v is None else str(v) for v in values])
    return ",".join([(('"' + v.replace('"', '""') + '"' if '"' in v or "," in v or "\n" in v or "\r" in v else v)
                      if v[:1] not in _TRIGGERS else _quoted("'" + v))
                     if type(v) is str else "" if v is None else str(v) for v in values])


def _quoted(text: str) -> str:
    """*text* as a CSV cell (see :func:`csv_line`)."""
    return '"' + text.replace('"', '""') + '"' if '"' in text or "," in text or "\n" in text or "\r" in text else text
