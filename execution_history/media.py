"""Media files that items name: the extension allow-list and resolving a path safely in the media dir.

An item's ``file_path`` is text from a record, so hostile: it may hold ``..``, an absolute
path elsewhere, a symlink leading out, a FIFO, a dotfile. :func:`resolve` is the one
place that turns it into a file to read (serve, thumbnail, zip) or delete, and it
answers None for anything but a regular, allow-listed file inside the media dir.
Media in an S3 bucket (``s3media.S3MediaArea``) plug in here too: a media root may be a
local dir, such an area, or a tuple of them tried in order (``media_sources.media_root_for``).
"""
from __future__ import annotations

import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, Union

from .errors import ExecutionHistoryError, RunNotFound

#: Extension -> (Content-Type, kind). Only these are ever served; kind decides ``inline``.
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    ".png": ("image/png", "image"), ".jpg": ("image/jpeg", "image"), ".jpeg": ("image/jpeg", "image"),
    ".gif": ("image/gif", "image"), ".webp": ("image/webp", "image"), ".avif": ("image/avif", "image"),
    ".bmp": ("image/bmp", "image"),
    ".wav": ("audio/wav", "audio"), ".mp3": ("audio/mpeg", "audio"), ".ogg": ("audio/ogg", "audio"),
    ".oga": ("audio/ogg", "audio"), ".opus": ("audio/opus", "audio"), ".flac": ("audio/flac", "audio"),
    ".m4a": ("audio/mp4", "audio"), ".aac": ("audio/aac", "audio"),
    ".mp4": ("video/mp4", "video"), ".m4v": ("video/mp4", "video"), ".webm": ("video/webm", "video"),
    ".ogv": ("video/ogg", "video"), ".mov": ("video/quicktime", "video"),
    ".glb": ("model/gltf-binary", "3d"), ".gltf": ("model/gltf+json", "3d"), ".obj": ("model/obj", "3d"),
    ".stl": ("model/stl", "3d"), ".ply": ("application/octet-stream", "3d"), ".usdz": ("model/vnd.usdz+zip", "3d"),
}
#: Kinds a browser shows in the page (``Content-Disposition: inline``); others download.
INLINE_KINDS = frozenset({"image", "audio", "video"})
#: Item types that carry a media file.
MEDIA_ITEM_TYPES = frozenset({"user_input_image", "user_input_audio", "output_image", "output_audio",
                              "output_music", "output_video", "output_3d"})


@dataclass(frozen=True)
class MediaFile:
    """A media file found for an item: where it is, what it is, and its stat.

    *path* is the real path of a local file, or the ``s3://bucket/key`` URL of an object
    (then *version* is its ETag, so a replaced object gets a new HTTP ETag).
    """

    path: Path | str
    mimetype: str
    kind: str
    size: int
    mtime_ns: int
    version: str = ""

    @property
    def inline(self) -> bool:
        """Whether a browser shows it in the page (images, audio, video) rather than downloading it."""
        return self.kind in INLINE_KINDS


# Media errors live here, beside the one module that decides what may be read; both are
# in the project's one error tree (app/errors.py answers them like any other).
class MediaNotFound(RunNotFound):
    """An item's media file that does not exist or must not be read: always a plain 404."""


class RangeNotSatisfiable(ExecutionHistoryError):
    """A ``Range`` request outside the file (416, with ``Content-Range: bytes */<size>``)."""

    status_code = 416
    code = "RANGE_NOT_SATISFIABLE"

    def __init__(self, message: str, size: int, **context: Any) -> None:
        super().__init__(message, **context)
        self.headers = {"Content-Range": f"bytes */{size}"}


def media_type_of(name: str) -> tuple[str, str] | None:
    """(Content-Type, kind) for an allow-listed file name, else None."""
    return MEDIA_TYPES.get(os.path.splitext(name)[1].lower())


class MediaArea(Protocol):
    """Media somewhere else than a local folder (S3: ``s3media.S3MediaArea``), with the same checks."""

    def resolve(self, file_path: object) -> MediaFile | None:
        """The media file *file_path* names, or None if it must not be read (see :func:`resolve`)."""

    def open(self, file_path: object) -> tuple[MediaFile, BinaryIO] | None:
        """That file opened for reading (see :func:`open_media`)."""

    def locate(self, file_path: object) -> str | None:
        """The URL of the object *file_path* names, decided on its text alone (no request), or None if refused."""

    def remove(self, url: str) -> bool:
        """Delete the object at *url* (one that :meth:`locate` gave); False if it was not there."""


@dataclass(frozen=True)
class AreaObject:
    """A media file in a MediaArea, as :func:`media_locations` names it: equal by its URL."""

    url: str
    area: Any = field(compare=False, repr=False)


#: Where media are looked for: a local media dir, a MediaArea, or several of them in order.
MediaRoot = Union[str, os.PathLike, MediaArea, tuple]


def is_local_root(media_root: object) -> bool:
    """Whether *media_root* is a local media dir (a path), not an area or a chain of them."""
    return isinstance(media_root, (str, os.PathLike))


