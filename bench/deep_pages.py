"""Benchmark every order_by under each common filter (config, status, user) at the first and the last page.

    python -m bench.deep_pages [--runs 10000]

Uses the realistic corpus of ``bench.stats_after_change`` (bench/out/corpus<N>), builds the
index cold (timed), then times RunIndex.query in-process (median of 15, ms) at offset 0
(the floor: a first page) and at the deepest offset, for the most common config and user.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time

from execution_history import RunStore
from execution_history.filters import ORDER_BY, RunFilters, RunQuery
from execution_history.index import RunIndex

from . import corpus


def median_ms(index: RunIndex, query: RunQuery) -> float:
    times = []
    for _ in range(15):
        started = time.perf_counter()
        index.query(query)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    corpus.add_arguments(parser, runs=10_000)
    args = parser.parse_args()
    folder = corpus.from_arguments(args)
    shutil.rmtree(folder / ".index", ignore_errors=True)
    index = RunIndex(RunStore(folder))
    started = time.perf_counter()
    index.sync()
    print(f"runs: {args.runs} (realistic corpus), cold index build {time.perf_counter() - started:.1f} s, "
          "in-process, 2 CPUs shared with other work")
    conn = index._connection()
    config = conn.execute("SELECT config_name FROM runs GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    user = conn.execute("SELECT user_id FROM runs GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    worst = 0.0
    for filters in (RunFilters(config_name=config), RunFilters(status="completed"), RunFilters(user_id=user)):
        total = index.query(RunQuery(filters, limit=1))[1]
        for order_by in ORDER_BY:
            first = median_ms(index, RunQuery(filters, order_by=order_by))
            deep = median_ms(index, RunQuery(filters, order_by=order_by, offset=max(total - 20, 0)))
            worst = max(worst, deep)
            print(f"{[v for v in filters.to_wire().values() if v][0]:>12} "
                  f"{order_by:22} offset {max(total - 20, 0):6}: {deep:6.2f} ms   floor (offset 0): {first:6.2f} ms")
    print(f"worst deep page: {worst:.2f} ms")


if __name__ == "__main__":
    main()
