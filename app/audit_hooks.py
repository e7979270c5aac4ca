"""Request side of the audit trail: what each export, link creation and link use writes."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response, current_app, g, request

from execution_history.audit import AuditLog
from execution_history.exporters import ALIASES, EXPORTERS, PLANNED
from execution_history.filters import RunQuery
from execution_history.records import is_valid_execution_id

from .auth import is_secret, principal


def audit_log() -> AuditLog:
    return current_app.extensions["run_history"]["audit"]


def begin(event: str, **fields: Any) -> None:
    """Mark the request as auditable (export, link_created, link_used) with what it asks for.

    Only checked values reach the line: a ``format`` that names a format, an
    ``execution_id`` that is a well-formed id (else None), never a raw path segment or
    query string, where a client may have put a token or a link.
    """
    if "format" in fields:
        fields["format"] = _known_format(fields["format"])
    if "execution_id" in fields and not is_valid_execution_id(fields["execution_id"]):
        fields["execution_id"] = None
    g.audit = {"event": event, **fields}


def note_filters(query: RunQuery) -> None:
    """Record the validated filters of the auditable request (given ones only, wire names)."""
    if "audit" in g:
        g.audit["filters"] = {k: "[redacted]" if isinstance(v, str) and is_secret(v) else v
                              for k, v in query.filters.to_wire().items() if v is not None}


def _known_format(name: Any) -> str | None:
    key = str(name or "").lower()
    key = ALIASES.get(key, key)
    return key if key in EXPORTERS or key in PLANNED else None


def _common() -> dict[str, Any]:
    who = principal()
    rule = request.url_rule.rule if request.url_rule else request.path  # never the query string
    return {"user": who.user, "role": who.role, "request_id": g.get("request_id"),
            "client": request.remote_addr, "route": rule}


def finish(response: Response) -> Response:
    """after_request: write the line of an auditable request that did not stream (errors, links)."""
    audit = g.pop("audit", None)
    if audit is not None:
        event = audit.pop("event")
        audit_log().append(event, **_common(), **audit, status=response.status_code)
    return response


class Counted:
    """Counts the records an exporter takes from an iterator."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        self.records = records
        self.count = 0

    def tap(self, records: Iterable[dict[str, Any]]) -> Counted:
        """Count *records* (for ``export_selection(tap=...)``)."""
        self.records = records
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for record in self.records:
            self.count += 1
            yield record


def stream_audited(chunks: Iterable[bytes], rows: Counted | None) -> Iterable[bytes]:
    """Pass chunks on, then write the export's audit line: rows and bytes sent, complete or not.

    The line's fields are taken now, while the request is current; the body runs later.
    """
    audit = g.pop("audit", None)
    if audit is None:
        return chunks
    event = audit.pop("event")
    return AuditedStream(chunks, rows, audit_log(), event, {**_common(), **audit})


class AuditedStream:
    """A response body that writes its audit line exactly once: when it ends, is cut, or is
    closed without being read (a HEAD request, a client gone before the first byte)."""

    def __init__(self, chunks: Iterable[bytes], rows: Counted | None, log: AuditLog, event: str,
                 fields: dict[str, Any]) -> None:
        self.chunks, self.rows, self.log, self.event, self.fields = chunks, rows, log, event, fields
        self.sent = 0
        self.complete = False
        self.written = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.chunks:
                self.sent += len(chunk)
                yield chunk
            self.complete = True
        finally:
            self.close()

    def close(self) -> None:
        if self.written:
            return
        self.written = True
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        self.log.append(self.event, **self.fields, rows=self.rows.count if self.rows else None, bytes=self.sent,
                        status=200, complete=self.complete)
