"""Temporary download links: an opaque, signed reference to a link record kept server-side.

The URL carries ``<link id>.<signature>`` and nothing else: the link's record (creator,
role, the hash of the token it was made with, kind, format, validated arguments, its own
``expires_at``) lives in the store's side area under ``links/<id>.json``, shared by every
worker and host. So nobody can read a link's payload, its expiry is the one fixed when it
was made (a later RUN_HISTORY_LINK_TTL changes nothing), and it dies with its creator's token.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import g, request
from itsdangerous import Signer

from execution_history.errors import Forbidden, LinkExpired
from execution_history.exporters import get_exporter

from . import audit_hooks
from .auth import Principal, principal, same_secret, visible_record
from .extensions import get_links, get_side, get_store
from .params import export_params, load_params, load_query

SALT = "run-history.download-link"
#: A link token exactly: 22 characters of id, a dot, 43 of HMAC-SHA256. Anything else,
#: an appended character included (ASCII or not), is not a link.
_TOKEN = re.compile(r"\A([A-Za-z0-9_-]{22})\.[A-Za-z0-9_-]{43}\Z")


class LinkSigner:
    """Makes and checks links. *clock* is injectable (tests move time, never sleep); *side*
    is the side area holding link records (default: the current app's, looked up per call)."""

    def __init__(self, secret: str, ttl_seconds: int, clock: Callable[[], float] = time.time,
                 side: Any = None) -> None:
        self.ttl = ttl_seconds
        self.clock = clock
        self.side = side
        self._signer = Signer(secret, salt=SALT, digest_method=hashlib.sha256)

    def _side(self) -> Any:
        if self.side is not None:
            return self.side
        return get_side()

    def create(self, creator: Principal, kind: str, fmt: str, args: list[tuple[str, str]],
               execution_id: str | None = None, token_sha256: str | None = None) -> tuple[str, str]:
        """(token, expires_at ISO) for an export of *kind* ``run`` or ``bulk``; *token_sha256*: the
        hash of the access token it was made with (the link dies with that token)."""
        now = int(self.clock())
        expires = dt.datetime.fromtimestamp(now + self.ttl, dt.timezone.utc)
        link_id = secrets.token_urlsafe(16)
        record = {"id": link_id, "user": creator.user, "role": creator.role, "token_sha256": token_sha256,
                  "kind": kind, "format": fmt, "args": [list(pair) for pair in args], "execution_id": execution_id,
                  "created_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                  "expires_at": expires.isoformat()}
        if not self._side().create(f"links/{link_id}.json", json.dumps(record).encode("utf-8")):
            raise RuntimeError("link id collision")  # 128 random bits: never in practice
        return self._signer.sign(link_id).decode("ascii"), expires.isoformat()

    def link_id(self, token: str) -> str | None:
        """The id of a token that carries this signer's signature exactly, else None."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        # Compared with the one canonical token of the id, not unsigned: base64 decoding would
        # ignore the unused low bits of the last character, so a changed byte could pass.
        expected = self._signer.sign(match.group(1)).decode("ascii")
        return match.group(1) if same_secret(token, expected) else None

    def is_signed(self, token: str) -> bool:
        """Whether *token* is a link of this signer (valid, expired or revoked)."""
        return self.link_id(token) is not None

    def verify(self, token: str) -> dict[str, Any]:
        """The record of a valid link: ``user, role, token_sha256, kind, format, args, execution_id``.

        :raises LinkExpired: past its own ``expires_at`` (410).
        :raises Forbidden: tampered with, not a link at all, or unknown here (403).
        """
        link_id = self.link_id(token)
        raw = self._side().get(f"links/{link_id}.json") if link_id else None
        if raw is None:
            raise Forbidden("This download link is not valid")
        record = json.loads(raw)
        if dt.datetime.fromisoformat(record["expires_at"]).timestamp() <= self.clock():
            raise LinkExpired("This download link has expired; ask for a new one")
        return record


def link_for_export(kind: str, fmt: str, execution_id: str | None = None) -> tuple[str, str]:
    """(token, expires_at) for the current request's export (``run`` or ``bulk``), in the
    current principal's scope: checked as the export itself would be, so a bad link is
    refused now, not when it is used; audited as ``link_created`` (app.audit_policy), the
    filters once validated."""
    exporter = get_exporter(fmt)
    if kind == "run":
        load_params(export_params(exporter, bulk=False), request.args)
        visible_record(get_store().get(execution_id))  # finished runs only, like the export
    else:
        audit_hooks.note_filters(load_query(export_params(exporter, bulk=True), request.args)[0])
    return get_links().create(principal(), kind, exporter.name, list(request.args.items(multi=True)), execution_id,
                              token_sha256=g.get("token_sha256"))