def resolve(file_path: object, media_root: MediaRoot) -> MediaFile | None:
    """The media file an item's *file_path* names, or None if it must not be read.

    None for: no path or not text, a NUL, a dotfile or a path through a dot-folder, an
    extension off the allow-list, a resolved real path outside *media_root* (``..``,
    an absolute path elsewhere, a symlink leading out), anything but a regular file
    (FIFO, socket, device, directory), or a file that does not exist. Nothing is opened.
    *media_root* may also be a MediaArea (S3) or a tuple of roots tried in order.
    """
    if isinstance(media_root, tuple):
        return next((found for root in media_root if (found := resolve(file_path, root)) is not None), None)
    if not is_local_root(media_root):
        return media_root.resolve(file_path)
    if not isinstance(file_path, str) or not file_path or "\x00" in file_path:
        return None
    root = Path(os.path.realpath(media_root))
    candidate = Path(file_path) if os.path.isabs(file_path) else root / file_path
    found = media_type_of(candidate.name)
    if found is None:
        return None
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError):
        return None
    try:
        relative = real.relative_to(root)
    except ValueError:
        return None
    if any(part.startswith(".") for part in relative.parts) or media_type_of(real.name) != found:
        return None  # dotfiles and dot-folders hold the index, tokens, secret key: never media
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return MediaFile(real, found[0], found[1], st.st_size, st.st_mtime_ns)


def media_locations(file_path: object, media_root: MediaRoot) -> list[Path | AreaObject]:
    """Every media file *file_path* names in *media_root*, for deleting: in a local dir the real
    path of an existing file that :func:`resolve` allows; in a MediaArea (S3) the object its key
    names, decided on the text (no request: a full scan of every run's paths costs nothing);
    in a tuple of roots, each of them (a file kept locally and in the bucket is both)."""
    if isinstance(media_root, tuple):
        return [found for root in media_root for found in media_locations(file_path, root)]
    if is_local_root(media_root):
        found = resolve(file_path, media_root)
        return [] if found is None else [found.path]  # type: ignore[list-item] - a local root's path is a Path
    url = media_root.locate(file_path)
    return [] if url is None else [AreaObject(url, media_root)]


def stat_media(location: Path | AreaObject) -> MediaFile | None:
    """What :func:`resolve` says of one file :func:`media_locations` named (to find what was made
    from it, e.g. its cached thumbnail), or None if it is gone."""
    if isinstance(location, AreaObject):
        return location.area.resolve(location.url)
    found = media_type_of(location.name)
    try:
        st = os.stat(location)
    except OSError:
        return None
    return None if found is None else MediaFile(location, found[0], found[1], st.st_size, st.st_mtime_ns)


def delete_media(location: Path | AreaObject) -> bool:
    """Delete one file :func:`media_locations` named; False if it was gone already.

    :raises OSError: if a local file cannot be removed.
    :raises StoreUnavailable: if an S3 endpoint does not answer.
    """
    if isinstance(location, AreaObject):
        return location.area.remove(location.url)
    try:
        location.unlink()
    except FileNotFoundError:
        return False
    return True


def default_media_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """``RUN_HISTORY_MEDIA_DIR`` if set, else the working directory (where ``exports/media/...`` resolve)."""
    return Path(configured or os.environ.get("RUN_HISTORY_MEDIA_DIR") or os.getcwd()).absolute()


def open_media(file_path: object, media_root: MediaRoot) -> tuple[MediaFile, BinaryIO] | None:
    """The media file *file_path* names, opened for reading, with its stat; None as for :func:`resolve`.

    The file is opened once, without following a last symlink and without blocking (a FIFO
    swapped in after :func:`resolve` looked cannot hang the reader), then checked again on
    the open descriptor: a regular file whose real path is still inside *media_root*.
    Callers read from the handle only, so what they hash or send is what was checked.
    A MediaArea (S3) opens its own way; a tuple of roots is tried in order.
    """
    if isinstance(media_root, tuple):
        return next((opened for root in media_root if (opened := open_media(file_path, root)) is not None), None)
    if not is_local_root(media_root):
        return media_root.open(file_path)
    found = resolve(file_path, media_root)
    if found is None:
        return None
    try:
        fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _still_inside(fd, found.path, media_root):
            os.close(fd)
            return None
        handle = os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None
    return MediaFile(found.path, found.mimetype, found.kind, st.st_size, st.st_mtime_ns), handle


def _still_inside(fd: int, expected: Path, media_root: str | os.PathLike[str]) -> bool:
    # A folder on the way may have been swapped for a symlink between resolve() and open():
    # Linux tells what the descriptor really is; elsewhere the resolve() check stands alone.
    try:
        actual = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return True
    try:
        actual.relative_to(os.path.realpath(media_root))
    except ValueError:
        return False
    return actual == expected


def find_item(record: dict[str, Any], sequence_number: str) -> dict[str, Any] | None:
    """The item of *record* with this sequence number (ASCII digits only), else None."""
    if not (sequence_number.isascii() and sequence_number.isdigit()) or len(sequence_number) > 12:
        return None
    wanted = int(sequence_number)
    return next((item for item in record.get("items", []) if item.get("sequence_number") == wanted), None)


_UNSAFE_NAME = re.compile(r"[^\w.\-]+")
MAX_NAME = 120


def safe_name(file_path: object, fallback: str = "file") -> str:
    """A file name fit for a header or an archive, from the last part of a hostile path.

    Letters and digits of any script, ``.``, ``-`` and ``_`` are kept (NFC); every other run of
    characters (separators, quotes, controls, spaces) becomes one ``_``; no leading dot;
    at most MAX_NAME characters, keeping the extension.
    """
    text = file_path if isinstance(file_path, str) else ""
    base = re.split(r"[/\\]", text)[-1]
    name = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", base)).lstrip(".")
    if not name.strip("_"):
        return fallback
    if len(name) > MAX_NAME:
        stem, ext = os.path.splitext(name)
        ext = ext[:16]
        name = stem[:MAX_NAME - len(ext)] + ext
    return name
