"""S3Store and S3SideArea: run records and the side area on S3-compatible object storage.

``RUN_HISTORY_DIR=s3://<bucket>/<prefix>`` puts each record at ``<prefix>/<execution_id>.json``
with the same bytes as the local folder. Publishing is a conditional put
(``If-None-Match: *``), so a record is never overwritten, by this host or any other.
Each publication also leaves a small *change notice* in the side area
(``changes/<UTC publish time>_<execution_id>``): ids carry a run's start time, so a
long or recovered run's key sorts before keys an index has already seen, and the notices,
sorted by publication time, are how every API host finds it within seconds.

The side area lives under ``<prefix>/.side/``: record listings ask for ``<prefix>/exec_``
only, so no side key is ever mistaken for a record.

Network trouble (refused connection, timeout) becomes :class:`StoreUnavailable` (503);
a missing bucket or refused credentials become :class:`StorageError` with a clear message.
Timeouts and retries are set here, deliberately short, so no request hangs on the store
(RUN_HISTORY_S3_CONNECT_TIMEOUT, RUN_HISTORY_S3_READ_TIMEOUT, AWS_MAX_ATTEMPTS change them).
"""
from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

from .side import _SEGMENT, check_key
from .errors import InvalidRecord, RunAlreadyExists, RunNotFound, StorageError, StoreUnavailable
from .records import dump_record, is_valid_execution_id, parse_record
from .storage import RECORD_SUFFIX, Malformed, RecordFile, RunStore

log = logging.getLogger(__name__)

SCHEME = "s3://"
#: The side area's folder under the prefix (the local store's is ``<data dir>/.side``).
SIDE_FOLDER = ".side"
#: Where change notices live in the side area.
CHANGES = "changes"
#: Connect fast or give up: an endpoint that does not answer is a 503, not a hung worker.
#: Reads get longer (a large record), and one retry covers a dropped keep-alive connection.
#: Each can be changed for a slow network (or a test) with the variable named beside it.
CONNECT_TIMEOUT = ("RUN_HISTORY_S3_CONNECT_TIMEOUT", 2.0)
READ_TIMEOUT = ("RUN_HISTORY_S3_READ_TIMEOUT", 5.0)
#: Attempts per request, the first one included (AWS_MAX_ATTEMPTS or the AWS config file's
#: max_attempts wins), in botocore's "standard" retry mode (AWS_RETRY_MODE wins).
MAX_ATTEMPTS = 2
#: Errors that mean "the endpoint is not answering" (as opposed to "it answered no").
_UNREACHABLE = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ResponseStreamingError)

