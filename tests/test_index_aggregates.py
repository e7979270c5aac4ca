"""Stats come from aggregates maintained with the rows: they must always equal a full count."""
from __future__ import annotations

import collections
import os

from execution_history import ExecutionTracker
from execution_history.index import RunIndex


def full_count(index: RunIndex, user: str | None = None) -> tuple[dict, dict, int]:
    conn = index._connection()
    scope, params = ("AND user_id = ?", [user]) if user is not None else ("", [])
    rows = conn.execute(f"SELECT config_name, status, size FROM runs WHERE source = 'file' {scope}", params).fetchall()
    return (dict(collections.Counter(r[0] for r in rows)), dict(collections.Counter(r[1] for r in rows)),
            sum(r[2] for r in rows))


def test_stats_follow_every_kind_of_change(store, recorded_runs):
    index = RunIndex(store)
    assert index.stats() == store.scan_stats()
    for n in range(6):
        with ExecutionTracker(f"cfg{n % 2}", store=store, user_id=f"u{n % 3}") as run:
            run.log_user_input_text("x" * n)
    store.path_for(recorded_runs[0]).unlink()                 # deleted by hand
    store.path_for(recorded_runs[1]).write_text("{")          # broken
    os.replace(store.path_for(recorded_runs[2]), store.root / "elsewhere.json")  # moved away
    index.sync(full=True)
    stats = index.stats()
    assert stats == store.scan_stats()
    by_config, by_status, size = full_count(index)
    assert stats["by_config"] == dict(sorted(by_config.items()))
    assert stats["by_status"] == dict(sorted(by_status.items()))
    for user in ("u0", "u1", "u2", "nobody"):
        scoped = index.stats(user_scope=user)
        by_config, by_status, size = full_count(index, user)
        assert scoped["by_config"] == dict(sorted(by_config.items())) and scoped["total_size_bytes"] == size
        assert scoped["total_records"] == sum(by_config.values())
    index.rebuild()
    assert index.stats() == stats
