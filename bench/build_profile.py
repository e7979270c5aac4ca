"""Where a cold index build's time goes: parsing alone, the whole build, the build without FTS.

    python -m bench.build_profile [--runs 10000]

Realistic corpus of ``bench.stats_after_change``; in-process; each figure measured in this run.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from execution_history import RunStore
from execution_history.index import IndexedRun, RunIndex, iter_parsed

from .stats_after_change import corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--source", type=Path, default=Path("/tmp/corpus/runs20k"))
    args = parser.parse_args()
    folder = corpus(args.runs, args.source)
    store = RunStore(folder)
    ids = sorted(store.list_inodes())
    started = time.perf_counter()
    for _ in iter_parsed(store, ids):
        pass
    parse = time.perf_counter() - started
    shutil.rmtree(folder / ".index", ignore_errors=True)
    started = time.perf_counter()
    RunIndex(store).sync()
    build = time.perf_counter() - started
    shutil.rmtree(folder / ".index", ignore_errors=True)
    store_batch = RunIndex._store_batch

    def without_text(self: RunIndex, conn, parsed):  # here, not in extract(): workers parse
        return store_batch(self, conn, [(i, dataclasses.replace(r, text="") if isinstance(r, IndexedRun) else r)
                                        for i, r in parsed])

    RunIndex._store_batch = without_text  # no FTS rows
    try:
        started = time.perf_counter()
        RunIndex(store).sync()
        no_fts = time.perf_counter() - started
    finally:
        RunIndex._store_batch = store_batch
        shutil.rmtree(folder / ".index", ignore_errors=True)
    print(f"runs: {len(ids)} (realistic corpus), 2 CPUs shared with other work")
    print(f"parse only (worker processes): {parse:5.1f} s")
    print(f"whole cold build:              {build:5.1f} s")
    print(f"cold build without FTS:        {no_fts:5.1f} s   (FTS costs {build - no_fts:.1f} s)")


if __name__ == "__main__":
    main()
