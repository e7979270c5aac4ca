"""RunQuery: what a list or bulk export selects (filters, order, page), validated.

The SQL these select in the index's tables is written in execution_history/index/queries.py.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, fields
from typing import Any

from .errors import InvalidParameter

ORDER_BY = ("timestamp", "config_name", "total_execution_time", "items_count")
ORDERS = ("asc", "desc")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

#: Joins item contents in the text index so that a phrase never matches across two items.
ITEM_SEPARATOR = "\n x0itembreak0x \n"
_SEPARATOR_WORD = "x0itembreak0x"

#: Filter field -> wire parameter name, where they differ.
WIRE_NAMES = {"config_name": "config"}


@dataclass(frozen=True)
class RunFilters:
    """Filters of the list API; None means "not given". They combine with AND."""

    config_name: str | None = None
    date: dt.date | None = None
    date_from: dt.datetime | dt.date | None = None
    date_to: dt.datetime | dt.date | None = None
    user_id: str | None = None
    session_id: str | None = None
    execution_mode: str | None = None
    safety_level: str | None = None
    status: str | None = None
    item_type: str | None = None
    model: str | None = None
    q: str | None = None
    ids: tuple[str, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The filters as the API echoes them: wire names, every filter, null when absent."""
        wire = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (dt.date, dt.datetime)):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            wire[WIRE_NAMES.get(field.name, field.name)] = value
        return wire


@dataclass(frozen=True)
class RunQuery:
    """Filters plus order and page: everything a list request or a bulk export asks."""

    filters: RunFilters = RunFilters()
    order_by: str = "timestamp"
    order: str = "desc"
    limit: int | None = DEFAULT_LIMIT
    offset: int = 0


def fold_text(text: str) -> str:
    """What the indexed text gets before FTS5's tokenizer (which folds case and accents):
    ``ß`` spelled ``ss``, the one common folding it lacks. Cheap on hundreds of MB."""
    return text.replace("ß", "ss").replace("ẞ", "ss")


def fold_query(text: str) -> str:
    """Full Unicode case folding of a query term (``Straße`` -> ``strasse``)."""
    return text.casefold()


_QUERY_TERM = re.compile(r'"([^"]*)"?|(\S+)')


def fts_query(q: str) -> str:
    """Turn the user's ``q`` into an FTS5 query: every word must occur, quoted phrases as phrases.

    Every term is quoted, so nothing the user types is FTS5 syntax.

    :raises InvalidParameter: if *q* holds no word to search for.
    """
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in q):
        raise InvalidParameter("Invalid value for q", parameter="q", value=q[:200],
                               allowed="words without control characters")
    terms = []
    for phrase, word in _QUERY_TERM.findall(q):
        text = fold_query(phrase or word).replace(_SEPARATOR_WORD, " ")
        if any(ch.isalnum() for ch in text):
            terms.append('"' + text.replace('"', '""') + '"')
    if not terms and _SEPARATOR_WORD in fold_query(q):
        # only the word the index separates items with: a search that matches nothing (not a 400)
        return f'"{_SEPARATOR_WORD}" NOT "{_SEPARATOR_WORD}"'
    if not terms:
        raise InvalidParameter("Invalid value for q", parameter="q", value=q[:200],
                               allowed="at least one word (letters or digits)")
    return " AND ".join(terms)
