"""gunicorn's access log without secrets: a logger class whose request atoms are redacted.

A client may put a token, a link signature or a session cookie anywhere: in a header, the
query string, even a path segment (``/api/runs/export/<token>``). The shipped log format
logs no header and no query string; this logger also cuts every path segment longer than
any name the service uses (execution ids are 31 characters; tokens, hashes, links and
session cookies are longer) and blanks the atoms that carry the query or headers, so a
changed ``access_log_format`` cannot leak them either.
"""
from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

#: Longest path segment logged as is; longer ones become ``[redacted]``.
MAX_SEGMENT = 32


def redact_path(path: str) -> str:
    """*path* with every segment longer than MAX_SEGMENT replaced by ``[redacted]``."""
    return "/".join(part if len(part) <= MAX_SEGMENT else "[redacted]" for part in path.split("/"))


class RedactingLogger(Logger):
    """gunicorn's logger, whose access-log atoms never hold a query string or a header."""

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """gunicorn's warnings, but a refused request's details (its request line or a
        header, where a secret may ride) are withheld."""
        text = str(msg)
        if text.startswith("Invalid request from ip="):
            msg, args = text.split(": ", 1)[0] + ": (details withheld; see the access log for the status)", ()
        super().warning(msg, *args, **kwargs)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """The access-log atoms with the path redacted and queries and headers left out."""
        atoms = super().atoms(resp, req, environ, request_time)
        path = redact_path(environ.get("PATH_INFO") or "")
        atoms.update(U=path, r=f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}",
                     q="-", f="-", a="-", u="-")
        for key in [k for k in atoms if k.startswith("{")]:  # {header}i, {header}o, {var}e
            atoms[key] = "-"
        return atoms
