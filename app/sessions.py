"""Server-side sign-in sessions: the cookie carries only a signed session id; the session
itself (user, role, token hash, CSRF token, created_at) lives in the store's side area under
``sessions/<id>.json``, shared by every worker and host.

So signing out deletes the session and the old cookie signs nobody in again, anywhere; a
session whose token was revoked is deleted at its next request (pages check per request).
A Flask ``SessionInterface``: views keep using ``flask.session``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import time
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import Signer
from werkzeug.datastructures import CallbackDict

from .digests import same_secret
from .extensions import get_side

SALT = "run-history.session"
#: The cookie exactly: a 32-character id, a dot, a 43-character HMAC-SHA256.
_COOKIE = re.compile(r"\A([A-Za-z0-9_-]{32})\.[A-Za-z0-9_-]{43}\Z")
_PRUNE_EVERY = 3600.0  # seconds between sweeps of expired session records, per process


class SideSession(CallbackDict, SessionMixin):  # type: ignore[misc]
    """A session dict that knows its id (None until first saved) and whether it changed."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 created_at: str | None = None) -> None:
        def on_update(session: SideSession) -> None:
            session.modified = True
            session.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.created_at = created_at
        self.modified = False
        self.accessed = sid is not None
        self.stale_sid: str | None = None

    def renew(self) -> None:
        """Give the session a new id (at sign-in: no id chosen before it stays valid after)."""
        if self.sid is not None:
            self.stale_sid = self.sid
        self.sid = None
        self.created_at = None
        self.modified = True


def _side(app: Flask) -> Any:
    return get_side(app)


def _signer(app: Flask) -> Signer:
    return Signer(app.secret_key, salt=SALT, digest_method=hashlib.sha256)


def sid_of(app: Flask, value: str | None) -> str | None:
    """The session id a cookie value carries, if it is exactly one of ours (canonical form)."""
    match = _COOKIE.match(value or "")
    if match is None:
        return None
    expected = _signer(app).sign(match.group(1)).decode("ascii")
    return match.group(1) if same_secret(value or "", expected) else None


def _key(sid: str) -> str:
    return f"sessions/{sid}.json"


class SideSessionInterface(SessionInterface):
    """Sessions in the side area; the cookie is ``<id>.<signature>``."""

    def __init__(self) -> None:
        self._pruned = 0.0

    def open_session(self, app: Flask, request: Request) -> SideSession:
        """The session the cookie names, or a new empty one (unknown, expired or tampered id)."""
        sid = sid_of(app, request.cookies.get(self.get_cookie_name(app)))
        raw = _side(app).get(_key(sid)) if sid else None
        if raw is None:
            return SideSession()
        record = json.loads(raw)
        created = record.pop("created_at", None)
        if self._expired(app, created):
            _side(app).delete(_key(sid))
            return SideSession()
        return SideSession(record, sid, created)

    def _expired(self, app: Flask, created_at: str | None) -> bool:
        if not created_at:
            return True
        age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(created_at)
        return age > app.permanent_session_lifetime

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write a changed session (a new id gets a cookie); an emptied one is deleted, cookie too."""
        assert isinstance(session, SideSession)
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        if session.accessed:
            response.vary.add("Cookie")
        if session.stale_sid:
            _side(app).delete(_key(session.stale_sid))
        if not session:
            if session.sid is not None:  # signed out or cleared: the session ends on the server
                _side(app).delete(_key(session.sid))
            if session.modified or session.sid is not None:
                response.delete_cookie(name, domain=domain, path=path, secure=self.get_cookie_secure(app),
                                       httponly=self.get_cookie_httponly(app), samesite=self.get_cookie_samesite(app))
            return
        if not session.modified:
            return
        fresh = session.sid is None
        if fresh:
            session.sid = secrets.token_urlsafe(24)
            session.created_at = dt.datetime.now(dt.timezone.utc).isoformat()
            self._prune(app)
        record = {**dict(session), "created_at": session.created_at}
        _side(app).put(_key(session.sid), json.dumps(record).encode("utf-8"))
        if fresh:
            response.set_cookie(name, _signer(app).sign(session.sid).decode("ascii"), domain=domain, path=path,
                                secure=self.get_cookie_secure(app), httponly=self.get_cookie_httponly(app),
                                samesite=self.get_cookie_samesite(app))

    def _prune(self, app: Flask) -> None:
        """Delete expired session records, at most once an hour per process."""
        now = time.monotonic()
        if now - self._pruned < _PRUNE_EVERY and self._pruned:
            return
        self._pruned = now
        side = _side(app)
        for key in side.list("sessions"):
            raw = side.get(key)
            try:
                expired = raw is not None and self._expired(app, json.loads(raw).get("created_at"))
            except ValueError:
                expired = True
            if expired:
                side.delete(key)


def end_sessions_of(app: Flask, token_sha256: str) -> int:
    """Delete every session signed in with the token of this hash; returns how many."""
    side = _side(app)
    ended = 0
    for key in side.list("sessions"):
        raw = side.get(key)
        try:
            match = raw is not None and same_secret(json.loads(raw).get("token_sha256") or "", token_sha256)
        except ValueError:
            match = False
        if match and side.delete(key):
            ended += 1
    return ended
