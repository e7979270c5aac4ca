"""Access control: bearer tokens (stored hashed), who may see which run, and the secret key.

Off unless ``RUN_HISTORY_TOKENS`` names a tokens file: then every /api request needs
``Authorization: Bearer <token>`` (except a signed download link), and pages need a
sign-in. An admin sees every run; a researcher only runs whose ``user_id`` is theirs.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app, g, request, session

from execution_history import atomic, journal
from execution_history.errors import Forbidden, RunNotFound, Unauthorized
from execution_history.storage import RunStore

from .digests import hash_token, same_secret
from .extensions import get_index, get_layout, get_links, get_tokens
from .sessions import sid_of

ROLES = ("admin", "researcher")


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user and a role, or nobody in particular when access control is off."""

    user: str | None
    role: str  # "admin", "researcher", or "open" (access control off)

    @property
    def scope(self) -> str | None:
        """The user_id a researcher is limited to; None for everyone else."""
        return self.user if self.role == "researcher" else None

    def may_see(self, record: dict[str, Any]) -> bool:
        return self.scope is None or record.get("user_id") == self.scope


OPEN = Principal(None, "open")


class TokenStore:
    """The tokens file: ``{"tokens": [{"sha256", "user", "role", "created_at"}]}``, never a token.

    Re-read when it changes on disk, so ``runs token create`` takes effect without a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._entries: list[dict[str, str]] = []

    def _load(self) -> list[dict[str, str]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        with self._lock:
            # the inode too: an atomic replace within the same nanosecond keeps size and mtime
            if self._seen != (st.st_ino, st.st_mtime_ns, st.st_size):
                self._entries = self._read()
                self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            return self._entries

    def _read(self) -> list[dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        data = json.loads(text or "{}")
        return [e for e in data.get("tokens", []) if e.get("role") in ROLES]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a token, or None. Compares against every entry in constant time."""
        digest = hash_token(token)
        found = None
        for entry in self._load():
            if same_secret(digest, entry["sha256"]):
                found = entry
        return Principal(found["user"], found["role"]) if found else None

    def has_hash(self, digest: str) -> bool:
        return any(same_secret(digest, entry["sha256"]) for entry in self._load())

    def create(self, user: str, role: str) -> str:
        """Add a token for *user* with *role*; returns the token (shown once, stored hashed)."""
        token = secrets.token_urlsafe(32)
        entry = {"sha256": hash_token(token), "user": user, "role": role,
                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self._rewrite(lambda entries: [*entries, entry])
        return token

    def revoke(self, user: str) -> int:
        """Remove every token of *user*; returns how many."""
        removed = []

        def change(entries: list[dict[str, str]]) -> list[dict[str, str]]:
            removed.extend(e for e in entries if e["user"] == user)
            return [e for e in entries if e["user"] != user]

        self._rewrite(change)
        return len(removed)

    def hashes_of(self, user: str) -> list[str]:
        """The token hashes of *user* (to end the sessions made with them)."""
        return [e["sha256"] for e in self._load() if e["user"] == user]

    def users(self) -> list[dict[str, str]]:
        """User, role and creation time of every token (no hashes)."""
        return [{k: e[k] for k in ("user", "role", "created_at")} for e in self._load()]

    def _rewrite(self, change: Any) -> None:
        """Read, change and write the file as one step for every process and thread: under an
        exclusive ``flock`` on ``<file>.lock`` beside it, from the file as it is now (never a
        cached copy, which would bring back a token another process just revoked), written
        atomically (temp file, fsync, rename, fsync of the folder) with mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, also if we die
            entries = change(self._read())
            atomic.replace_file(self.path, json.dumps({"tokens": entries}, indent=1).encode("utf-8"), 0o600)
        finally:
            os.close(fd)
        with self._lock:
            self._seen = None  # read it again next time


def load_secret_key(configured: str | None, data_dir: Path) -> str:
    """RUN_HISTORY_SECRET_KEY, else a key generated once beside the data folder (mode 0600),
    so every worker and restart signs links and sessions alike."""
    if configured:
        return configured
    path = data_dir.parent / ".run_history_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(temp, path)  # first writer wins; the others read its key
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
    return path.read_text().strip()


# ---------------------------------------------------------------- per request


def tokens() -> TokenStore | None:
    """The app's token store, or None when access control is off."""
    return get_tokens()


def principal() -> Principal:
    """Who the current request acts for."""
    return g.get("principal", OPEN)


#: GET endpoints the pages load from the browser (``<img>``, ``<audio>`` sources), which cannot
#: send a bearer token: the sign-in session cookie is accepted for them too (reads only, so no CSRF).
SESSION_ENDPOINTS = {"media.get_item_file", "media.get_thumbnail",
                     # the pages' export-job calls (POST and DELETE need the CSRF token)
                     "jobs.create_export_job", "jobs.list_export_jobs", "jobs.get_export_job",
                     "jobs.download_export_job", "jobs.delete_export_job"}


def session_principal() -> Principal | None:
    """The signed-in page user, for a page-called API route (SESSION_ENDPOINTS) without a bearer token.

    POST and DELETE need the session's CSRF token in ``X-CSRF-Token`` (a cross-site form
    cannot set a header). This is the one place that reads the session for the API.

    :raises Forbidden: for a signed-in POST or DELETE without the right CSRF token.
    """
    store = tokens()
    digest = session.get("token_sha256")
    if store is None or request.endpoint not in SESSION_ENDPOINTS or not digest or not store.has_hash(digest):
        return None
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent or not same_secret(sent, session.get("csrf", "")):
            raise Forbidden("Missing or wrong CSRF token (X-CSRF-Token)")
    g.token_sha256 = digest
    return Principal(session["user"], session["role"])


#: /api routes that need no token: a signed link carries its creator's scope; health is public.
_OPEN_ENDPOINTS = {"api.download_link", "health.get_health"}


def authenticate_api() -> None:
    """Before every /api request (unknown routes too) when access control is on: a valid
    bearer token or 401. A download link needs none: it carries its creator's scope."""
    store = tokens()
    if store is None or not request.path.startswith("/api/") or request.endpoint in _OPEN_ENDPOINTS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    found = store.authenticate(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if found is None and not header:  # the pages' own calls (media, export jobs): the sign-in session
        if (found := session_principal()) is not None:
            g.principal = found
            return
    if found is None:  # audited where app.audit_policy says (audit_hooks.authenticate_api)
        raise Unauthorized("A valid bearer token is required" if header else "Authorization required")
    g.principal = found
    g.token_sha256 = hash_token(token.strip())  # links made now stop working if this token is revoked


def is_secret(value: str) -> bool:
    """Whether *value* is, or is part of, a secret a log line must not hold: an access token
    or its hash, the request's bearer token or cookies, a session cookie or a download link
    signed with this app's key (checked by verifying, so it is found wherever it was put)."""
    if not value or len(value) < 16:  # every secret here is longer
        return False
    sent = [request.headers.get("Authorization", "").partition(" ")[2].strip(), *request.cookies.values()]
    if any(value in secret for secret in sent if secret):
        return True
    store = get_tokens()
    if store is not None and (store.has_hash(hash_token(value)) or store.has_hash(value.lower())):
        return True
    if sid_of(current_app, value):
        return True
    return get_links().is_signed(value)


def is_secret_like(value: str) -> bool:
    """Whether a client's X-Request-ID (echoed into every log line) must not be used: a
    secret (:func:`is_secret`), or a value the request also carries as a query value."""
    return bool(value) and (is_secret(value) or any(len(value) >= 16 and value in v for v in request.args.values()))


def visible_record(record: dict[str, Any]) -> dict[str, Any]:
    """*record* if the current principal may see it.

    :raises Forbidden: for another user's run.
    """
    if not principal().may_see(record):
        raise Forbidden("This run belongs to another user", execution_id=record["execution_id"])
    return record


def load_visible(store: RunStore, execution_id: str) -> dict[str, Any]:
    """A record the current principal may see (a run in progress: its record so far, status
    ``running``): 404 if missing, 403 if another user's."""
    try:
        return visible_record(store.get(execution_id))
    except RunNotFound:
        # this host's journal folder (RUN_HISTORY_JOURNAL_DIR), whatever the store
        running = journal.load_running(get_layout().journal, execution_id)
        if running is None:
            get_index().recheck([execution_id])  # a listed run that is gone: the list stops showing it
            raise
        return visible_record(running)
