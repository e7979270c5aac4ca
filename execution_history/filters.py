"""RunQuery: what a list or bulk export selects (filters, order, page), and its SQL."""
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

#: Filters compared for equality with a column of the runs table.
_EQUALITY = ("config_name", "user_id", "session_id", "execution_mode", "safety_level", "status")
#: Filter field -> wire parameter name, where they differ.
WIRE_NAMES = {"config_name": "config"}
#: Sort key -> SQL expression (timestamps sort by their UTC instant, not their text).
_SORT_SQL = {"timestamp": "ts_key", "config_name": "config_name",
             "total_execution_time": "total_execution_time", "items_count": "items_count"}


def to_key(value: dt.datetime) -> int:
    """A timestamp as integer microseconds since the epoch (the index's sort key)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


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

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on the ``runs`` table (alias ``r``) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for name in _EQUALITY:
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"r.{name} = ?")
                params.append(value)
        low, high = self._time_range()
        if low is not None:
            clauses.append("r.ts_key >= ?")
            params.append(low)
        if high is not None:
            clauses.append("r.ts_key <= ?")
            params.append(high)
        if self.item_type is not None:
            clauses.append("r.id IN (SELECT run_id FROM run_item_types WHERE item_type = ?)")
            params.append(self.item_type)
        if self.model is not None:
            clauses.append("r.id IN (SELECT run_id FROM run_models WHERE model = ?)")
            params.append(self.model)
        if self.q is not None:
            clauses.append("r.id IN (SELECT rowid FROM run_text WHERE run_text MATCH ?)")
            params.append(fts_query(self.q))
        if self.ids is not None:
            clauses.append(f"r.execution_id IN ({', '.join('?' * len(self.ids))})")
            params.extend(self.ids)
        return (" AND ".join(clauses) or "1"), params

    def _time_range(self) -> tuple[int | None, int | None]:
        bounds_low, bounds_high = [], []
        if self.date is not None:
            bounds_low.append(_day_start(self.date))
            bounds_high.append(_day_end(self.date))
        if self.date_from is not None:
            bounds_low.append(to_key(self.date_from) if isinstance(self.date_from, dt.datetime)
                              else _day_start(self.date_from))
        if self.date_to is not None:  # inclusive: a bare date means the whole day
            bounds_high.append(to_key(self.date_to) if isinstance(self.date_to, dt.datetime)
                               else _day_end(self.date_to))
        return max(bounds_low, default=None), min(bounds_high, default=None)


def _day_end(day: dt.date) -> int:
    """The last microsecond of a UTC day (9999-12-31 included)."""
    return _day_start(day) + 86_400_000_000 - 1


def _day_start(day: dt.date) -> int:
    return to_key(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc))


@dataclass(frozen=True)
class RunQuery:
    """Filters plus order and page: everything a list request or a bulk export asks."""

    filters: RunFilters = RunFilters()
    order_by: str = "timestamp"
    order: str = "desc"
    limit: int | None = DEFAULT_LIMIT
    offset: int = 0

    def order_sql(self) -> str:
        """ORDER BY clause; ties broken by execution_id in the same direction."""
        direction = "DESC" if self.order == "desc" else "ASC"
        return f"{_SORT_SQL[self.order_by]} {direction}, execution_id {direction}"


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
    if not terms:
        raise InvalidParameter("Invalid value for q", parameter="q", value=q[:200],
                               allowed="at least one word (letters or digits)")
    return " AND ".join(terms)
