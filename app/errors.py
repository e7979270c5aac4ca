"""The one place errors become responses: JSON for /api (and everything not a page), HTML for pages."""
from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from execution_history.errors import ExecutionHistoryError, IndexBuilding

log = logging.getLogger(__name__)

#: API codes for werkzeug's own errors (routing 404/405, oversized requests, ...).
_HTTP_CODES = {
    400: "INVALID_PARAMETER",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    410: "LINK_EXPIRED",
    413: "REQUEST_TOO_LARGE",
    414: "REQUEST_TOO_LARGE",
    431: "REQUEST_TOO_LARGE",
}


_TITLES = {400: "That request is not right", 401: "Please sign in", 403: "Not yours to see",
           404: "Not found", 405: "Not allowed", 410: "Link expired", 500: "Something went wrong",
           501: "Not available yet", 503: "Not available right now"}


def _is_page_request() -> bool:
    """People's pages get an HTML error; /api, static files and unknown paths stay JSON."""
    endpoint = request.endpoint or ""
    return endpoint.startswith("pages.") or (request.url_rule is None and not request.path.startswith("/api/")
                                             and request.accept_mimetypes.accept_html)


def error_response(status: int, body: dict) -> Response:
    """An error response carrying the request id: JSON, or a page for a page request."""
    if _is_page_request() and body.get("code") == "INDEX_BUILDING":  # "indexing N of M", reloads itself
        page = render_template("building.html", indexed=body["indexed"], total=body["total"], phase=body["phase"],
                               retry_after=IndexBuilding.retry_after, request_id=g.get("request_id"))
        return Response(page, status=status, content_type="text/html; charset=utf-8")
    if _is_page_request():
        hint = body.get("allowed")
        page = render_template(
            "error.html", title=_TITLES.get(status, "Error"), request_id=g.get("request_id"),
            message=body["error"] + (f" ({body['parameter']})" if "parameter" in body else ""),
            hint=f"Allowed: {', '.join(hint) if isinstance(hint, list) else hint}" if hint else None)
        return Response(page, status=status, content_type="text/html; charset=utf-8")
    response = jsonify({**body, "request_id": g.get("request_id")})
    response.status_code = status
    return response


def handle_error(err: ExecutionHistoryError) -> Response:
    """Our own exceptions: their status, code and context."""
    if err.status_code == 500:
        log.error("request %s failed: %s", g.get("request_id"), err.message, exc_info=err)
    response = error_response(err.status_code, err.to_dict())
    response.headers.update(err.headers)
    return response


def handle_http_exception(err: HTTPException) -> Response:
    """werkzeug's errors (unknown route, wrong method, ...) in the same JSON shape."""
    status = err.code or 500
    body = {"error": err.name, "code": _HTTP_CODES.get(status, "HTTP_ERROR")}
    if status == 405:
        body["allowed_methods"] = sorted(err.valid_methods or [])
    response = error_response(status, body)
    if status == 405 and err.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(err.valid_methods))
    return response


def handle_unexpected(err: Exception) -> Response:
    """Anything else: logged with the request id, answered 500 without trace or path."""
    # the route pattern, not the path: a client may have put a token in a path segment
    log.exception("request %s %s %s failed", g.get("request_id"), request.method,
                  request.url_rule.rule if request.url_rule else "(no route)")
    return error_response(500, {"error": "Internal server error", "code": "INTERNAL_ERROR"})


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on the app (not a blueprint) so routing errors are covered too."""
    app.register_error_handler(ExecutionHistoryError, handle_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
