"""Exporter + records -> a streamed download: checks first, then safe headers, then chunks."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from flask import Response, current_app, g

from execution_history.errors import RunNotFound
from execution_history.exporters import Exporter, ExportInfo, export_selection
from execution_history.filters import RunQuery
from execution_history.pseudonyms import FILE_SUFFIX, OPTION, prepare_export

from .audit_hooks import Counted, note, stream_audited
from .auth import principal, visible_record
from .extensions import get_index, get_media_sources, get_store

log = logging.getLogger(__name__)


def export_run(exporter: Exporter, execution_id: str, options: dict[str, Any]) -> Response:
    """One run as a download named after its id.

    :raises RunNotFound: for an unknown or malformed id (before any byte is sent).
    :raises Forbidden: for another user's run.
    """
    try:
        rows = Counted([visible_record(get_store().get(execution_id))])  # finished runs only
    except RunNotFound:
        get_index().recheck([execution_id])  # a listed run that is gone: the list stops showing it
        raise
    records, info, options, pseudo = prepare_export(rows, ExportInfo(count=1), options,
                                                    current_app.config["SECRET_KEY"])
    chunks = exporter.write(records, bulk=False, info=info, **with_media_root(exporter, options))
    return stream(chunks, exporter, _marked(execution_id, pseudo), rows)


def export_runs(exporter: Exporter, query: RunQuery, options: dict[str, Any]) -> Response:
    """Every run *query* selects that the principal may see, in order, as one download
    (X-Total-Count: the runs).

    :raises ExportTooLarge: if the format cannot hold the selection (before any byte is sent).
    """
    now = dt.datetime.now(dt.timezone.utc)
    rows = Counted()
    runs, chunks = export_selection(exporter, get_index(), get_store(), query, with_media_root(exporter, options),
                                    principal().scope, now,
                                    tap=rows.tap, secret_key=current_app.config["SECRET_KEY"])
    response = stream(chunks, exporter, bulk_name(now, options), rows)
    response.headers["X-Total-Count"] = str(runs)
    return response


def bulk_name(when: dt.datetime, options: dict[str, Any]) -> str:
    """A bulk download's name (direct or an export job's): ``runs_<UTC time>``, ``_items`` for
    item rows, ``_pseudonymized`` when it is."""
    name = f"runs_{when:%Y%m%d_%H%M%S}" + ("_items" if options.get("shape") == "items" else "")
    return _marked(name, bool(options.get(OPTION)))


def _marked(name: str, pseudonymized: bool) -> str:
    """The download's name: ``_pseudonymized`` added when it is, which its audit line says too."""
    if not pseudonymized:
        return name
    note(pseudonymized=True)
    return name + FILE_SUFFIX


def with_media_root(exporter: Exporter, options: dict[str, Any]) -> dict[str, Any]:
    """*options*, plus the app's media dir for a writer that bundles media files (zip)."""
    if not exporter.media:
        return options
    return {**options, "media_root": get_media_sources()}


def stream(chunks: Iterable[bytes], exporter: Exporter, name: str, rows: Counted | None = None) -> Response:
    """A streamed attachment. *name* is an id or a time stamp, never a request string.

    The first chunk is taken here, inside the view: whatever fails before the first byte
    (an XLSX is built whole before it yields) becomes the app's JSON error, not the
    server's own HTML 500.
    """
    body = stream_audited(_cut_on_error(_started(chunks), g.request_id), rows)
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


def _started(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks, the first one already taken: a failure before the first byte (a run gone
    since it was counted, an XLSX that cannot be built) is still an error response with its
    status, here in the view, rather than a 200 whose body breaks off."""
    iterator = iter(chunks)
    first = next(iterator, b"")

    def rest() -> Iterator[bytes]:
        try:
            yield first
            yield from iterator
        finally:  # closed early (client gone): the writer's temp files go now
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    return rest()


def _cut_on_error(chunks: Iterable[bytes], request_id: str) -> Iterator[bytes]:
    """Pass chunks on; after the first byte a failure can no longer change the status, so it
    is logged and re-raised, and the server cuts the connection: the client sees an
    incomplete download (no final chunk), never a short file that looks whole."""
    try:
        yield from chunks
    except Exception:
        log.exception("request %s: export failed while streaming; the download was cut off", request_id)
        raise
