"""Access control: bearer tokens (stored hashed), who may see which run, and the secret key.

Off unless ``RUN_HISTORY_TOKENS`` names a tokens file: then every /api request needs
``Authorization: Bearer <token>`` (except a signed download link), and pages need a
sign-in. An admin sees every run; a researcher only runs whose ``user_id`` is theirs.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app, g, request

from execution_history import journal
from execution_history.errors import Forbidden, RunNotFound, Unauthorized
from execution_history.storage import RunStore

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


def hash_token(token: str) -> str:
    """What the tokens file keeps of a token (tokens are 256 random bits: SHA-256 is enough)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens file: ``{"tokens": [{"sha256", "user", "role", "created_at"}]}``, never a token.

    Re-read when it changes on disk, so ``runs token create`` takes effect without a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._entries: list[dict[str, str]] = []

    def _load(self) -> list[dict[str, str]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        with self._lock:
            if self._seen != (st.st_mtime_ns, st.st_size):
                data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
                self._entries = [e for e in data.get("tokens", []) if e.get("role") in ROLES]
                self._seen = (st.st_mtime_ns, st.st_size)
            return self._entries

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a token, or None. Compares against every entry in constant time."""
        digest = hash_token(token)
        found = None
        for entry in self._load():
            if hmac.compare_digest(entry["sha256"], digest):
                found = entry
        return Principal(found["user"], found["role"]) if found else None

    def has_hash(self, digest: str) -> bool:
        return any(hmac.compare_digest(entry["sha256"], digest) for entry in self._load())

    def create(self, user: str, role: str) -> str:
        """Add a token for *user* with *role*; returns the token (shown once, stored hashed)."""
        token = secrets.token_urlsafe(32)
        entry = {"sha256": hash_token(token), "user": user, "role": role,
                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self._rewrite(lambda entries: [*entries, entry])
        return token

    def revoke(self, user: str) -> int:
        """Remove every token of *user*; returns how many."""
        before = len(self._load())
        self._rewrite(lambda entries: [e for e in entries if e["user"] != user])
        return before - len(self._load())

    def users(self) -> list[dict[str, str]]:
        """User, role and creation time of every token (no hashes)."""
        return [{k: e[k] for k in ("user", "role", "created_at")} for e in self._load()]

    def _rewrite(self, change: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = change(list(self._load()))
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"tokens": entries}, handle, indent=1)
        os.replace(temp, self.path)


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
    return current_app.extensions["run_history"]["tokens"]


def principal() -> Principal:
    """Who the current request acts for."""
    return g.get("principal", OPEN)


#: Endpoints whose refusals belong in the audit trail, with their event.
_AUDITED = {"api.export_run": "export", "api.export_runs": "export", "api.link_run": "link_created",
            "api.link_runs": "link_created"}


def authenticate_api() -> None:
    """Before every /api request (unknown routes too) when access control is on: a valid
    bearer token or 401. A download link needs none: it carries its creator's scope."""
    store = tokens()
    if store is None or not request.path.startswith("/api/") or request.endpoint == "api.download_link":
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    found = store.authenticate(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if found is None:
        if request.endpoint in _AUDITED:  # a refused export or link request is audited too
            from . import audit_hooks  # here: audit_hooks imports this module

            audit_hooks.begin(_AUDITED[request.endpoint], format=(request.view_args or {}).get("fmt", "").lower(),
                              execution_id=(request.view_args or {}).get("execution_id"))
        raise Unauthorized("A valid bearer token is required" if header else "Authorization required")
    g.principal = found
    g.token_sha256 = hash_token(token.strip())  # links made now stop working if this token is revoked


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
        running = journal.load_running(current_app.extensions["run_history"]["layout"].journal, execution_id)
        if running is None:
            raise
        return visible_record(running)
