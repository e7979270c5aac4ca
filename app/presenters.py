"""What the pages show, computed outside the views: timeline sections, chart geometry, links."""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from execution_history.taxonomy import STAGE_NAMES

#: Download buttons: (label, format, extra query parameters).
#: The CSV buttons say what they hold: one row per run, or one per item (a bulk file of
#: item rows is named ``runs_<time>_items.csv``); "for Excel" adds a BOM.
DOWNLOADS = [("CSV: runs", "csv", {"shape": "runs"}), ("CSV: items", "csv", {"shape": "items"}),
             ("CSV for Excel: runs", "csv", {"shape": "runs", "bom": "true"}),
             ("CSV for Excel: items", "csv", {"shape": "items", "bom": "true"}), ("XLSX", "xlsx", {}),
             ("JSON", "json", {}), ("JSONL", "jsonl", {}), ("XML", "xml", {}),
             ("ZIP (with media)", "zip", {})]
#: Bulk formats whose button starts an export job (progress, then the download) when JavaScript runs.
JOB_FORMATS = ("xlsx", "zip")
#: Text longer than this is folded on the run page.
FOLD_AT = 600
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def visible_controls(text: str) -> str:
    """Control characters as their visible Unicode pictures (U+0000 -> ␀), so they show."""
    return _CONTROLS.sub(lambda m: "\u2421" if m.group() == "\x7f" else chr(0x2400 + ord(m.group())), text)


#: What a one-line name (a file path) must not hide: every C0 control (tab and line breaks too),
#: C1 controls, bidi overrides and isolates, zero-width and other invisible format characters.
_NAME_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible_name(text: str) -> str:
    """A file path as one visible line: C0 controls and DEL as their pictures (␉, ␊, ␡), the other
    invisible characters (C1, bidi overrides such as U+202E, zero-width ones) as ``[U+XXXX]``,
    so a name cannot hide or reorder what it says."""
    def shown(match: re.Match[str]) -> str:
        ch = match.group()
        if ch < "\x20":
            return chr(0x2400 + ord(ch))
        return "\u2421" if ch == "\x7f" else f"[U+{ord(ch):04X}]"

    return _NAME_HIDDEN.sub(shown, text)


def utc_text(value: str | None, time_only: bool = False) -> str:
    """An ISO 8601 timestamp as the pages show it: UTC, ``YYYY-MM-DD HH:MM:SS`` (or only the
    time of day), no fraction; one without an offset is UTC already. Text that does not
    parse is shown cut the same way."""
    if not value:
        return ""
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc)
        text = parsed.strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError):  # out of range once moved to UTC, or not a timestamp
        text = value[:19].replace("T", " ")
    return text[11:] if time_only else text


def query_string(args: MultiDict[str, str], **changes: Any) -> str:
    """The page's query string with *changes* applied (None removes), empty values dropped."""
    kept = {k: v for k, v in args.items() if v != "" and k not in changes}
    kept.update({k: v for k, v in changes.items() if v is not None})
    return urlencode(kept)


def download_links(base: str, args: MultiDict[str, str] | None = None, bulk: bool = True) -> list[dict[str, str]]:
    """Links for the download buttons; a bulk *base* keeps the filters (never the page).

    One run's page offers its item rows only: a file of one run is named after it, so two
    CSV shapes would be two contents under one name.
    """
    kept = {k: v for k, v in (args or {}).items() if v != "" and k not in ("limit", "offset")}
    links = []
    for label, fmt, extra in DOWNLOADS:
        if not bulk and extra.get("shape") == "runs":
            continue
        query = urlencode({**kept, **extra})
        links.append({"label": label, "format": fmt, "url": f"{base}/{fmt}" + (f"?{query}" if query else ""),
                      "job": fmt if args is not None and fmt in JOB_FORMATS else None})
    return links


@dataclass
class Section:
    """A stretch of the timeline: one stage, or one iteration of the output loop."""

    title: str
    stage: int
    items: list[dict[str, Any]] = field(default_factory=list)


def timeline(record: dict[str, Any]) -> list[Section]:
    """The items in order, grouped into sections: by stage, and by loop for stages 3-4."""
    sections: list[Section] = []
    key = None
    for item in record["items"]:
        stage, loop = item["stage"], item["loop_iteration"]
        in_loop = stage in (3, 4) and loop is not None
        item_key = ("loop", loop) if in_loop else ("stage", stage)
        if item_key != key:
            title = f"Output loop {loop}" if in_loop else f"Stage {stage}: {STAGE_NAMES.get(stage, 'Other')}"
            sections.append(Section(title, stage))
            key = item_key
        sections[-1].items.append(item)
    return sections


def item_view(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the run page shows it: label, folded text, pretty metadata."""
    content = item["content"]
    label = item["item_type"].replace("_", " ")
    return {
        **item,
        "label": label,
        "text": visible_controls(content) if content is not None else None,
        "folded": content is not None and len(content) > FOLD_AT,
        "preview": visible_controls(content[:300]) if content else None,
        "metadata_text": json.dumps(item["metadata"], ensure_ascii=False, indent=2) if item["metadata"] else None,
    }


@dataclass
class Bar:
    """One day of the runs-per-day chart."""

    day: str
    count: int
    x: float
    y: float
    height: float


def day_bars(days: list[tuple[str, int]], width: float = 720, height: float = 160) -> list[Bar]:
    """Bars of an inline SVG chart (server-side geometry; the template draws them)."""
    if not days:
        return []
    top = max(count for _, count in days) or 1
    step = width / len(days)
    return [Bar(day, count, x=round(i * step, 2), y=round(height - count / top * height, 2),
                height=round(count / top * height, 2)) for i, (day, count) in enumerate(days)]
