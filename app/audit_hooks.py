"""Request side of the audit trail: the line each audited request writes (exports, links, deletes, media).

Which endpoints are audited, with which event, is decided in one place: :mod:`app.audit_policy`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Response, g, request

from execution_history.audit import AuditLog
from execution_history.errors import Unauthorized
from execution_history.exporters import ALIASES, EXPORTERS, PLANNED
from execution_history.filters import RunQuery
from execution_history.records import is_valid_execution_id

from . import auth
from .audit_policy import AUDITED, URL_ARGUMENTS, Audited
from .auth import is_secret, principal
from .extensions import get_audit


def install(app: Flask) -> None:
    """Audit what :data:`~app.audit_policy.AUDITED` names: each view that starts its line on
    entry is wrapped to do so (call once every blueprint is registered).

    :raises LookupError: for a table entry that names no endpoint of *app* (a typo would
        otherwise audit nothing).
    """
    for endpoint, rule in AUDITED.items():
        if endpoint not in app.view_functions:
            raise LookupError(f"audit_policy.AUDITED names {endpoint!r}, which is no endpoint of this app")
        if rule.at_start:
            app.view_functions[endpoint] = _starting(app.view_functions[endpoint], rule)


def _starting(view: Callable[..., Any], rule: Audited) -> Callable[..., Any]:
    @functools.wraps(view)
    def audited(**view_args: Any) -> Any:
        _start(rule.event, **{name: view_args.get(URL_ARGUMENTS[name]) if name in URL_ARGUMENTS else None
                              for name in rule.fields})
        return view(**view_args)

    return audited


def authenticate_api() -> None:
    """before_request: :func:`app.auth.authenticate_api`; a request it refuses (401) is audited
    too where the policy says so, with the format and run its URL names."""
    try:
        auth.authenticate_api()
    except Unauthorized:
        rule = AUDITED.get(request.endpoint or "")
        if rule is not None and rule.refused:
            view_args = request.view_args or {}
            _start(rule.event, format=view_args.get("fmt"), execution_id=view_args.get("execution_id"))
        raise


def current_event() -> str:
    """The audit event of the current request's endpoint (KeyError: the policy has none)."""
    return AUDITED[request.endpoint or ""].event


def begin(**fields: Any) -> None:
    """Start the current request's audit line, for a view the policy lets start it itself
    (``at_start=False``), with what it asks for."""
    _start(current_event(), **fields)


def _start(event: str, **fields: Any) -> None:
    """Mark the request as auditable with *event* and what it asks for.

    Only checked values reach the line: a ``format`` that names a format, an
    ``execution_id`` that is a well-formed id (else None), never a raw path segment or
    query string, where a client may have put a token or a link.
    """
    g.audit = {"event": event, **_checked(fields)}


def note(**fields: Any) -> None:
    """Add to the current request's audit line, if it has one (checked like :func:`_start`)."""
    if "audit" in g:
        g.audit.update(_checked(fields))


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    if "format" in fields:
        fields["format"] = _known_format(fields["format"])
    if "execution_id" in fields and not is_valid_execution_id(fields["execution_id"]):
        fields["execution_id"] = None
    return fields


def note_filters(query: RunQuery) -> None:
    """Record the validated filters of the auditable request (given ones only, wire names)."""
    if "audit" in g:
        g.audit["filters"] = {k: "[redacted]" if isinstance(v, str) and is_secret(v) else v
                              for k, v in query.filters.to_wire().items() if v is not None}


def _known_format(name: Any) -> str | None:
    key = str(name or "").lower()
    key = ALIASES.get(key, key)
    return key if key in EXPORTERS or key in PLANNED else None


def common_fields() -> dict[str, Any]:
    """The fields every audit line has: who, which request, from where, which route."""
    who = principal()
    rule = request.url_rule.rule if request.url_rule else request.path  # never the query string
    return {"user": who.user, "role": who.role, "request_id": g.get("request_id"),
            "client": request.remote_addr, "route": rule}


def finish(response: Response) -> Response:
    """after_request: write the line of an auditable request that did not stream (errors, links)."""
    audit = g.pop("audit", None)
    if audit is not None:
        event = audit.pop("event")
        get_audit().append(event, **common_fields(), **audit, status=response.status_code)
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
    return AuditedStream(chunks, rows, get_audit(), event, {**common_fields(), **audit})


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
