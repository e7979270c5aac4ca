"""Queries of the index: pages of summaries, counts, ids for exports, the pages' choices,
and the SQL that a RunQuery (execution_history/filters.py) selects in the index's tables.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from ..errors import InvalidRecord, RunNotFound, SelectionChanged, StorageError
from ..filters import RunFilters, RunQuery, fts_query
from ..storage import RunStore
from .connection import _sqlite_errors
from .schema import FILE, JOURNAL, RUN_ROW_COLUMNS, SUMMARY_COLUMNS, to_key

#: Ids fetched at once by iter_ids.
FETCH = 1000
#: A page of a text search matching more runs than this walks the sort's index and keeps the
#: matches (a few ms whatever the count), instead of fetching every match by id and sorting them
#: (about 1 us a match: 20 ms for a common word at 100k runs).
TEXT_SCAN_ABOVE = 5000
#: recent_text's rows not yet moved into run_text (a move writes run_text first: sync.py).
_NOT_MOVED = "rowid > (SELECT value FROM search.meta WHERE key = 'moved_upto')"
#: A text search's total with no other filter: its matches in the search index, less those of
#: runs rows deleted or replaced since (schema.py: text_orphans), one pass over the matches.
TEXT_TOTAL = " + ".join(
    f"(SELECT COUNT(*) - COUNT(o.rowid) FROM {schema}{table} t LEFT JOIN text_orphans o ON o.rowid = t.rowid"
    f" WHERE {table} MATCH ?{extra})" for schema, table, extra in (("search.", "run_text", ""),
                                                                   ("", "recent_text", f" AND t.{_NOT_MOVED}")))
#: The ids of the runs whose text matches (two parameters: the FTS5 query twice): run_text, and
#: recent_text, the runs indexed a few at a time lately (sync.py).
TEXT_MATCHES = ("SELECT rowid FROM search.run_text WHERE run_text MATCH ?"
                f" UNION ALL SELECT rowid FROM recent_text WHERE recent_text MATCH ? AND {_NOT_MOVED}")
#: Filters compared for equality with a column of the runs table.
_EQUALITY = ("config_name", "user_id", "session_id", "execution_mode", "safety_level", "status")
#: Sort key -> SQL expression (timestamps sort by their UTC instant, not their text).
_SORT_SQL = {"timestamp": "ts_key", "config_name": "config_name",
             "total_execution_time": "total_execution_time", "items_count": "items_count"}


def order_sql(query: RunQuery) -> str:
    """ORDER BY clause; ties broken by execution_id in the same direction."""
    direction = "DESC" if query.order == "desc" else "ASC"
    return f"{_SORT_SQL[query.order_by]} {direction}, execution_id {direction}"


def where_sql(filters: RunFilters, text_scan: bool = False) -> tuple[str, list[Any]]:
    """The SQL condition on the ``runs`` table (alias ``r``) and its parameters.

    :param text_scan: the text search's matches as a set the runs are checked against
        (``+r.id``: the planner walks an index in the query's order), not as ids to fetch.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for name in _EQUALITY:
        value = getattr(filters, name)
        if value is not None:
            clauses.append(f"r.{name} = ?")
            params.append(value)
    low, high = time_range(filters)
    if low is not None:
        clauses.append("r.ts_key >= ?")
        params.append(low)
    if high is not None:
        clauses.append("r.ts_key <= ?")
        params.append(high)
    if filters.item_type is not None:
        clauses.append("r.id IN (SELECT run_id FROM run_item_types WHERE item_type = ?)")
        params.append(filters.item_type)
    if filters.model is not None:
        clauses.append("r.id IN (SELECT run_id FROM run_models WHERE model = ?)")
        params.append(filters.model)
    if filters.q is not None:
        clauses.append(f"{'+' if text_scan else ''}r.id IN ({TEXT_MATCHES})")
        params.extend([fts_query(filters.q)] * 2)
    if filters.ids is not None:
        clauses.append(f"r.execution_id IN ({', '.join('?' * len(filters.ids))})")
        params.extend(filters.ids)
    return (" AND ".join(clauses) or "1"), params


def time_range(filters: RunFilters) -> tuple[int | None, int | None]:
    """The filters' date bounds as inclusive ts_key bounds (None: unbounded)."""
    bounds_low, bounds_high = [], []
    if filters.date is not None:
        bounds_low.append(_day_start(filters.date))
        bounds_high.append(_day_end(filters.date))
    if filters.date_from is not None:
        bounds_low.append(to_key(filters.date_from) if isinstance(filters.date_from, dt.datetime)
                          else _day_start(filters.date_from))
    if filters.date_to is not None:  # inclusive: a bare date means the whole day
        bounds_high.append(to_key(filters.date_to) if isinstance(filters.date_to, dt.datetime)
                           else _day_end(filters.date_to))
    return max(bounds_low, default=None), min(bounds_high, default=None)


def _day_end(day: dt.date) -> int:
    """The last microsecond of a UTC day (9999-12-31 included)."""
    return _day_start(day) + 86_400_000_000 - 1


def _day_start(day: dt.date) -> int:
    return to_key(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc))


