"""The exporter registry: format name -> streaming writer, with aliases and planned formats."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..filters import RunQuery

from ..errors import ExportTooLarge, FormatNotImplemented, InvalidFormat
from .csv_writer import takes_run_rows, write_csv
from .info import ExportInfo
from .json_writer import write_json, write_jsonl
from .xlsx_writer import EXCEL_MAX_ROWS, write_xlsx
from .xml_writer import write_xml
from .zip_writer import write_zip
from ..pseudonyms import prepare_export


class Selection(Protocol):
    """What an export needs to know of a selection: its counts and its ids in order (the
    index answers both; the exporters never import it)."""

    def count_rows(self, query: RunQuery, user_scope: str | None = None) -> tuple[int, int]:
        """(runs, item rows) the query selects."""

    def iter_ids(self, query: RunQuery, user_scope: str | None = None) -> Iterator[str]:
        """The selected ids, in the query's order."""

    def iter_listed_records(self, store: Records, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """The records of listed ids; one gone since it was listed raises (the count must hold)."""

    def iter_run_rows(self, query: RunQuery, user_scope: str | None = None) -> Iterator[dict[str, Any]]:
        """The selected runs' export run fields without their items (EXPORT_RUN_FIELDS), in order."""


class Records(Protocol):
    """Where the records come from (any store)."""

    def iter_records(self, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """The records of these ids, in that order."""


@dataclass(frozen=True)
class Exporter:
    """One export format: how it is served and the writer that produces it."""

    name: str                                # "csv", the path segment
    mimetype: str                            # "text/csv; charset=utf-8"
    extension: str                           # ".csv"
    write: Callable[..., Iterator[bytes]]    # write(records, *, bulk, info, **options)
    options: tuple[str, ...] = ()            # query parameters the writer takes
    max_rows: int | None = None              # item rows a sheet can hold, checked before streaming
    media: bool = False                      # the writer reads media files: callers pass media_root=
    run_rows: Callable[[dict[str, Any]], bool] | None = None  # options -> a bulk export needs run fields only


EXPORTERS: dict[str, Exporter] = {
    "json": Exporter("json", "application/json; charset=utf-8", ".json", write_json),
    "jsonl": Exporter("jsonl", "application/x-ndjson; charset=utf-8", ".jsonl", write_jsonl),
    "csv": Exporter("csv", "text/csv; charset=utf-8", ".csv", write_csv, options=("shape", "bom", "raw"),
                    run_rows=takes_run_rows),
    "xml": Exporter("xml", "application/xml; charset=utf-8", ".xml", write_xml),
    "xlsx": Exporter("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx",
                     write_xlsx, max_rows=EXCEL_MAX_ROWS - 1),
    "zip": Exporter("zip", "application/zip", ".zip", write_zip, media=True),
}
ALIASES = {"excel": "xlsx"}
__all__ = ["ALIASES", "EXPORTERS", "PLANNED", "ExportInfo", "Exporter", "check_fits", "export_selection", "get_exporter"]
#: Formats announced but not built yet (501).
PLANNED = {"pdf": "PDF", "docx": "DOCX"}


def get_exporter(name: str) -> Exporter:
    """The exporter for a format name (case-insensitive, aliases allowed).

    :raises FormatNotImplemented: for a planned format (pdf, docx).
    :raises InvalidFormat: for anything else.
    """
    key = name.lower()
    key = ALIASES.get(key, key)
    if key in EXPORTERS:
        return EXPORTERS[key]
    if key in PLANNED:
        raise FormatNotImplemented(f"{PLANNED[key]} export not yet implemented", status="planned",
                                   details="This format will be available in a future release")
    raise InvalidFormat("Invalid export format", format=name[:100], supported_formats=[*EXPORTERS, *PLANNED],
                        available_now=list(EXPORTERS))


def check_fits(exporter: Exporter, index: Selection, query: RunQuery, user_scope: str | None = None) -> int:
    """How many finished runs *query* selects, once it is sure the format can hold them.

    Shared by the bulk route, the CLI and export jobs (checked when a job is queued).

    :raises ExportTooLarge: if the format cannot hold the selection.
    """
    runs, item_rows = index.count_rows(query, user_scope)
    if exporter.max_rows is not None and max(runs, item_rows) > exporter.max_rows:
        raise ExportTooLarge(f"Export too large for {exporter.name}", format=exporter.name, runs=runs,
                             item_rows=item_rows, max_rows=exporter.max_rows,
                             hint="Narrow the filters, or export as csv or jsonl, which have no row limit")
    return runs


def export_selection(exporter: Exporter, index: Selection, store: Records, query: RunQuery,
                     options: dict[str, Any], user_scope: str | None = None,
                     now: dt.datetime | None = None,
                     tap: Callable[[Iterable[dict[str, Any]]], Iterable[dict[str, Any]]] = iter,
                     secret_key: str | None = None) -> tuple[int, Iterator[bytes]]:
    """(runs selected, the export's chunks) for every run *query* selects, in its order.

    Shared by the bulk route and the CLI. Records are read one at a time as chunks are
    taken, so memory stays flat whatever the selection. *tap* wraps the records on
    their way to the writer (the audit trail counts them). ``options["pseudonymize"]``
    replaces user and session ids with pseudonyms keyed with *secret_key* (pseudonyms.py).

    :raises ExportTooLarge: if the format cannot hold the selection (before any chunk).
    """
    runs = check_fits(exporter, index, query, user_scope)
    info = ExportInfo(count=runs, filters=query.filters.to_wire(),
                      exported_at=now or dt.datetime.now(dt.timezone.utc))
    # a run gone since it was counted cuts the export (X-Total-Count and the rows must agree)
    if exporter.run_rows is not None and exporter.run_rows(options):  # run fields only: the index has them
        records = tap(index.iter_run_rows(query, user_scope))
    else:
        records = tap(index.iter_listed_records(store, index.iter_ids(query, user_scope)))
    records, info, options, _ = prepare_export(records, info, options, secret_key)
    return runs, exporter.write(records, bulk=True, info=info, **options)
