"""`bp` for media: an item's file (Range, ETag, 304, HEAD) and a run's thumbnail, scoped and audited.

What may be read is decided by execution_history/media.py alone; this module only turns
an opened file into a response. Media on S3 (``RUN_HISTORY_MEDIA_DIR=s3://...``, or the
bucket's ``<prefix>/media`` for an S3 record store) plug in at
``execution_history.media.open_media``, which every reader goes through: the routes here
(by way of :func:`open_item_file`), thumbnails and the zip writer.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from flask import Blueprint, Flask, Response, request, send_file, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from execution_history.audit import AuditLog
from execution_history.errors import InvalidParameter, RunNotFound, StorageError
from execution_history.media import (
    MediaFile,
    MediaNotFound,
    RangeNotSatisfiable,
    default_media_root,
    find_item,
    open_media,
    resolve,
    safe_name,
)
from execution_history.media_sources import media_root_for
from execution_history.thumbnails import MIMETYPE as THUMBNAIL_MIMETYPE
from execution_history.thumbnails import ThumbnailCache

from . import audit_hooks, extensions
from .auth import load_visible
from .downloads import content_disposition
from .extensions import get_audit, get_media_sources, get_store, get_thumbnails

bp = Blueprint("media", __name__, url_prefix="/api")
#: The thumbnail cache: a hidden folder of the data folder (like the index), never served as media.
THUMBNAIL_DIR = ".thumbnails"
#: Item types whose file may be a run's gallery thumbnail, in order of preference.
THUMBNAIL_TYPES = ("output_image",)


def init_app(app: Flask, data_dir: Path) -> None:
    """Register the routes; fix the media root now (the working directory the app started in)."""
    extensions.add(app, media_root=default_media_root(app.config["RUN_HISTORY_MEDIA_DIR"]),
                   media_sources=media_root_for(app.config["RUN_HISTORY_MEDIA_DIR"], get_store(app),
                                                app.config.get("RUN_HISTORY_S3_ENDPOINT_URL")),
                   thumbnails=ThumbnailCache(data_dir / THUMBNAIL_DIR))
    app.register_blueprint(bp)


def open_item_file(item: dict[str, Any]) -> tuple[MediaFile, BinaryIO] | None:
    """The one function that opens an item's media file (None: none, missing or refused).

    :raises StoreUnavailable: if media live on S3 and the endpoint does not answer (503).
    """
    return open_media(item.get("file_path"), get_media_sources())


def _resolve_for_page(file_path: object) -> MediaFile | None:
    # a page still renders when the S3 endpoint stops answering: its files are shown as missing
    try:
        return resolve(file_path, get_media_sources())
    except StorageError:
        return None


def media_view(execution_id: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """What the run page shows of an item's file: its kind and URL, or found False."""
    if not item.get("file_path"):
        return None
    found = _resolve_for_page(item["file_path"])
    if found is None:
        return {"found": False}
    return {"found": True, "kind": found.kind, "name": safe_name(item["file_path"]),
            "url": url_for("media.get_item_file", execution_id=execution_id,
                           sequence_number=item["sequence_number"])}


def first_image(record: dict[str, Any]) -> dict[str, Any] | None:
    """The run's first output image item whose file can be served, else None."""
    for item in record.get("items", []):
        if item.get("item_type") in THUMBNAIL_TYPES:
            found = _resolve_for_page(item.get("file_path"))
            if found is not None and found.kind == "image":
                return item
    return None


def _etag(media: MediaFile) -> str:
    # a hash: changes with the file, and shows no server path to the client
    key = f"{media.path}\0{media.size}\0{media.mtime_ns}" + (f"\0{media.version}" if media.version else "")
    key = key.encode("utf-8", "surrogateescape")
    return hashlib.sha256(key).hexdigest()[:32]


#: The list page's views (``?view=``): the table, or a gallery of thumbnails.
VIEWS = ("table", "gallery")


