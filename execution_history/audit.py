"""The audit trail: one JSON line per export, link creation, link use, delete and prune, appended atomically."""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The fields of every line, in this order (None where they do not apply).
FIELDS = ("time", "event", "user", "role", "request_id", "client", "route", "execution_id", "filters",
          "format", "rows", "bytes", "status", "complete", "sequence_number",
          "config", "media_deleted", "pseudonymized")  # deletes and prunes; pseudonymized exports


class AuditLog:
    """An append-only JSON-lines file shared by every worker and process.

    Each line is written with one ``write`` on a file opened with ``O_APPEND`` while
    holding an exclusive ``flock``, so lines from several processes never interleave.
    Writing never raises: a failure is logged and the export goes on.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> bool:
        """Append one line; *fields* are among FIELDS. Returns False if it could not be written."""
        entry = {name: fields.get(name) for name in FIELDS}
        entry["time"] = fields.get("time") or dt.datetime.now(dt.timezone.utc).isoformat()
        entry["event"] = event
        try:
            line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)  # releases the lock
            return True
        except Exception:  # noqa: BLE001 - the audit trail must never break an export
            log.exception("audit line for %s could not be written to %s", event, self.path)
            return False

    def iter_entries(self, user: str | None = None, since: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """Lines in order, optionally of one user and at or after *since* (UTC); torn lines skipped."""
        try:
            handle = open(self.path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    when = dt.datetime.fromisoformat(entry["time"])
                except (ValueError, KeyError, TypeError):
                    continue
                if user is not None and entry.get("user") != user:
                    continue
                if since is not None and when < since:
                    continue
                yield entry
