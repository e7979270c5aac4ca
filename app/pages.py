"""`bp` for the browser pages: run browser, run detail, stats (templates/ beside it)."""
from __future__ import annotations

from flask import Blueprint, render_template, request

from execution_history.filters import ORDER_BY
from execution_history.records import STATUSES
from execution_history.taxonomy import TAXONOMY

from . import get_index, get_store
from .params import LIST_PARAMS, load_query
from .presenters import day_bars, download_links, item_view, query_string, timeline, visible_controls

bp = Blueprint("pages", __name__)


@bp.app_template_filter("visible")
def visible(text: str | None) -> str:
    """Jinja filter: control characters made visible (escaping stays Jinja's)."""
    return visible_controls(text) if text else ""


@bp.app_context_processor
def helpers() -> dict:
    return {"query_string": query_string}


@bp.get("/")
def browse_runs() -> str:
    """The run browser: the list API's filters as a form, a sortable table, pages, downloads."""
    query, _ = load_query(LIST_PARAMS, request.args)
    index = get_index()
    executions, total = index.query(query)
    return render_template("index.html", query=query, executions=executions, total=total,
                           args=request.args, stats=index.stats(), statuses=STATUSES, item_types=TAXONOMY,
                           sortable=ORDER_BY, downloads=download_links("/api/runs/export", request.args))


@bp.get("/runs/<execution_id>")
def show_run(execution_id: str) -> str:
    """One run: metadata, its items as a timeline, downloads."""
    record = get_store().get(execution_id)
    sections = [(section, [item_view(item) for item in section.items]) for section in timeline(record)]
    return render_template("run.html", record=record, sections=sections,
                           downloads=download_links(f"/api/runs/{execution_id}/export"))


@bp.get("/stats")
def show_stats() -> str:
    """Counts by config and status, runs per day, storage size."""
    index = get_index()
    return render_template("stats.html", stats=index.stats(), bars=day_bars(index.runs_per_day()))
