"""Temporary download links: the export request and its creator's scope, signed with the app's secret."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
)

from execution_history.errors import Forbidden, LinkExpired
from execution_history.exporters import get_exporter

from .auth import Principal

SALT = "run-history.download-link"


class LinkSigner:
    """Makes and checks link tokens. *clock* is injectable (tests move time, never sleep)."""

    def __init__(self, secret: str, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl_seconds
        self.clock = clock
        signer = self

        class _ClockedSigner(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(signer.clock())

        self._serializer = URLSafeTimedSerializer(secret, salt=SALT, signer=_ClockedSigner)

    def create(self, creator: Principal, kind: str, fmt: str, args: list[tuple[str, str]],
               execution_id: str | None = None, token_sha256: str | None = None) -> tuple[str, str]:
        """(token, expires_at ISO) for an export of *kind* ``run`` or ``bulk``; *token_sha256*: the
        hash of the access token it was made with (the link dies with that token)."""
        payload = {"u": creator.user, "r": creator.role, "k": kind, "f": fmt, "a": args, "id": execution_id,
                   "t": token_sha256}
        token = self._serializer.dumps(payload)
        expires = dt.datetime.fromtimestamp(int(self.clock()) + self.ttl, dt.timezone.utc)
        return token, expires.isoformat()

    def verify(self, token: str) -> dict[str, Any]:
        """The payload of a valid link.

        :raises LinkExpired: past its time (410).
        :raises Forbidden: tampered with, or not a link at all (403).
        """
        try:
            return self._serializer.loads(token, max_age=self.ttl)
        except SignatureExpired:
            raise LinkExpired("This download link has expired; ask for a new one") from None
        except BadSignature:
            raise Forbidden("This download link is not valid") from None


    def is_signed(self, token: str) -> bool:
        """Whether *token* carries this signer's signature (valid or expired): a link."""
        try:
            self.verify(token)
        except LinkExpired:
            return True
        except Forbidden:
            return False
        return True


def link_for_export(kind: str, fmt: str, execution_id: str | None = None) -> tuple[str, str]:
    """(token, expires_at) for the current request's export (``run`` or ``bulk``), in the
    current principal's scope: checked as the export itself would be, so a bad link is
    refused now, not when it is used; audited as ``link_created``."""
    from flask import current_app, g, request

    from . import audit_hooks, get_store
    from .auth import principal, visible_record
    from .params import export_params, load_params, load_query

    audit_hooks.begin("link_created", format=fmt, **(
        {"execution_id": execution_id} if kind == "run" else {"filters": None}))  # filters once validated
    exporter = get_exporter(fmt)
    if kind == "run":
        load_params(export_params(exporter, bulk=False), request.args)
        visible_record(get_store().get(execution_id))  # finished runs only, like the export
    else:
        audit_hooks.note_filters(load_query(export_params(exporter, bulk=True), request.args)[0])
    signer: LinkSigner = current_app.extensions["run_history"]["links"]
    return signer.create(principal(), kind, exporter.name, list(request.args.items(multi=True)), execution_id,
                         token_sha256=g.get("token_sha256"))
