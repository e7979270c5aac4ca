"""XLSX: sheets Runs, Items and About, written with openpyxl's write-only workbook.

Cells get native types (numbers, dates as naive UTC, text always as text, never a formula
or an error value such as ``#N/A``). Every string openpyxl gets (cells, headers, the About
sheet's labels and filter values) passes through :func:`excel_text`: characters an XLSX
file cannot hold (its XML is XML 1.0) are replaced visibly, the rest of the text kept. C0
controls but tab, CR, LF become their Unicode "control pictures" (U+0000 -> U+2400 ...);
noncharacters (U+FFFE, U+FFFF, U+FDD0-U+FDEF and every plane's last two code points) and
lone surrogates become U+FFFD. Text over Excel's 32,767 characters is cut with a visible
``…[truncated N characters]``. The workbook is built in a temporary file (an XLSX is a zip,
written at the end) and then streamed.
"""
from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from .. import __version__
from ..taxonomy import TAXONOMY_VERSION
from .cells import (
    ITEM_COLUMNS,
    RUN_COLUMNS,
    TIMESTAMP_COLUMNS,
    iter_item_rows,
    run_row,
    truncate,
)
from .info import ExportInfo

#: Rows per sheet Excel opens, the header included.
EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_CELL = 32_767
#: C0 controls but tab, CR and LF (-> control pictures); noncharacters (broken LLM output
#: holds U+FFFE/U+FFFF) and lone surrogates (-> U+FFFD): lxml, which openpyxl writes with,
#: refuses U+FFFE/U+FFFF and surrogates outright (they are not XML 1.0 Chars), and the other
#: noncharacters are not meant for interchange. One pattern: one pass over each string. It is
#: written as the characters kept, a few ranges, not those replaced: a class of 40 single
#: characters and ranges makes ``re`` five times slower on the corpus.
_NOT_EXCEL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufdcf\ufdf0-\ufffd" + "".join(
    f"{chr(plane << 16)}-{chr(plane << 16 | 0xFFFD)}" for plane in range(1, 17)) + "]")


def _replacement(match: re.Match[str]) -> str:
    code = ord(match.group())
    return chr(0x2400 + code) if code < 0x20 else "\ufffd"


_DATE_FORMAT = "yyyy-mm-dd hh:mm:ss"
_CHUNK = 256 * 1024
#: Column widths (characters) by column name; others get 14.
_WIDTHS = {"execution_id": 32, "config_name": 18, "timestamp": 20, "finished_at": 20, "run_timestamp": 20,
           "item_timestamp": 20, "item_type": 22, "model_used": 18, "content": 80, "metadata": 50,
           "file_path": 30, "user_id": 14, "session_id": 14}


def utf16_length(value: str) -> int:
    """Length as Excel counts it (UTF-16 code units: an emoji counts twice)."""
    return len(value) if value.isascii() else len(value.encode("utf-16-le")) // 2


def excel_text(value: str) -> str:
    """Text as an XLSX cell can hold it: C0 controls as control pictures, noncharacters and
    lone surrogates as U+FFFD, length capped. The one cleaner for every string openpyxl gets."""
    value = _NOT_EXCEL.sub(_replacement, value)
    if len(value) <= EXCEL_MAX_CELL // 2:  # short enough whatever it holds: skip measuring
        return value
    return truncate(value, EXCEL_MAX_CELL, utf16_length)


def _excel_time(value: str) -> dt.datetime | str:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return excel_text(value)  # not a time after all: it is text, and cleaned like text
    if parsed.tzinfo is not None:  # Excel has no time zones: UTC, as the About sheet says
        parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return parsed


class _Text(str):
    """Text openpyxl would not store as text by itself (a formula, an error value)."""


