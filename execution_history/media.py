"""Media files that items name: the extension allow-list and resolving a path safely in the media dir.

An item's ``file_path`` is text from a record, so hostile: it may hold ``..``, an absolute
path elsewhere, a symlink leading out, a FIFO, a dotfile. :func:`resolve` is the one
place that turns it into a file to read (serve, thumbnail, zip) or delete, and it
answers None for anything but a regular, allow-listed file inside the media dir.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
    """A media file found for an item: where it is, what it is, and its stat."""

    path: Path
    mimetype: str
    kind: str
    size: int
    mtime_ns: int

    @property
    def inline(self) -> bool:
        return self.kind in INLINE_KINDS


def media_type_of(name: str) -> tuple[str, str] | None:
    """(Content-Type, kind) for an allow-listed file name, else None."""
    return MEDIA_TYPES.get(os.path.splitext(name)[1].lower())


def resolve(file_path: object, media_root: str | os.PathLike[str]) -> MediaFile | None:
    """The media file an item's *file_path* names, or None if it must not be read.

    None for: no path or not text, a NUL, a dotfile or a path through a dot-folder, an
    extension off the allow-list, a resolved real path outside *media_root* (``..``,
    an absolute path elsewhere, a symlink leading out), anything but a regular file
    (FIFO, socket, device, directory), or a file that does not exist. Nothing is opened.
    """
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


def default_media_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """``RUN_HISTORY_MEDIA_DIR`` if set, else the working directory (where ``exports/media/...`` resolve)."""
    return Path(configured or os.environ.get("RUN_HISTORY_MEDIA_DIR") or os.getcwd()).absolute()
