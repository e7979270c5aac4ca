"""Request side of the audit trail: what each export, link creation and link use writes."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response, current_app, g, request

from execution_history.audit import AuditLog

from .auth import principal


def audit_log() -> AuditLog:
    return current_app.extensions["run_history"]["audit"]


def begin(event: str, **fields: Any) -> None:
    """Mark the request as auditable (export, link_created, link_used) with what it asks for."""
    g.audit = {"event": event, **fields}


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


def stream_audited(chunks: Iterable[bytes], rows: Counted | None) -> Iterator[bytes]:
    """Pass chunks on, then write the export's audit line: rows and bytes sent, complete or not.

    The line's fields are taken now, while the request is current; the body runs later.
    """
    audit = g.pop("audit", None)
    if audit is None:
        return iter(chunks)
    event = audit.pop("event")
    return _audited(chunks, rows, audit_log(), event, {**_common(), **audit})


def _audited(chunks: Iterable[bytes], rows: Counted | None, log: AuditLog, event: str,
             fields: dict[str, Any]) -> Iterator[bytes]:
    sent = 0
    complete = False
    try:
        for chunk in chunks:
            sent += len(chunk)
            yield chunk
        complete = True
    finally:
        log.append(event, **fields, rows=rows.count if rows else None, bytes=sent, status=200, complete=complete)
