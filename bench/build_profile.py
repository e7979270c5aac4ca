"""Where a cold index build's time goes: parsing alone, the summaries phase (lists answer from
its end), the text phase, and the summaries phase the old way (18 secondary indexes
updated per inserted row instead of made once at the end).

    python -m bench.build_profile [--runs 20000]

Realistic corpus of ``bench.stats_after_change``; in-process (no server); each figure
measured in this run, on the same files.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from execution_history import RunStore
from execution_history.index import RunIndex, iter_parsed
from execution_history.index import sync as index_sync

from . import corpus


def build(store: RunStore, folder: Path) -> tuple[float, float]:
    """(seconds until the summaries are in, seconds of the text phase) of one cold build."""
    shutil.rmtree(folder / ".index", ignore_errors=True)
    index_text = RunIndex._index_text
    marks: list[float] = []

    def timed_text(self, fd=None):
        marks.append(time.perf_counter())
        return index_text(self, fd)

    RunIndex._index_text = timed_text
    try:
        started = time.perf_counter()
        RunIndex(store).sync()
        ended = time.perf_counter()
    finally:
        RunIndex._index_text = index_text
        shutil.rmtree(folder / ".index", ignore_errors=True)
    return marks[0] - started, ended - marks[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    corpus.add_arguments(parser, runs=20_000)
    args = parser.parse_args()
    folder = corpus.from_arguments(args)
    store = RunStore(folder)
    ids = sorted(store.list_inodes())
    started = time.perf_counter()
    for _ in iter_parsed(store, ids):
        pass
    parse = time.perf_counter() - started
    summaries, text = build(store, folder)
    kept = index_sync.SECONDARY_INDEXES
    index_sync.SECONDARY_INDEXES = ()  # the old way: the indexes stay, updated row by row
    try:
        old_summaries, _ = build(store, folder)
    finally:
        index_sync.SECONDARY_INDEXES = kept
    print(f"runs: {len(ids)} (realistic corpus), 2 CPUs shared with other work")
    print(f"parse only (worker processes):            {parse:5.1f} s")
    print(f"summaries phase (lists answer after it):  {summaries:5.1f} s")
    print(f"text phase (text search after it):        {text:5.1f} s")
    print(f"whole cold build:                         {summaries + text:5.1f} s")
    print(f"summaries, indexes kept during rows:     {old_summaries:5.1f} s   (the old way)")


if __name__ == "__main__":
    main()
