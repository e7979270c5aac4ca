"""`bp` for the browser pages: run browser, run detail, stats, sign-in (templates/ beside it)."""
from __future__ import annotations

import secrets
from urllib.parse import unquote, urlsplit

from flask import Blueprint, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from execution_history.errors import Forbidden, InvalidParameter
from execution_history.filters import ORDER_BY
from execution_history.records import STATUSES
from execution_history.taxonomy import TAXONOMY

from . import lifecycle
from .auth import Principal, hash_token, load_visible, principal, same_secret, tokens
from .extensions import get_index, get_store
from .links import link_for_export
from .media import gallery_cards, media_view, split_view
from .params import LIST_PARAMS, load_query
from .presenters import (
    day_bars,
    download_links,
    item_view,
    query_string,
    timeline,
    utc_text,
    visible_controls,
    visible_name,
)

bp = Blueprint("pages", __name__)


bp.add_app_template_filter(utc_text, "utc")


@bp.app_template_filter("visible")
def visible(text: str | None) -> str:
    """Jinja filter: control characters made visible (escaping stays Jinja's)."""
    return visible_controls(text) if text else ""


@bp.app_template_filter("visible_name")
def visible_name_filter(text: str | None) -> str:
    """Jinja filter: a file path as one visible line (presenters.visible_name)."""
    return visible_name(text) if text else ""


@bp.app_context_processor
def helpers() -> dict:
    return {"query_string": query_string, "principal": principal(), "auth_on": tokens() is not None,
            "csrf_token": _csrf_token}


@bp.before_request
def require_sign_in() -> BaseResponse | None:
    """With access control on, pages need a sign-in (a session made from a token)."""
    store = tokens()
    if store is None or request.endpoint in ("pages.login", "pages.static"):
        return None
    digest = session.get("token_sha256")
    if not digest or not store.has_hash(digest):  # signed out, or the token was revoked since
        session.clear()
        return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
    g.principal = Principal(session["user"], session["role"])
    g.token_sha256 = digest
    return None


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not same_secret(sent, session.get("csrf", "")):
        raise Forbidden("The form expired or did not come from this site; please try again")


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never "//elsewhere", "https://elsewhere", "/\t/elsewhere" or "/\\elsewhere"."""
    target = target or ""
    for form in (target, unquote(target)):  # browsers may decode %09 and friends
        parts = urlsplit(form)
        if (any(not ch.isprintable() or ch.isspace() or ch == "\\" for ch in form) or parts.scheme
                or parts.netloc or not form.startswith("/") or form.startswith("//")):
            return url_for("pages.browse_runs")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    """Sign in with a token; it is kept (hashed) in a secure, HttpOnly session cookie."""
    store = tokens()
    if store is None:
        return redirect(url_for("pages.browse_runs"))
    error = None
    if request.method == "POST":
        _check_csrf()
        found = store.authenticate(request.form.get("token", "").strip())
        if found is not None:
            session.clear()
            session.renew()  # a new session id at sign-in (no fixation)
            session.update(user=found.user, role=found.role, token_sha256=hash_token(request.form["token"].strip()))
            return redirect(_safe_next(request.args.get("next")))
        error = "That token is not valid."
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> BaseResponse:
    _check_csrf()
    session.clear()
    return redirect(url_for("pages.login"))


def _download_base(api_base: str, page_base: str) -> str:
    # auth off: the buttons are plain links to the export routes; on: through a page that makes a link
    return api_base if tokens() is None else page_base


@bp.get("/")
def browse_runs() -> str:
    """The run browser: the list API's filters as a form, a sortable table, pages, downloads."""
    args, view = split_view(request.args)  # ?view=gallery: the page's own, not a list parameter
    query, _ = load_query(LIST_PARAMS, args)
    index = get_index()
    scope = principal().scope
    executions, total = index.query(query, scope)
    base = _download_base("/api/runs/export", "/download/runs")
    return render_template("index.html", query=query, executions=executions, total=total,
                           args=request.args, stats=index.stats(scope), statuses=STATUSES, item_types=TAXONOMY,
                           sortable=ORDER_BY, downloads=download_links(base, args), view=view,
                           gallery=gallery_cards(executions) if view == "gallery" else None,
                           modes=index.distinct_values("execution_mode", scope),
                           safety_levels=index.distinct_values("safety_level", scope))


@bp.get("/runs/<execution_id>")
def show_run(execution_id: str) -> str:
    """One run: metadata, its items as a timeline, downloads."""
    record = load_visible(get_store(), execution_id)
    sections = [(section, [{**item_view(item), "media": media_view(record["execution_id"], item)}
                           for item in section.items]) for section in timeline(record)]
    base = _download_base(f"/api/runs/{execution_id}/export", f"/download/run/{execution_id}")
    return render_template("run.html", record=record, sections=sections, downloads=download_links(base, bulk=False))


@bp.post("/runs/<execution_id>/delete")
def delete_run(execution_id: str) -> BaseResponse:
    """The run page's delete button (admins): a CSRF token and the ticked confirmation, then the list."""
    _check_csrf()
    if request.form.get("confirm") != "yes":
        raise InvalidParameter("Tick the box to confirm the deletion", parameter="confirm", allowed=["yes"])
    lifecycle.delete_as_admin(execution_id, media=request.form.get("media") == "yes")
    return redirect(url_for("pages.browse_runs"), code=303)


@bp.get("/stats")
def show_stats() -> str:
    """Counts by config and status, runs per day, storage size."""
    index = get_index()
    scope = principal().scope
    return render_template("stats.html", stats=index.stats(scope), bars=day_bars(index.runs_per_day(user_scope=scope)))


@bp.get("/download/runs/<fmt>")
def download_runs(fmt: str) -> BaseResponse:
    """A download button with access control on: a signed link for the signed-in user, then there."""
    token, _ = link_for_export("bulk", fmt)
    return redirect(url_for("api.download_link", link=token), code=303)


@bp.get("/download/run/<execution_id>/<fmt>")
def download_run(execution_id: str, fmt: str) -> BaseResponse:
    """One run's download button with access control on."""
    token, _ = link_for_export("run", fmt, execution_id)
    return redirect(url_for("api.download_link", link=token), code=303)