class _Sheet:
    """A write-only sheet with a bold frozen header, widths, a filter and typed cells."""

    def __init__(self, workbook: Workbook, title: str, columns: tuple[str, ...]) -> None:
        self.sheet = workbook.create_sheet(title)
        self.columns = columns
        self.rows = 1
        for number, name in enumerate(columns, start=1):
            self.sheet.column_dimensions[get_column_letter(number)].width = _WIDTHS.get(name, 14)
        self.sheet.freeze_panes = "A2"
        header = []
        for name in columns:
            cell = WriteOnlyCell(self.sheet, value=excel_text(name))  # the CSV column names (times: UTC, see About)
            cell.font = Font(bold=True)
            header.append(cell)
        self.sheet.append(header)

    def cells(self, values: tuple[Any, ...], start: int = 0, repeated: bool = False) -> list[Any]:
        """*values* (of the columns from index *start* on) as this sheet's cells: times as
        datetimes, text cleaned, text openpyxl would store as a formula or an error kept text.

        *repeated* values are for several rows: a time becomes one date cell they share
        (openpyxl gives a datetime its date format again on every row, at a cost).
        """
        cells: list[Any] = []
        for name, value in zip(self.columns[start:], values):
            if type(value) is str:
                value = _excel_time(value) if name in TIMESTAMP_COLUMNS else excel_text(value)
                if type(value) is str:
                    if value.startswith(("=", "#")) and (value[0] == "=" or value in ERROR_CODES):
                        value = _Text(value)
                elif repeated:  # a datetime
                    value = WriteOnlyCell(self.sheet, value)
            cells.append(value)
        return cells

    def repeated_cells(self, values: tuple[Any, ...], start: int) -> list[Any]:
        """:meth:`cells` for ``iter_item_rows``: the run's values (from column 0) are on every item row."""
        return self.cells(values, start, repeated=start == 0)

    def append(self, cells: list[Any]) -> None:
        """One row of :meth:`cells`' cells."""
        if _Text in map(type, cells):
            cells = [self._text_cell(value) if type(value) is _Text else value for value in cells]
        self.sheet.append(cells)
        self.rows += 1

    def _text_cell(self, value: str) -> WriteOnlyCell:
        cell = WriteOnlyCell(self.sheet, value=str(value))
        cell.data_type = "s"  # openpyxl would store "=..." as a formula, "#N/A" as an error
        return cell

    def close(self) -> None:
        last = get_column_letter(len(self.columns))
        self.sheet.auto_filter.ref = f"A1:{last}{self.rows}"


def write_xlsx(records: Iterable[dict[str, Any]], *, bulk: bool = False,
               info: ExportInfo | None = None) -> Iterator[bytes]:
    """The workbook, in chunks, once it is complete (the About sheet shows *info*)."""
    info = info or ExportInfo()
    workbook = Workbook(write_only=True)
    runs = _Sheet(workbook, "Runs", RUN_COLUMNS)
    items = _Sheet(workbook, "Items", ITEM_COLUMNS)
    for record in records:
        runs.append(runs.cells(run_row(record)))
        for row in iter_item_rows(record, items.repeated_cells):  # the run's cells made once for its items
            items.append(row)
    runs.close()
    items.close()
    about = workbook.create_sheet("About")
    about.column_dimensions["A"].width = 24
    about.column_dimensions["B"].width = 60
    for key, value in [("times", "every time in this workbook is UTC (Excel has no time zones)"),
                       ("exported_at", info.exported_at.astimezone(dt.timezone.utc).replace(tzinfo=None)),
                       ("runs", runs.rows - 1), ("item rows", items.rows - 1),
                       ("taxonomy_version", TAXONOMY_VERSION), ("app_version", __version__),
                       *((f"filter: {k}", v) for k, v in info.filters.items() if v is not None)]:
        label = WriteOnlyCell(about, value=excel_text(key))
        label.font = Font(bold=True)
        cell = WriteOnlyCell(about, value=excel_text(str(value)) if not isinstance(value, (int, dt.datetime)) else value)
        if isinstance(value, str):
            cell.data_type = "s"
        if isinstance(value, dt.datetime):
            cell.number_format = _DATE_FORMAT
        about.append([label, cell])
    with tempfile.TemporaryFile() as spool:
        workbook.save(spool)
        spool.seek(0)
        while chunk := spool.read(_CHUNK):
            yield chunk
