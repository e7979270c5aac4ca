"""Benchmark stats, totals and text search right after the index changed, on the realistic corpus.

    python -m bench.stats_after_change [--runs 10000] [--rounds 20]

The corpus is ``../shared/corpus/`` (gen_runs.py + to_contract.py), generated on first use
into ``bench/out/`` (or copied from an existing converted set, ``--source``). Each round
publishes one run through the tracker (so every cache is invalid), then times, in the
same process and against the same SQLite file:

- ``stats``: RunIndex.stats() (maintained aggregates), beside the floor: the GROUP BY
  scans over every run that stats used before (what Datasette's facet counts do);
- ``q=<word>`` and ``q="<phrase>"``: RunIndex.query, beside the floor: the bare FTS5
  MATCH count plus the page.

Figures are medians over the rounds, in ms, measured in-process (no HTTP); then, through
gunicorn (shipped config, 2 workers) and curl, the same requests and the issue's deep page
and a plain list, each right after a run was published (the index's caches all invalid).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
import urllib.parse

from execution_history import ExecutionTracker, RunStore
from execution_history.filters import RunFilters, RunQuery
from execution_history.index import RunIndex

from . import corpus
from .common import Gunicorn, through_curl

#: Requests timed through gunicorn (the issue's table: curl, median of the rounds).
HTTP_URLS = {"stats": "/api/runs/stats", "q word": "/api/runs?q=the",
             "q phrase": "/api/runs?q=" + urllib.parse.quote('"the light"'),
             "deep page": "/api/runs?order_by=total_execution_time&config=dada&offset=9000",
             "list": "/api/runs?limit=20"}



def timed(work) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    corpus.add_arguments(parser, runs=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    folder = corpus.from_arguments(args)
    shutil.rmtree(folder / ".index", ignore_errors=True)
    store = RunStore(folder)
    index = RunIndex(store)
    build = timed(index.sync)
    conn = index._connection()
    word = "the"
    phrase = '"the light"'
    figures: dict[str, list[float]] = {k: [] for k in
                                       ("stats", "stats floor", "q word", "q word floor", "q phrase", "q phrase floor")}

    def floor_stats() -> None:
        conn.execute("SELECT config_name, COUNT(*) FROM runs WHERE source = 'file' GROUP BY 1").fetchall()
        conn.execute("SELECT status, COUNT(*) FROM runs WHERE source = 'file' GROUP BY 1").fetchall()
        conn.execute("SELECT SUM(size) FROM runs WHERE source = 'file'").fetchall()

    def floor_search(terms: str) -> None:
        conn.execute("SELECT COUNT(*) FROM run_text WHERE run_text MATCH ?", (terms,)).fetchall()
        conn.execute("SELECT rowid FROM run_text WHERE run_text MATCH ? LIMIT 20", (terms,)).fetchall()

    for n in range(args.rounds):
        with ExecutionTracker(f"bench{n % 3}", store=store) as run:
            run.log_user_input_text("the light on the meadow")
        figures["stats"].append(timed(index.stats))
        figures["stats floor"].append(timed(floor_stats))
        figures["q word"].append(timed(lambda: index.query(RunQuery(RunFilters(q=word)))))
        figures["q word floor"].append(timed(lambda: floor_search(word)))
        figures["q phrase"].append(timed(lambda: index.query(RunQuery(RunFilters(q=phrase)))))
        figures["q phrase floor"].append(timed(lambda: floor_search(phrase)))
    print(f"runs: {args.runs} (realistic corpus), rounds: {args.rounds}, in-process, "
          f"2 CPUs shared with other work")
    print(f"cold index build: {build / 1000:.1f} s")
    for name in ("stats", "q word", "q phrase"):
        print(f"{name:10} after a change: {statistics.median(figures[name]):7.2f} ms   "
              f"floor: {statistics.median(figures[name + ' floor']):7.2f} ms")
    through_gunicorn(store, args.rounds)


def through_gunicorn(store: RunStore, rounds: int) -> None:
    """Each of HTTP_URLS with curl right after a run was published, median of *rounds*."""
    server = Gunicorn(store.root)
    try:
        server.wait_built()
        print("through gunicorn (2 workers) and curl:")
        for name, url in HTTP_URLS.items():
            times = []
            for n in range(rounds):
                with ExecutionTracker(f"bench{n % 3}", store=store) as run:
                    run.log_user_input_text("the light on the meadow")
                _, seconds, _, status = through_curl(server, url)
                if status != 200:
                    raise SystemExit(f"{url}: HTTP {status}")
                times.append(seconds * 1000)
            print(f"{name:10} after a change: {statistics.median(times):7.2f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