def split_view(args: MultiDict[str, str]) -> tuple[MultiDict[str, str], str]:
    """The list page's arguments without ``view`` (the list and export parameters), and the view.

    :raises InvalidParameter: for a view other than VIEWS.
    """
    rest = args.copy()
    view = rest.pop("view", "") or "table"
    if view not in VIEWS:
        raise InvalidParameter("Invalid value for view", parameter="view", value=view[:100], allowed=list(VIEWS))
    return rest, view


def gallery_cards(executions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each listed run (at most a page, 100) with its thumbnail URL, or None if it has no image."""
    cards = []
    for run in executions:
        try:
            record = get_store().get(run["execution_id"])
        except RunNotFound:  # in progress (no record file yet) or gone meanwhile
            record = None
        has_image = record is not None and first_image(record) is not None
        cards.append({**run, "thumbnail": url_for("media.get_thumbnail", execution_id=run["execution_id"])
                      if has_image else None})
    return cards


@bp.get("/runs/<execution_id>/items/<sequence_number>/file")
def get_item_file(execution_id: str, sequence_number: str) -> Response:
    """An item's media file: inline for images, audio and video, Range/206, ETag/304, HEAD."""
    record = load_visible(get_store(), execution_id)
    item = find_item(record, sequence_number)
    opened = open_item_file(item) if item is not None else None
    if opened is None:
        raise MediaNotFound("Media file not found", execution_id=execution_id, sequence_number=sequence_number[:20])
    media, handle = opened
    response = send_file(handle, mimetype=media.mimetype, conditional=False, etag=_etag(media),
                         last_modified=media.mtime_ns / 1e9)
    response.content_length = media.size
    try:
        response.make_conditional(request.environ, accept_ranges=True, complete_length=media.size)
    except RequestedRangeNotSatisfiable:
        handle.close()
        raise RangeNotSatisfiable("Requested range not satisfiable", size=media.size,
                                  execution_id=execution_id) from None
    disposition = content_disposition(safe_name(item["file_path"]))
    if media.inline:  # the same safe name, shown in the page instead of downloaded
        disposition = "inline" + disposition.removeprefix("attachment")
    response.headers["Content-Disposition"] = disposition
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.status_code in (200, 206):  # a 304 sends nothing and is not audited
        fields = {**audit_hooks.common_fields(), "execution_id": execution_id,  # the fields every audit line has
                  "sequence_number": item["sequence_number"], "format": media.mimetype,
                  "status": response.status_code}
        response.response = AuditedFile(response.response, get_audit(), audit_hooks.current_event(), fields,
                                        head=request.method == "HEAD")
    return response


class AuditedFile:
    """A file response body that writes one audit line (``media``: bytes sent) when it is closed."""

    def __init__(self, body: Iterable[bytes], log: AuditLog, event: str, fields: dict[str, Any],
                 head: bool = False) -> None:
        # Taken now, while the request is current: the body is read and closed after it.
        self.body, self.log, self.event, self.fields, self.head = body, log, event, fields, head
        self.sent = 0
        self.complete = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk
        self.complete = True

    def close(self) -> None:
        """Close the file and write the audit line, once (a HEAD request closes without reading)."""
        if self.closed:
            return
        self.closed = True
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        self.log.append(self.event, **self.fields, bytes=self.sent, complete=self.complete or self.head)


@bp.get("/runs/<execution_id>/thumbnail")
def get_thumbnail(execution_id: str) -> Response:
    """A small WebP of the run's first output image (404 if it has none or it cannot be decoded)."""
    record = load_visible(get_store(), execution_id)
    item = first_image(record)
    opened = open_item_file(item) if item is not None else None
    if opened is None:
        raise MediaNotFound("No thumbnail for this run", execution_id=execution_id)
    media, handle = opened
    cache = get_thumbnails()
    with handle:
        data = cache.get(media, handle)
    if data is None:
        raise MediaNotFound("No thumbnail for this run (the image cannot be decoded)", execution_id=execution_id)
    response = send_file(io.BytesIO(data), mimetype=THUMBNAIL_MIMETYPE, conditional=True,
                         etag=cache.key(media), last_modified=media.mtime_ns / 1e9)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
