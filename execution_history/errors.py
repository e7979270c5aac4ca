"""The exception tree: each class knows its HTTP status and API error code."""
from __future__ import annotations

from typing import Any


class ExecutionHistoryError(Exception):
    """Base of every error this project raises on purpose; `to_dict()` is its API body."""

    status_code = 500
    code = "INTERNAL_ERROR"
    #: Extra response headers (401's WWW-Authenticate).
    headers: dict[str, str] = {}

    def __init__(self, message: str = "Internal server error", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body (without `request_id`, which the app adds)."""
        return {"error": self.message, "code": self.code, **self.context}


class InvalidParameter(ExecutionHistoryError):
    """A query or path parameter has a value that is not allowed."""

    status_code = 400
    code = "INVALID_PARAMETER"


class UnknownParameter(InvalidParameter):
    """A query parameter that the route does not take."""

    code = "UNKNOWN_PARAMETER"


class InvalidFormat(ExecutionHistoryError):
    """An export format that is neither available nor planned."""

    status_code = 400
    code = "INVALID_FORMAT"


class ExportTooLarge(ExecutionHistoryError):
    """A selection that the asked format cannot hold (Excel's row limit)."""

    status_code = 400
    code = "EXPORT_TOO_LARGE"


class InvalidHost(ExecutionHistoryError):
    """A request naming a host this service does not serve (RUN_HISTORY_TRUSTED_HOSTS)."""

    status_code = 400
    code = "INVALID_HOST"


class Unauthorized(ExecutionHistoryError):
    """No valid bearer token (access control is on)."""

    status_code = 401
    code = "UNAUTHORIZED"
    headers = {"WWW-Authenticate": 'Bearer realm="run-history"'}


class Forbidden(ExecutionHistoryError):
    """Authenticated, but not allowed: another user's run, a tampered link, a bad CSRF token."""

    status_code = 403
    code = "FORBIDDEN"


class LinkExpired(ExecutionHistoryError):
    """A download link whose time is up."""

    status_code = 410
    code = "LINK_EXPIRED"


class NotReady(ExecutionHistoryError):
    """An export job's file asked for before the job is done."""

    status_code = 409
    code = "NOT_READY"


class ExportExpired(ExecutionHistoryError):
    """An export job's file past RUN_HISTORY_EXPORT_TTL: it has been deleted."""

    status_code = 410
    code = "EXPORT_EXPIRED"


class RunNotFound(ExecutionHistoryError):
    """No readable run with that id (malformed ids included: they never become paths)."""

    status_code = 404
    code = "NOT_FOUND"


class RunInProgress(ExecutionHistoryError):
    """A run whose pipeline is still logging (a live journal): it cannot be deleted yet."""

    status_code = 409
    code = "RUN_IN_PROGRESS"


class FormatNotImplemented(ExecutionHistoryError):
    """A planned export format (pdf, docx)."""

    status_code = 501
    code = "FORMAT_NOT_IMPLEMENTED"


class InvalidRecord(ExecutionHistoryError):
    """A record file or dict that is not a valid run record (counted, never served)."""


class RunAlreadyExists(ExecutionHistoryError):
    """Publishing would overwrite an existing run file; the store never does that."""


class StorageError(ExecutionHistoryError):
    """The data folder could not be read or written (permissions, disk full)."""


class StoreUnavailable(StorageError):
    """The record store does not answer (an S3 endpoint down or timing out): try again later."""

    status_code = 503
    code = "STORE_UNAVAILABLE"
    #: Seconds a client should wait before asking again.
    retry_after = 5
    headers = {"Retry-After": str(retry_after)}


class SelectionChanged(ExecutionHistoryError):
    """A listed run turned unreadable or vanished before its turn in a bulk export: the count
    sent cannot be kept. Before the first byte a 503 (retry: the index has caught up);
    after it, the download is cut."""

    status_code = 503
    code = "STORE_UNAVAILABLE"
    headers = {"Retry-After": "1"}


class IndexUnavailable(ExecutionHistoryError):
    """The run index cannot be used here and now: it must be written (made, repaired, brought
    in step with the files) but its folder cannot be written (mounted read-only, permissions,
    disk full). Answered 503 until the folder is writable again; nothing is lost (the files
    are the source of truth)."""

    status_code = 503
    code = "INDEX_UNAVAILABLE"
    #: Seconds a client should wait before asking again.
    retry_after = 30
    headers = {"Retry-After": str(retry_after)}


class IndexBuilding(ExecutionHistoryError):
    """The run index is being built from scratch (a cold build): answered 503 with the build's
    progress (``phase`` ``summaries`` or ``text``, ``indexed`` of ``total``) until it is done.
    In the ``text`` phase only text search (``q``) waits; lists, stats and exports answer."""

    status_code = 503
    code = "INDEX_BUILDING"
    #: Seconds a client should wait before asking again.
    retry_after = 2
    headers = {"Retry-After": str(retry_after)}