class IndexQueries:
    """Reading the index (a part of RunIndex): every method brings it in step first."""

    stale_after: float
    store: RunStore
    _clock: Callable[[], float]

    @_sqlite_errors
    def query(self, query: RunQuery, user_scope: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of run summaries in the query's order, and how many runs match in all."""
        self.sync()
        conn = self._connection()
        where, params = self._where(query, user_scope)
        total = self._total(conn, query, user_scope, where, params)
        if query.filters.q is not None and (total if self._text_only(query, user_scope) else
                                            self._text_matches(conn, query.filters.q)) > TEXT_SCAN_ABOVE:
            where, params = self._where(query, user_scope, text_scan=True)
        # Page over the narrow index first, then fetch the few whole rows (cheap deep offsets).
        rows = conn.execute(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM runs WHERE id IN ("
            f"SELECT r.id FROM runs r WHERE {where} ORDER BY {order_sql(query)} LIMIT ? OFFSET ?)"
            f" ORDER BY {order_sql(query)}",
            [*params, query.limit if query.limit is not None else -1, query.offset]).fetchall()
        return [self._summary(row) for row in rows], total

    def _summary(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A list entry; a run in progress is ``stale`` when nothing was logged for ``stale_after``."""
        summary = dict(zip(SUMMARY_COLUMNS, row))
        activity = summary["last_activity_at"]
        summary["stale"] = activity is not None and (
            self._clock() - dt.datetime.fromisoformat(activity).timestamp() > self.stale_after)
        return summary

    @_sqlite_errors
    def count(self, query: RunQuery, user_scope: str | None = None) -> int:
        """How many runs the query's filters select (ignoring its page)."""
        self.sync()
        return self._total(self._connection(), query, user_scope, *self._where(query, user_scope))

    def _total(self, conn: sqlite3.Connection, query: RunQuery, user_scope: str | None, where: str,
               params: list[Any]) -> int:
        """How many runs match *where* (the query's condition): for a text search alone, from the
        search index (its matches less the orphans among them: a few ms for 20,000 matches, where
        fetching each matching run by id takes 20); for no filter but config, status and owner,
        from the maintained counts; else by counting the runs."""
        if replace(query.filters, config_name=None, status=None, user_id=None) == RunFilters():
            return self._cached(conn, ("counted", query.filters, user_scope),
                                lambda: self._counted(conn, query.filters, user_scope))
        if not self._text_only(query, user_scope):
            return self._count(conn, where, params)
        terms = fts_query(query.filters.q)
        return self._cached(conn, ("text total", terms), lambda: conn.execute(
            f"SELECT {TEXT_TOTAL}", (terms, terms)).fetchone()[0])

    @staticmethod
    def _counted(conn: sqlite3.Connection, filters: RunFilters, user_scope: str | None) -> int:
        """Runs of a config, status and owner (each optional): the record files from ``run_counts``
        (kept by triggers with the rows: a few hundred rows summed, where counting the runs after
        every change reads a whole index), and the runs in progress counted (a partial index).
        Both in one statement: one snapshot."""
        counts, runs, params = [], [], []
        for column, owner_column, value in (("config_name", "config_name", filters.config_name),
                                            ("status", "status", filters.status),
                                            ("user_id", "owner", filters.user_id),
                                            ("user_id", "owner", user_scope)):
            if value is not None:
                counts.append(f"{owner_column} = ?")
                runs.append(f"{column} = ?")
                params.append(value)
        counted = " AND ".join(counts) or "1"
        running = " AND ".join([f"source = '{JOURNAL}'", *runs])
        return conn.execute(f"SELECT (SELECT COALESCE(SUM(runs), 0) FROM run_counts WHERE {counted})"
                            f" + (SELECT COUNT(*) FROM runs INDEXED BY runs_running WHERE {running})",
                            params * 2).fetchone()[0]

    @staticmethod
    def _text_only(query: RunQuery, user_scope: str | None) -> bool:
        """A text search with no other filter, for everyone's runs."""
        return query.filters.q is not None and user_scope is None and replace(query.filters, q=None) == RunFilters()

    def _text_matches(self, conn: sqlite3.Connection, q: str) -> int:
        """How many indexed texts match *q* (runs gone since included): the search index alone."""
        terms = fts_query(q)
        return self._cached(conn, ("text matches", terms), lambda: conn.execute(
            f"SELECT COUNT(*) FROM ({TEXT_MATCHES})", (terms, terms)).fetchone()[0])

    def _count(self, conn: sqlite3.Connection, where: str, params: list[Any]) -> int:
        return self._cached(conn, ("count", where, *params), lambda: conn.execute(
            f"SELECT COUNT(*) FROM runs r WHERE {where}", params).fetchone()[0])

    @_sqlite_errors
    def count_rows(self, query: RunQuery, user_scope: str | None = None) -> tuple[int, int]:
        """Finished runs the query selects (its page applied) and their item rows (a run without
        items: one). Exports hold finished runs only; runs in progress have no record yet."""
        self.sync()
        where, params = self._where(query, user_scope, finished_only=True)
        if query.limit is None and query.offset == 0:  # every match: no need to order them
            sql, args = f"SELECT items_count FROM runs r WHERE {where}", params
        else:
            sql = f"SELECT items_count FROM runs r WHERE {where} ORDER BY {order_sql(query)} LIMIT ? OFFSET ?"
            args = [*params, query.limit if query.limit is not None else -1, query.offset]
        return tuple(self._connection().execute(
            f"SELECT COUNT(*), COALESCE(SUM(MAX(items_count, 1)), 0) FROM ({sql})", args).fetchone())

    def iter_ids(self, query: RunQuery, user_scope: str | None = None) -> Iterator[str]:
        """Every selected finished run's id in the query's order (its page applied).

        One consistent snapshot, read at once: a long export must not hold a read lock (it
        would keep every writer out). The ids are kept packed, ~30 bytes a run.
        """
        self.sync()
        where, params = self._where(query, user_scope, finished_only=True)
        cursor = self._connection().execute(
            f"SELECT r.execution_id FROM runs r WHERE {where} ORDER BY {order_sql(query)} LIMIT ? OFFSET ?",
            [*params, query.limit if query.limit is not None else -1, query.offset])
        packed = bytearray()  # ids are ASCII: bytes take a fraction of a list of str's memory
        while rows := cursor.fetchmany(FETCH):
            packed += ",".join(row[0] for row in rows).encode("ascii") + b","
        cursor.close()  # the statement's read lock goes now, before the first record is read
        start = 0
        while start < len(packed):
            end = packed.find(b",", start)
            yield packed[start:end].decode("ascii")
            start = end + 1

    def iter_run_rows(self, query: RunQuery, user_scope: str | None = None) -> Iterator[dict[str, Any]]:
        """Each selected finished run's export run fields (RUN_ROW_COLUMNS), in the query's order,
        from the index alone: a bulk CSV of run rows parses no record file.

        The ids are taken at once, like :meth:`iter_ids`; their rows are then read a batch at a
        time, each batch its own short read (no lock held while the client downloads). A run
        gone from the index since it was listed raises, as in :meth:`iter_listed_records`.

        :raises SelectionChanged: when a listed run is no longer indexed.
        """
        ids = self.iter_ids(query, user_scope)
        sql = (f"SELECT j.value, {', '.join('r.' + name for name in RUN_ROW_COLUMNS)} FROM json_each(?) j"
               f" LEFT JOIN runs r ON r.execution_id = j.value AND r.source = '{FILE}' ORDER BY j.key")
        while batch := list(itertools.islice(ids, FETCH)):
            rows = self._connection().execute(sql, (json.dumps(batch),)).fetchall()
            for execution_id, *values in rows:
                if values[0] is None:  # execution_id is NOT NULL: no row
                    raise SelectionChanged("A run changed while the export was streaming; please retry",
                                           execution_id=execution_id)
                yield dict(zip(RUN_ROW_COLUMNS, values))

    def iter_listed_records(self, store: RunStore, execution_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records for ids the index listed, in order, for an export whose count was already given.

        A run that vanished or turned unreadable since is looked at again at once (so lists
        stop showing it) and raises: skipping it would send fewer runs than counted.

        :raises SelectionChanged: when a listed run can no longer be read.
        """
        for execution_id in execution_ids:
            try:
                yield store.load(execution_id)
            except (RunNotFound, InvalidRecord, StorageError) as err:
                self.recheck([execution_id])
                raise SelectionChanged("A run changed while the export was streaming; please retry",
                                       execution_id=execution_id) from err

    def _where(self, query: RunQuery, user_scope: str | None, finished_only: bool = False,
               text_scan: bool = False) -> tuple[str, list[Any]]:
        """The query's condition, scoped; text search raises IndexBuilding while the text is indexed."""
        if query.filters.q is not None:
            self._check_text_ready(self._connection())
        where, params = where_sql(query.filters, text_scan)
        if user_scope is not None:
            where, params = f"({where}) AND r.user_id = ?", [*params, user_scope]
        if finished_only:
            where = f"({where}) AND r.source = '{FILE}'"
        return where, params

    DISTINCT_COLUMNS = ("execution_mode", "safety_level")

    @_sqlite_errors
    def distinct_values(self, column: str, user_scope: str | None = None) -> list[str]:
        """The values of *column* present in the finished runs (a researcher's own), sorted; for
        the pages' choices (Mode, Safety level)."""
        if column not in self.DISTINCT_COLUMNS:
            raise ValueError(f"not a choice column: {column}")
        self.sync()
        conn = self._connection()
        scope, params = (f"source = '{FILE}' AND user_id = ?", [user_scope]) if user_scope is not None \
            else (f"source = '{FILE}'", [])
        return self._cached(conn, ("distinct", column, user_scope), lambda: [value for (value,) in conn.execute(
            f"SELECT DISTINCT {column} FROM runs WHERE {scope} AND {column} IS NOT NULL ORDER BY 1", params)])
