"""Exporter + records -> a streamed download: checks first, then safe headers, then chunks."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from flask import Response, g

from execution_history.exporters import Exporter, ExportInfo, export_selection
from execution_history.filters import RunQuery

from . import get_index, get_store
from .audit_hooks import Counted, stream_audited
from .auth import principal, visible_record

log = logging.getLogger(__name__)


def export_run(exporter: Exporter, execution_id: str, options: dict[str, Any]) -> Response:
    """One run as a download named after its id.

    :raises RunNotFound: for an unknown or malformed id (before any byte is sent).
    :raises Forbidden: for another user's run.
    """
    rows = Counted([visible_record(get_store().get(execution_id))])  # finished runs only
    chunks = exporter.write(rows, bulk=False, info=ExportInfo(count=1), **options)
    return stream(chunks, exporter, execution_id, rows)


def export_runs(exporter: Exporter, query: RunQuery, options: dict[str, Any]) -> Response:
    """Every run *query* selects that the principal may see, in order, as one download
    (X-Total-Count: the runs).

    :raises ExportTooLarge: if the format cannot hold the selection (before any byte is sent).
    """
    now = dt.datetime.now(dt.timezone.utc)
    rows = Counted()
    runs, chunks = export_selection(exporter, get_index(), get_store(), query, options, principal().scope, now,
                                    tap=rows.tap)
    name = f"runs_{now:%Y%m%d_%H%M%S}" + ("_items" if options.get("shape") == "items" else "")  # item rows
    response = stream(chunks, exporter, name, rows)
    response.headers["X-Total-Count"] = str(runs)
    return response


def stream(chunks: Iterable[bytes], exporter: Exporter, name: str, rows: Counted | None = None) -> Response:
    """A streamed attachment. *name* is an id or a time stamp, never a request string.

    The first chunk is taken here, inside the view: whatever fails before the first byte
    (an XLSX is built whole before it yields) becomes the app's JSON error, not the
    server's own HTML 500.
    """
    body = stream_audited(_cut_on_error(_Primed(chunks), g.request_id), rows)
    response = Response(body, mimetype=None,
                        content_type=exporter.mimetype, direct_passthrough=True)
    response.headers["Content-Disposition"] = content_disposition(name + exporter.extension)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def content_disposition(filename: str) -> str:
    """``attachment`` with the name; RFC 6266 ``filename*`` added where the name is not plain ASCII."""
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in filename)
    if safe == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _Primed:
    """An iterable of chunks whose first chunk was already taken (so its failure raises now)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._first: bytes | None = next(self._chunks, None)

    def __iter__(self) -> Iterator[bytes]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._chunks

    def close(self) -> None:
        """Close the writer's generator (its temp file goes), read or not."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _cut_on_error(chunks: Iterable[bytes], request_id: str) -> Iterator[bytes]:
    """Pass chunks on; after the first byte a failure can no longer change the status, so it
    is logged and re-raised, and the server cuts the connection: the client sees an
    incomplete download (no final chunk), never a short file that looks whole."""
    try:
        yield from chunks
    except Exception:
        log.exception("request %s: export failed while streaming; the download was cut off", request_id)
        raise
