"""Thumbnails of media images: made with Pillow on first request, cached on disk under a size cap.

Decoding images from anywhere is not code we write: Pillow does it, limited to the image
formats the media allow-list serves, with a pixel cap so a decompression bomb or a huge
scan is refused before it is decoded. A broken, truncated or oversized image gives no
thumbnail (None), never an exception.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from .atomic import write_temp
from .media import MediaFile

log = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 320
#: Images with more pixels than this are refused unread (Pillow's own bomb limit is ~89 M).
MAX_PIXELS = 40_000_000
#: What the cache folder may hold before the least recently used thumbnails go.
DEFAULT_MAX_BYTES = 64 * 2**20
MIMETYPE = "image/webp"
_SUFFIX = ".webp"
#: Pillow's names for the image formats of execution_history.media.MEDIA_TYPES: no other decoder runs.
_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "AVIF")


def make_thumbnail(handle: BinaryIO, size: int = THUMBNAIL_SIZE) -> bytes | None:
    """A WebP at most *size* pixels on its longest side, or None if the image cannot be used."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here every bomb is refused.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(handle, formats=_FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    return None
                image.draft("RGB", (size, size))  # JPEG decodes at a fraction of its size
                image.thumbnail((size, size))
                if image.mode not in ("RGB", "RGBA"):
                    image = image.convert("RGBA")
                out = io.BytesIO()
                image.save(out, "WEBP", quality=80)
                return out.getvalue()
        except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types on hostile input
            log.info("no thumbnail: %s: %s", type(err).__name__, err)
            return None


class ThumbnailCache:
    """Thumbnails on disk, keyed by resolved path, file size, mtime and thumbnail size.

    A changed file gets a new key, so a stale thumbnail is never served; when the folder
    holds more than *max_bytes*, the least recently used thumbnails are deleted. If the
    folder cannot be written, thumbnails are still made, just not kept.
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 size: int = THUMBNAIL_SIZE) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.size = size

    def key(self, media: MediaFile) -> str:
        """The cache key (also a good ETag): a hash, so no path shows in a file name or header."""
        text = f"{media.path}\0{media.size}\0{media.mtime_ns}\0{self.size}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def get(self, media: MediaFile, handle: BinaryIO) -> bytes | None:
        """The thumbnail of *media* (read from *handle* if not cached yet), or None if it has none."""
        path = self.folder / (self.key(media) + _SUFFIX)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: evicted last
            return data
        data = make_thumbnail(handle, self.size)
        if data is not None:
            self._keep(path, data)
        return data

    def forget(self, media: MediaFile) -> bool:
        """Delete the cached thumbnail of *media* (its file was deleted); False if none was cached."""
        try:
            (self.folder / (self.key(media) + _SUFFIX)).unlink()
        except OSError:
            return False
        return True

    def _keep(self, path: Path, data: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.replace(write_temp(path, data), path)  # two workers making the same one: either wins
        except OSError as err:
            log.warning("thumbnail not cached in %s: %s", self.folder, err)
            return
        self.evict()

    def evict(self) -> int:
        """Delete the least recently used thumbnails until the folder fits the cap (the most recent one
        always stays); returns how many."""
        entries = []
        with contextlib.suppress(OSError), os.scandir(self.folder) as found:
            for entry in found:
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        st = entry.stat()
                        entries.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, name in sorted(entries)[:-1]:  # the newest stays, even alone over the cap
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
                removed += 1
            total -= size
        return removed