T = TypeVar("T")
#: GETs in flight while records are streamed to an export, and how many records may wait.
FETCH_THREADS = 8
READ_AHEAD = 32


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of ``s3://bucket/prefix``.

    :raises ValueError: if it is not such a URL.
    """
    if not url.startswith(SCHEME):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def _seconds(setting: tuple[str, float]) -> float:
    name, default = setting
    value = os.environ.get(name) or None
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def client_config() -> Config:
    """The S3 clients' timeouts and retries (see CONNECT_TIMEOUT, READ_TIMEOUT, MAX_ATTEMPTS).

    :raises ValueError: if a timeout variable is not a positive number.
    """
    session = botocore.session.get_session()  # the AWS variables and config files, as boto3 reads them
    attempts = session.get_config_variable("max_attempts") or MAX_ATTEMPTS
    mode = session.get_config_variable("retry_mode") or "standard"
    return Config(connect_timeout=_seconds(CONNECT_TIMEOUT), read_timeout=_seconds(READ_TIMEOUT),
                  retries={"total_max_attempts": attempts, "mode": mode}, max_pool_connections=32)


_clients: dict[tuple[str | None, int], Any] = {}
_clients_lock = threading.Lock()


def client_for(endpoint_url: str | None) -> Any:
    """One boto3 client per endpoint and process (clients are thread-safe, and slow to make;
    never shared across a fork). Credentials and region come from the standard AWS
    variables and files; without a region, us-east-1 (what S3-compatible servers accept)."""
    key = (endpoint_url, os.getpid())
    with _clients_lock:
        if key not in _clients:
            session = boto3.session.Session()
            _clients[key] = session.client("s3", endpoint_url=endpoint_url, config=client_config(),
                                           region_name=session.region_name or "us-east-1")
        return _clients[key]


def _error_code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _status(err: botocore.exceptions.ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def translate(err: Exception, what: str, **context: Any) -> StorageError:
    """A botocore error as one of ours: unreachable -> 503, refused -> a clear StorageError."""
    if isinstance(err, _UNREACHABLE):
        return StoreUnavailable("Record store unavailable", reason=type(err).__name__, **context)
    if isinstance(err, botocore.exceptions.ClientError):
        code, status = _error_code(err), _status(err)
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return StoreUnavailable("Record store unavailable", reason=code or str(status), **context)
        if code in ("NoSuchBucket",) or (status == 404 and what == "check"):
            return StorageError("S3 bucket does not exist", reason="NoSuchBucket", **context)
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError("S3 credentials refused", reason=code or "403", **context)
        return StorageError(f"S3 {what} failed", reason=code or str(status), **context)
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        return StorageError("No S3 credentials found (AWS_ACCESS_KEY_ID / ~/.aws/credentials)",
                            reason="NoCredentials", **context)
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return StoreUnavailable("Record store unavailable", reason=type(err).__name__, **context)
    raise err


def _s3_errors(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """botocore exceptions -> StorageError / StoreUnavailable, where they enter."""
    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return method(*args, **kwargs)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
                raise translate(err, what) from err
        return wrapper
    return decorate


def _identity(entry: dict[str, Any]) -> tuple[int, int, int]:
    """(etag as a number, size, mtime ns) of a listed object: the local store's (inode, size,
    mtime) for change detection. A rewritten object gets a new ETag."""
    etag = str(entry.get("ETag", "")).strip('"')
    modified: dt.datetime = entry["LastModified"]
    # whole seconds: a listing has milliseconds, a GET's Last-Modified header does not
    return zlib.crc32(etag.encode()) | (len(etag) << 32), int(entry["Size"]), int(modified.timestamp()) * 10**9


@dataclass(frozen=True)
class SavedObject:
    """What :meth:`S3Store.save` published."""

    execution_id: str
    key: str


class S3Store:
    """The record store as ``<prefix>/<execution_id>.json`` objects in an S3 bucket."""

    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        """*endpoint_url*: a non-AWS endpoint (default ``RUN_HISTORY_S3_ENDPOINT_URL``, else AWS)."""
        self.bucket, self.prefix = parse_url(url)
        self.url = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        #: What ``storage_dir`` shows; a string, so no code mistakes it for a local path.
        self.root = self.url
        self.endpoint_url = endpoint_url or os.environ.get("RUN_HISTORY_S3_ENDPOINT_URL") or None
        self.client = client or client_for(self.endpoint_url)
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.side = S3SideArea(self.client, self.bucket, f"{self._base}{SIDE_FOLDER}")

    # ------------------------------------------------------------ keys

    def key_for(self, execution_id: str) -> str:
        """The object key of a run. Malformed ids never become keys.

        :raises RunNotFound: if *execution_id* is not a well-formed id.
        """
        if not is_valid_execution_id(execution_id):
            raise RunNotFound("Execution not found", execution_id=execution_id)
        return f"{self._base}{execution_id}{RECORD_SUFFIX}"

    def _id_of(self, key: str) -> str | None:
        name = key[len(self._base):]
        if "/" in name or not name.endswith(RECORD_SUFFIX):
            return None
        return name[: -len(RECORD_SUFFIX)]

    def ensure_root(self) -> None:
        """Nothing to create: the bucket must exist (it is never created implicitly)."""

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Nothing to sweep: a put is atomic, there are no temp objects."""
        return 0

    @_s3_errors("check")
    def check(self) -> None:
        """Raise if the bucket cannot be reached with these credentials (cheap: one HEAD).

        :raises StorageError: a missing bucket or refused credentials (clear message).
        :raises StoreUnavailable: the endpoint does not answer.
        """
        self.client.head_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------ writing

    def save(self, record: dict[str, Any]) -> SavedObject:
        """Publish a record with a conditional put (``If-None-Match: *``): never overwrites.

        :raises RunAlreadyExists: if a run with this id is already stored.
        :raises StorageError: if the store refuses or does not answer (StoreUnavailable).
        :raises ValueError: if the record holds values JSON cannot carry.
        """
        execution_id = record["execution_id"]
        key = self.key_for(execution_id)
        if not self._put_new(execution_id, key, dump_record(record)):
            raise RunAlreadyExists("Run already stored", execution_id=execution_id)
        return SavedObject(execution_id, key)

    def save_bytes(self, execution_id: str, data: bytes) -> bool:
        """Publish the bytes of a record file as they are (an import); never overwrites.

        The same conditional put as :meth:`save` (and the same change notice). The caller
        validates *data* first (``parse_record``): the object holds the file byte for byte.

        :returns: True if stored, False if a run with this id is already stored (nothing written).
        :raises RunNotFound: if *execution_id* is malformed.
        :raises StorageError: if the store refuses or does not answer (StoreUnavailable).
        """
        return self._put_new(execution_id, self.key_for(execution_id), data)

    def _put_new(self, execution_id: str, key: str, data: bytes) -> bool:
        """A conditional put (``If-None-Match: *``) of *data*, then its change notice; False if taken."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*",
                                   ContentType="application/json; charset=utf-8")
        except botocore.exceptions.ClientError as err:
            # 412: the key exists. 409: a concurrent conditional put to the same key won.
            if _status(err) in (409, 412) or _error_code(err) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise translate(err, "put", execution_id=execution_id) from err
        except botocore.exceptions.BotoCoreError as err:
            raise translate(err, "put", execution_id=execution_id) from err
        self.notify(execution_id)
        return True

    def notify(self, execution_id: str) -> None:
        """Leave a change notice for the run (published or deleted), sorted by the time now.

        Best effort: a missed notice only delays the run until the next full listing.
        """
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        try:
            self.side.put(f"{CHANGES}/{stamp}_{execution_id}", b"")
        except StorageError as err:
            log.warning("run %s: change notice not written (%s); hosts find it at their next full listing",
                        execution_id, err.context.get("reason"))

    @_s3_errors("delete")
    def delete(self, execution_id: str) -> bool:
        """Remove a run's record; False if there was none (a malformed id: False)."""
        try:
            key = self.key_for(execution_id)
        except RunNotFound:
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404:
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=key)
        self.notify(execution_id)
        return True

    def put_raw(self, name: str, data: bytes) -> None:
        """Store *data* as ``<prefix>/<name>`` as it is (tests and tools: foreign or broken files).

        :raises StorageError: if the store refuses or does not answer.
        """
        try:
            self.client.put_object(Bucket=self.bucket, Key=f"{self._base}{name}", Body=data)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise translate(err, "put") from err

    # ------------------------------------------------------------ reading

    def read_bytes(self, execution_id: str) -> bytes:
        """The raw bytes of a run's record.

        :raises RunNotFound: if the id is malformed or no such object exists.
        :raises StorageError: if the store refuses or does not answer (StoreUnavailable).
        """
        key = self.key_for(execution_id)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404 or _error_code(err) == "NoSuchKey":
                raise RunNotFound("Execution not found", execution_id=execution_id) from None
            raise translate(err, "get", execution_id=execution_id) from err
        except botocore.exceptions.BotoCoreError as err:
            raise translate(err, "get", execution_id=execution_id) from err

    def fetch(self, execution_id: str) -> tuple[bytes, tuple[int, int, int]]:
        """The bytes of a run's record and their identity (as :meth:`iter_listing` gives it).

        :raises RunNotFound: if the id is malformed or no such object exists.
        :raises StorageError: if the store refuses or does not answer (StoreUnavailable).
        """
        key = self.key_for(execution_id)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404 or _error_code(err) == "NoSuchKey":
                raise RunNotFound("Execution not found", execution_id=execution_id) from None
            raise translate(err, "get", execution_id=execution_id) from err
        except botocore.exceptions.BotoCoreError as err:
            raise translate(err, "get", execution_id=execution_id) from err
        return data, _identity({"ETag": response.get("ETag"), "Size": len(data),
                                "LastModified": response["LastModified"]})

    def load(self, execution_id: str) -> dict[str, Any]:
        """One checked record.

        :raises RunNotFound: if the id is malformed or no such object exists.
        :raises InvalidRecord: if the object is not a run record.
        """
        return parse_record(self.read_bytes(execution_id), execution_id)

    def get(self, execution_id: str) -> dict[str, Any]:
        """One record to serve: an unreadable object is as good as missing.

        :raises RunNotFound: if the id is malformed, no object exists or it is not a run record.
        """
        try:
            return self.load(execution_id)
        except InvalidRecord:
            raise RunNotFound("Execution not found", execution_id=execution_id) from None

    def iter_records(self, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records for *execution_ids* in that order; objects gone or unreadable are skipped.

        A few GETs run ahead (each is a round trip; memory stays bounded by READ_AHEAD
        records). A store that stops answering raises StoreUnavailable (the download is
        cut, never short).
        """
        pool = ThreadPoolExecutor(FETCH_THREADS)
        try:
            pending: collections.deque = collections.deque()
            for execution_id in execution_ids:
                pending.append((execution_id, pool.submit(self.load, execution_id)))
                if len(pending) >= READ_AHEAD:
                    yield from self._taken(*pending.popleft())
            while pending:
                yield from self._taken(*pending.popleft())
        finally:  # a cut download or a failure: GETs not started yet are dropped, not waited for
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _taken(execution_id: str, future: Any) -> Iterator[dict[str, Any]]:
        try:
            yield future.result()
        except (RunNotFound, InvalidRecord) as err:
            log.warning("skipping run %s: %s", execution_id, err.message)

    def iter_listing(self, start_after: str | None = None,
                     malformed: Malformed | None = None) -> Iterator[RecordFile]:
        """Every record object in key order (so in start-time order), after the id *start_after*.

        Objects named ``exec_*.json`` whose names are no ids are tallied in *malformed*.

        :raises StoreUnavailable: if the endpoint stops answering (while iterating, too).
        """
        try:
            yield from self._iter_listing(start_after, malformed)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise translate(err, "list") from err

    def _iter_listing(self, start_after: str | None, malformed: Malformed | None) -> Iterator[RecordFile]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self._base}exec_"}
        if start_after:  # an id (that record excluded) or any start of a name (a time)
            suffix = RECORD_SUFFIX if is_valid_execution_id(start_after) else ""
            kwargs["StartAfter"] = f"{self._base}{start_after}{suffix}"
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for entry in page.get("Contents", ()):
                execution_id = self._id_of(entry["Key"])
                if execution_id is None:
                    continue
                if is_valid_execution_id(execution_id):
                    yield RecordFile(execution_id, *_identity(entry))
                elif malformed is not None:
                    malformed.count += 1
                    malformed.size += int(entry["Size"])

    def list_files(self, malformed: Malformed | None = None) -> list[RecordFile]:
        """Every record object with its identity (ETag, size, mtime), in key order."""
        return list(self.iter_listing(malformed=malformed))

    def list_inodes(self, malformed: Malformed | None = None) -> dict[str, int]:
        """Id -> ETag number of every record object."""
        return {f.execution_id: f.inode for f in self.iter_listing(malformed=malformed)}

    def list_ids(self) -> list[str]:
        """Ids of every record, newest first."""
        return sorted((f.execution_id for f in self.iter_listing()), reverse=True)

    def iter_changes(self, start_after: str | None = None) -> Iterator[tuple[str, str]]:
        """(notice key, execution id) of the change notices after *start_after*, oldest first."""
        for key in self.side.list(CHANGES, start_after=start_after):
            name = key.rsplit("/", 1)[-1]
            _, _, execution_id = name.partition("_")
            if is_valid_execution_id(execution_id):
                yield name, execution_id

    # the index-free stats: the same computation as the local folder's
    scan_stats = RunStore.scan_stats


class S3SideArea:
    """The side area as objects under ``<prefix>/.side/`` (same methods as LocalSideArea)."""

    def __init__(self, client: Any, bucket: str, base: str) -> None:
        self.client = client
        self.bucket = bucket
        self.base = base.strip("/")

    def key_for(self, key: str) -> str:
        """The object key of a side-area key (validated like the local one)."""
        return f"{self.base}/{'/'.join(check_key(key))}"

    @_s3_errors("side-area write")
    def create(self, key: str, data: bytes) -> bool:
        """Store *data* only if *key* is free (a conditional put, atomic); False if taken."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key_for(key), Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as err:
            if _status(err) in (409, 412):
                return False
            raise
        return True

    @_s3_errors("side-area write")
    def put(self, key: str, data: bytes) -> None:
        """Store *data* under *key*, replacing what was there (a put is atomic)."""
        self.client.put_object(Bucket=self.bucket, Key=self.key_for(key), Body=data)

    @_s3_errors("side-area read")
    def get(self, key: str) -> bytes | None:
        """The bytes under *key*, or None."""
        handle = self.open(key)
        return None if handle is None else handle.read()

    @_s3_errors("side-area write")
    def delete(self, key: str) -> bool:
        """Remove *key*; False if it was not there."""
        if self.size(key) is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(key))
        return True

    @_s3_errors("side-area list")
    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Every key directly in the folder *prefix*, sorted (after the name *start_after*)."""
        folder = self.key_for(prefix) + "/"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": folder, "Delimiter": "/"}
        if start_after:
            kwargs["StartAfter"] = folder + start_after
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for entry in page.get("Contents", ()):
                name = entry["Key"][len(folder):]
                if _SEGMENT.match(name):
                    keys.append(f"{prefix}/{name}")
        return sorted(keys)

    @_s3_errors("side-area write")
    def put_file(self, key: str, source: str | os.PathLike[str]) -> None:
        """Store a local file's content under *key* (multipart for large files; the object
        appears whole when the upload completes)."""
        self.client.upload_file(os.fspath(source), self.bucket, self.key_for(key))

    @_s3_errors("side-area read")
    def open(self, key: str) -> BinaryIO | None:
        """A readable stream of the bytes under *key*, or None."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key_for(key))["Body"]
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404 or _error_code(err) == "NoSuchKey":
                return None
            raise

    @_s3_errors("side-area read")
    def size(self, key: str) -> int | None:
        """The size in bytes of *key*, or None."""
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.key_for(key))["ContentLength"])
        except botocore.exceptions.ClientError as err:
            if _status(err) == 404:
                return None
            raise
