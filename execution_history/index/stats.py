"""Stats of the index: the body of /api/runs/stats (from maintained aggregates) and runs per day."""
from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from ..storage import summarize_stats
from .connection import _sqlite_errors
from .schema import FILE


class IndexStats:
    """Stats from the index (a part of RunIndex)."""

    @_sqlite_errors
    def stats(self, user_scope: str | None = None) -> dict[str, Any]:
        """The body of ``/api/runs/stats``, from the index."""
        self.sync()
        conn = self._connection()
        return self._cached(conn, ("stats", user_scope), lambda: self._stats(conn, user_scope))

    @_sqlite_errors
    def runs_per_day(self, days: int = 60, user_scope: str | None = None) -> list[tuple[str, int]]:
        """(UTC day, runs started) for the last *days* days up to the newest run, oldest first."""
        self.sync()
        conn = self._connection()
        scope, params = (f"AND source = '{FILE}' AND user_id = ?", [user_scope]) if user_scope is not None \
            else (f"AND source = '{FILE}'", [])
        newest = conn.execute(f"SELECT MAX(ts_key) FROM runs WHERE 1 {scope}", params).fetchone()[0]
        if newest is None:
            return []
        day_us = 86_400_000_000
        first_day = newest // day_us - days + 1
        rows = dict(conn.execute(
            f"SELECT ts_key / {day_us} AS day, COUNT(*) FROM runs WHERE ts_key >= ? {scope} GROUP BY day",
            [first_day * day_us, *params]).fetchall())
        epoch = dt.date(1970, 1, 1)
        return [((epoch + dt.timedelta(days=d)).isoformat(), rows.get(d, 0))
                for d in range(first_day, first_day + days)]

    #: Columns the pages offer as choices (a fixed list: the name goes into the SQL).
    def _stats(self, conn: sqlite3.Connection, user_scope: str | None) -> dict[str, Any]:
        # record files only (the contract's total_records): runs in progress are listed, not counted here
        scope, params = (f"WHERE source = '{FILE}'", [])
        if user_scope is not None:
            scope, params = f"{scope} AND user_id = ?", [user_scope]
        # counts and sizes from the maintained aggregates (run_counts), not a scan of runs
        counted = "WHERE runs > 0" + (" AND owner = ?" if user_scope is not None else "")
        by_config = dict(conn.execute(f"SELECT config_name, SUM(runs) FROM run_counts {counted} GROUP BY 1", params))
        by_status = dict(conn.execute(f"SELECT status, SUM(runs) FROM run_counts {counted} GROUP BY 1", params))
        size, first, last = conn.execute(
            f"SELECT COALESCE(SUM(size), 0), (SELECT timestamp FROM runs {scope} ORDER BY ts_key LIMIT 1),"
            f" (SELECT timestamp FROM runs {scope} ORDER BY ts_key DESC LIMIT 1) FROM run_counts {counted}",
            params * 3).fetchone()
        unreadable = size_unreadable = 0
        if user_scope is None:  # an unreadable file has no owner: only unscoped stats count it
            unreadable, size_unreadable = conn.execute(
                "SELECT COUNT(*) + (SELECT value FROM meta WHERE key = 'malformed_files'),"
                " COALESCE(SUM(size), 0) + (SELECT value FROM meta WHERE key = 'malformed_bytes')"
                " FROM unreadable").fetchone()
        return summarize_stats(
            storage_dir=str(self.store.root), total_records=sum(by_config.values()),
            total_size_bytes=size + size_unreadable, by_config=by_config, by_status=by_status,
            first_timestamp=first, last_timestamp=last, unreadable_records=unreadable)
