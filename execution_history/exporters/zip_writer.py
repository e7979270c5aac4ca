"""ZIP: each run's record and media files, a manifest and SHA256SUMS, streamed as it is built.

Layout::

    <execution_id>/record.json              the record, the same bytes as the json export
    <execution_id>/media/<seq>_<file name>  every media file found (names sanitized, unique)
    manifest.json                           runs, their files (path, size, SHA-256), what was missing
    SHA256SUMS                              ``sha256sum -c`` format, every file but itself

The standard library's ``zipfile`` writes to a write-only, unseekable sink: it then puts a
data descriptor after each entry instead of seeking back, so each chunk can leave as soon
as it is written (no temp file of the archive, no third-party package). Entries of files
are opened with ``force_zip64`` (their final size is only known once copied), so archives
and files past 4 GiB work. Each media file is opened once (through
``execution_history.media.open_media``) and hashed while it is copied, so the manifest's
hash is of the bytes in the archive; a file gone by the time it is reached is listed as
missing. The manifest and the sums are spooled (memory, then disk past a few MB), not held.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from ..media import MediaRoot, default_media_root, is_local_root, open_media, safe_name
from ..records import is_valid_execution_id
from .info import ExportInfo
from .json_writer import dump_json

#: Bytes read from a media file at a time (and the most a chunk holds beyond zipfile's own buffering).
COPY_CHUNK = 1024 * 1024
MANIFEST_FORMAT = "run-history-zip/1"
_SPOOL = 4 * 1024 * 1024


class _Sink(io.RawIOBase):
    """A write-only, unseekable buffer that zipfile writes into and the generator empties."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def _date_time(when: dt.datetime | float) -> tuple[int, int, int, int, int, int]:
    """A ZIP entry's time (UTC, no zone in the format), clamped to what the format can hold."""
    moment = when if isinstance(when, dt.datetime) else dt.datetime.fromtimestamp(when, dt.timezone.utc)
    moment = moment.astimezone(dt.timezone.utc)
    if moment.year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (min(moment.year, 2107), moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _entry(name: str, when: dt.datetime | float, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _date_time(when))
    info.compress_type = compress
    info.external_attr = 0o644 << 16  # a plain readable file when extracted
    return info


def _unique(name: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}{ext}"
    used.add(candidate)
    return candidate


class _Spool:
    """Text that grows while the archive is written (manifest, sums), kept off the heap past a few MB."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
        self.sha = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)


def write_zip(records: Iterable[dict[str, Any]], *, bulk: bool = False, info: ExportInfo | None = None,
              media_root: MediaRoot | None = None) -> Iterator[bytes]:
    """The archive of *records* and their media (found under *media_root*), chunk by chunk.

    :param media_root: where items' relative file paths resolve (default: RUN_HISTORY_MEDIA_DIR or
        the working directory; an S3 area or a tuple of roots too, see ``media_sources.media_root_for``);
        only what ``execution_history.media`` allows is ever read.
    """
    info = info or ExportInfo()
    root = default_media_root(media_root) if media_root is None or is_local_root(media_root) else media_root
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", allowZip64=True)
    manifest, sums = _Spool(), _Spool()
    with manifest.file, sums.file:  # closed also when the download is cut off
        head = {"format": MANIFEST_FORMAT, "exported_at": info.exported_at.isoformat(),
                "filters": info.filters or {}}
        manifest.add(json.dumps(head, ensure_ascii=False)[:-1].encode("utf-8") + b', "runs": [')
        separator = b"\n"
        used_folders: set[str] = set()
        for record in records:
            run = yield from _add_run(archive, sink, sums, record, used_folders, root, info.exported_at)
            manifest.add(separator + json.dumps(run, ensure_ascii=False).encode("utf-8"))
            separator = b",\n"
        manifest.add(b"\n]}\n")
        sums.add(f"{manifest.sha.hexdigest()}  manifest.json\n".encode("utf-8"))  # every file but SHA256SUMS
        now = time.time()
        for spool, name in ((manifest, "manifest.json"), (sums, "SHA256SUMS")):
            spool.file.seek(0)
            with archive.open(_entry(name, now, zipfile.ZIP_DEFLATED), "w", force_zip64=True) as dest:
                while block := spool.file.read(COPY_CHUNK):
                    dest.write(block)
                    yield from _drain(sink)
        archive.close()  # the central directory (ZIP64 records where needed)
        yield from _drain(sink)


def _add_run(archive: zipfile.ZipFile, sink: _Sink, sums: _Spool, record: dict[str, Any],
             used_folders: set[str], root: MediaRoot, exported_at: dt.datetime) -> Iterator[bytes]:
    """Write one run's record and media files; returns its manifest entry."""
    execution_id = record["execution_id"]
    # store ids are safe folder names; anything else (a writer fed by hand) is made safe
    safe_id = execution_id if is_valid_execution_id(execution_id) else safe_name(execution_id, "run")
    folder = _unique(safe_id, used_folders)
    data = dump_json(record) + b"\n"  # byte for byte what the single-run json export sends
    path = f"{folder}/record.json"
    archive.writestr(_entry(path, exported_at, zipfile.ZIP_DEFLATED), data)
    digest = hashlib.sha256(data).hexdigest()
    sums.add(f"{digest}  {path}\n".encode("utf-8"))
    run: dict[str, Any] = {"execution_id": execution_id, "record": {"path": path, "size": len(data), "sha256": digest},
                           "files": [], "missing": []}
    yield from _drain(sink)  # the first bytes leave before any media file is read
    used: set[str] = set()
    for item in record.get("items", []):
        if not item.get("file_path"):
            continue
        about = {"sequence_number": item.get("sequence_number"), "item_type": item.get("item_type"),
                 "file_path": item["file_path"]}
        opened = open_media(item["file_path"], root)
        if opened is None:
            run["missing"].append({**about, "reason": "not found, or not a media file inside the media dir"})
            continue
        media, handle = opened
        path = f"{folder}/media/" + _unique(f"{item.get('sequence_number')}_{safe_name(item['file_path'])}", used)
        with handle:
            size, digest, error = yield from _copy(archive, sink, path, handle, media.mtime_ns / 1e9)
        sums.add(f"{digest}  {path}\n".encode("utf-8"))
        entry = {**about, "path": path, "size": size, "sha256": digest, "content_type": media.mimetype}
        if error is None:
            run["files"].append(entry)
        else:  # the entry holds what could be read; say so rather than pass it off as the file
            run["missing"].append({**about, "reason": f"read failed after {size} bytes: {error}", "partial": entry})
    return run


def _drain(sink: _Sink) -> Iterator[bytes]:
    if data := sink.take():
        yield data


def _copy(archive: zipfile.ZipFile, sink: _Sink, path: str, handle: IO[bytes],
          mtime: float) -> Iterator[bytes]:
    """Copy one open file into a new entry, hashing what is written; returns (size, sha256, error)."""
    sha = hashlib.sha256()
    size = 0
    error = None
    # already compressed (PNG, MP4, MP3...): stored, so a large video costs no CPU
    with archive.open(_entry(path, mtime, zipfile.ZIP_STORED), "w", force_zip64=True) as dest:
        while True:
            try:
                block = handle.read(COPY_CHUNK)
            except OSError as err:
                error = err.strerror or type(err).__name__
                break
            if not block:
                break
            dest.write(block)
            sha.update(block)
            size += len(block)
            yield from _drain(sink)
    yield from _drain(sink)
    return size, sha.hexdigest(), error
