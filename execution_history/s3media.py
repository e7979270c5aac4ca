"""Media files in an S3 bucket: an item's ``file_path`` as a key under the media prefix, checked and opened.

Key layout: a relative ``file_path`` is the key ``<media prefix>/<file_path>`` as given
(``exports/media/flower.png`` -> ``<prefix>/media/exports/media/flower.png`` for the store's
default media prefix ``<store prefix>/media``), the way a local relative path is the file
``<media dir>/<file_path>``: copy a local media dir in with ``aws s3 sync <media dir>
s3://<bucket>/<prefix>/media``. A ``file_path`` that is an ``s3://`` URL is taken if it
names a key under the same bucket's media prefix. Containment is decided on the text,
before any request: no ``..`` or ``.`` segment, no empty segment, no dotfile or dot-folder,
no control character, no absolute local path, an allow-listed extension; so no key outside
the media prefix is ever asked for, and records and the side area (``.side/``) never are.

Reads are ranged GETs made on demand from a seekable handle (so ``Range`` requests, Pillow
and the zip writer read only what they need), each one conditional on the ETag the HEAD
saw (``If-Match``): an object replaced meanwhile fails the read instead of mixing versions.
"""
from __future__ import annotations

import io
import logging
import re
from typing import Any, BinaryIO

import botocore.exceptions

from .media import MediaFile, media_type_of
from .s3store import SCHEME, _error_code, _status, client_for, parse_url, translate

log = logging.getLogger(__name__)

#: The store's default media prefix, under its own prefix (beside the records, never among them).
MEDIA_FOLDER = "media"
#: The longest key S3 takes, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Buffered bytes per read (one ranged GET streams on while reads follow each other).
BUFFER = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class S3MediaArea:
    """The media dir as keys under ``s3://<bucket>/<prefix>`` (``resolve`` and ``open`` like a local dir)."""

    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        self.client = client or client_for(endpoint_url)
        self._base = f"{self.prefix}/" if self.prefix else ""

    @classmethod
    def of_store(cls, store: Any) -> S3MediaArea:
        """The default media area of an S3 record store: ``<its prefix>/media`` in its bucket."""
        base = f"{store.prefix}/{MEDIA_FOLDER}" if store.prefix else MEDIA_FOLDER
        return cls(f"{SCHEME}{store.bucket}/{base}", client=store.client)

    def key_for(self, file_path: object) -> str | None:
        """The key *file_path* names inside the media prefix, or None if it must not be read (no request made)."""
        if not isinstance(file_path, str) or not file_path or _CONTROL.search(file_path):
            return None
        if file_path.startswith(SCHEME):
            try:
                bucket, key = parse_url(file_path)
            except ValueError:
                return None
            if bucket != self.bucket or not key.startswith(self._base) or file_path.endswith("/"):
                return None
            relative = key[len(self._base):]
        elif file_path.startswith("/"):
            return None  # an absolute local path is never a key
        else:
            relative = file_path
        parts = relative.split("/")
        if not all(parts) or any(part.startswith(".") for part in parts):
            return None  # "..", ".", "a//b", dotfiles and dot-folders
        if media_type_of(parts[-1]) is None:
            return None
        key = self._base + relative
        return key if len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES else None

    def locate(self, file_path: object) -> str | None:
        """The ``s3://bucket/key`` URL *file_path* names inside the media prefix, or None (no request)."""
        key = self.key_for(file_path)
        return None if key is None else f"{SCHEME}{self.bucket}/{key}"

    def remove(self, url: str) -> bool:
        """Delete the object at *url* (a :meth:`locate` URL of this area); False if it was not there.

        :raises ValueError: for a URL outside this area's media prefix (never deleted).
        :raises StoreUnavailable: if the endpoint does not answer.
        """
        bucket, key = parse_url(url)
        if bucket != self.bucket or self.key_for(key[len(self._base):]) != key or not key.startswith(self._base):
            raise ValueError(f"not a media object of {self.url}: {url}")
        if self._head(key) is None:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404:
                return False
            raise translate(err, "media delete") from err
        except botocore.exceptions.BotoCoreError as err:
            raise translate(err, "media delete") from err
        return True

    def resolve(self, file_path: object) -> MediaFile | None:
        """The object *file_path* names (one HEAD), or None: refused, missing, or not readable with these credentials.

        :raises StoreUnavailable: if the endpoint does not answer.
        """
        key = self.key_for(file_path)
        return None if key is None else self._head(key)

    def _head(self, key: str) -> MediaFile | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if _status(err) in (403, 404) or _error_code(err) in ("NoSuchKey", "NotFound", "AccessDenied"):
                if _status(err) == 403:
                    log.warning("media object %s: access denied (served as missing)", key)
                return None
            raise translate(err, "media read") from err
        except botocore.exceptions.BotoCoreError as err:
            raise translate(err, "media read") from err
        mimetype, kind = media_type_of(key)  # type: ignore[misc] - key_for checked the extension
        modified = head["LastModified"]
        return MediaFile(f"{SCHEME}{self.bucket}/{key}", mimetype, kind, int(head["ContentLength"]),
                         int(modified.timestamp()) * 10**9, version=str(head.get("ETag", "")))

    def open(self, file_path: object) -> tuple[MediaFile, BinaryIO] | None:
        """The object *file_path* names and a seekable handle on exactly that version, or None as for :meth:`resolve`.

        :raises StoreUnavailable: if the endpoint does not answer.
        """
        key = self.key_for(file_path)
        found = None if key is None else self._head(key)
        if found is None:
            return None
        raw = _ObjectReader(self.client, self.bucket, key, found.size, found.version)
        return found, io.BufferedReader(raw, BUFFER)  # type: ignore[return-value]


class _ObjectReader(io.RawIOBase):
    """One object version as a seekable raw stream: a ranged GET from wherever a read starts."""

    def __init__(self, client: Any, bucket: str, key: str, size: int, etag: str) -> None:
        self._client, self._bucket, self._key, self._size, self._etag = client, bucket, key, size, etag
        self._pos = 0
        self._body: Any = None
        self._body_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or not len(buffer):
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._open_body()
        try:
            data = self._body.read(min(len(buffer), self._size - self._pos))
        except (botocore.exceptions.BotoCoreError, OSError) as err:
            self._drop_body()
            raise OSError(f"media object read failed: {type(err).__name__}") from err
        if not data:  # the object ended early (replaced by a shorter one despite If-Match)
            self._drop_body()
            raise OSError("media object ended early")
        buffer[:len(data)] = data
        self._pos += len(data)
        self._body_pos = self._pos
        return len(data)

    def _open_body(self) -> None:
        self._drop_body()
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key,
                                  "Range": f"bytes={self._pos}-{self._size - 1}"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            self._body = self._client.get_object(**kwargs)["Body"]
        except botocore.exceptions.ClientError as err:
            if _status(err) == 412:
                raise OSError("media object changed while it was read") from None
            raise OSError(f"media object read failed: {_error_code(err) or _status(err)}") from err
        except botocore.exceptions.BotoCoreError as err:
            raise OSError(f"media object read failed: {type(err).__name__}") from err
        self._body_pos = self._pos

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
                pass
            self._body = None
        self._body_pos = -1

    def close(self) -> None:
        self._drop_body()
        super().close()

