"""The list response: body, total and RFC 8288 pagination links that keep the filters."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from execution_history.filters import RunQuery


def list_body(query: RunQuery, executions: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """The body of GET /api/runs."""
    return {
        "executions": executions,
        "total": total,
        "limit": query.limit,
        "offset": query.offset,
        "returned": len(executions),
        "filters": query.filters.to_wire(),
        "order_by": query.order_by,
        "order": query.order,
    }


def link_header(base_url: str, args: MultiDict[str, str], query: RunQuery, total: int) -> str | None:
    """``Link`` with ``rel="next"``/``rel="prev"`` pages, same filters; None on a lone page."""
    limit = query.limit or total
    kept = [(k, v) for k, v in args.items(multi=True) if v != "" and k not in ("offset", "limit")]
    links = []
    if query.offset + limit < total:
        links.append((query.offset + limit, "next"))
    if query.offset > 0:
        links.append((max(query.offset - limit, 0), "prev"))
    return ", ".join(
        f'<{base_url}?{urlencode([*kept, ("limit", limit), ("offset", offset)])}>; rel="{rel}"'
        for offset, rel in links) or None
