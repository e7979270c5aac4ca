"""`bp` for GET /api/health: readiness for a load balancer (no token needed, nothing private)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from execution_history.errors import IndexUnavailable, StorageError

from .extensions import get_index, get_store

bp = Blueprint("health", __name__, url_prefix="/api")
#: Seconds a load balancer should wait before asking again when the store is unreachable.
RETRY_AFTER = "5"


@bp.get("/health")
def get_health() -> Response:
    """200 ``{"store": "ok", "index": "ready" | "building", "runs_indexed": N}`` (during a cold
    build also ``"build": {"phase", "indexed", "total"}``); 503 when the store cannot be
    reached, or the index must be written (made, repaired) and its folder cannot be (``index``
    ``unavailable``). Never builds the index itself: it must stay cheap."""
    try:
        get_store().check()
    except StorageError:
        # no reason or path in the body: the route is public
        response = jsonify({"store": "unavailable", "index": get_index().state()["index"],
                            "error": "Run store unavailable", "code": "STORE_UNAVAILABLE"})
        response.status_code = 503
        response.headers["Retry-After"] = RETRY_AFTER
        return response
    body = {"store": "ok", **get_index().state()}
    if body["index"] != "unavailable":
        return jsonify(body)
    # the index must be written (damaged, behind) in a folder that cannot be: no reason either
    response = jsonify({**body, "error": "Run index unavailable", "code": IndexUnavailable.code})
    response.status_code = IndexUnavailable.status_code
    response.headers.update(IndexUnavailable.headers)
    return response
