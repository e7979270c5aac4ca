"""Pages for export jobs (/exports) and a readable API reference (/api-docs), on the pages blueprint."""
from __future__ import annotations

import time
from typing import Any

from flask import render_template

from .auth import principal
from .extensions import get_jobs
from .jobs_api import job_body
from .openapi import build_spec
from .pages import bp

METHODS = ("get", "post", "put", "patch", "delete")


def age(seconds: float) -> str:
    """A short, human age: "12 s", "5 min", "3 h", "2 d"."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def size_text(size: int | None) -> str:
    """Bytes as B, KB or MB (1024-based, one decimal)."""
    if size is None:
        return ""
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@bp.get("/exports")
def list_exports() -> str:
    """The user's export jobs (an admin's: all), newest first, with state, size, age, download or error."""
    who = principal()
    now = time.time()
    jobs = [{**job_body(state), "age": age(now - state["created_at"]), "size_text": size_text(state["size_bytes"])}
            for state in get_jobs().list(who.user, all_users=who.role != "researcher")]
    return render_template("exports.html", jobs=jobs)


def operations() -> list[dict[str, Any]]:
    """The spec's operations in path order, flattened for the reference page."""
    spec = build_spec()
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():  # the spec's own order
            if method not in METHODS:
                continue
            params = [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                       "description": p.get("description", ""), "type": _type(p.get("schema", {}))}
                      for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            responses = [{"status": status, "description": r.get("description", ""),
                          "types": sorted(r.get("content", {}))} for status, r in op.get("responses", {}).items()]
            found.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                          "id": op.get("operationId", ""), "params": params, "body": sorted(body),
                          "responses": responses, "open": op.get("security") == []})
    return found


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = schema.get("type", "")
    return f"{kind} ({schema['format']})" if schema.get("format") else kind


@bp.get("/api-docs")
def api_docs() -> str:
    """The OpenAPI description as a readable page: every route, its parameters and responses."""
    spec = build_spec()
    return render_template("api_docs.html", info=spec["info"], operations=operations())
