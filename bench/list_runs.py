"""Benchmark the runs API: cold index build, filtered/deep/search pages, stats, new-run visibility.

    python -m bench.list_runs [--sizes 10000 100000] [--dir bench/out]

For each size it takes the realistic corpus of bench/corpus.py (made once; reused on later runs), then times the naive
way (read and parse every file, filter in Python) and the API, through Flask's test
client and through a real gunicorn (shipped config) on loopback, and prints the figures.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.index import INDEX_DIR
from execution_history.records import parse_record

from . import corpus
from .common import Gunicorn, ms, p50, run_sizes, timed

REPEAT = 30


def naive(folder: Path, config: str) -> int:
    """Read and parse every file, filter and sort in Python, take the first page and the total."""
    matches = []
    for path in folder.glob("exec_*.json"):
        record = parse_record(path.read_bytes())
        if record["config_name"] == config:
            matches.append((record["timestamp"], record["execution_id"]))
    matches.sort(reverse=True)
    return len(matches)


def drop_index(folder: Path) -> None:
    shutil.rmtree(folder / INDEX_DIR, ignore_errors=True)


def queries(count: int) -> dict[str, str]:
    deep = count * 9 // 10
    return {
        "filtered page + total": "/api/runs?config=dada&status=completed&limit=20",
        f"page at offset {deep}": f"/api/runs?limit=20&offset={deep}",
        f"filtered, offset {deep // 10}": f"/api/runs?config=bauhaus&order_by=total_execution_time&offset={deep // 10}",
        "q text search (2 words)": "/api/runs?q=the+light&limit=20",
        'q phrase': "/api/runs?q=%22the+light%22&limit=20",
        "item_type + model filter": "/api/runs?item_type=output_image&model=flux1_dev&limit=20",
        "stats": "/api/runs/stats",
    }


def bench_size(count: int, root: Path) -> None:
    print(f"\n=== {count} runs ===")
    started = time.perf_counter()
    folder = corpus.realistic(count, out=root)
    size = sum(p.stat().st_size for p in folder.glob("exec_*.json"))
    print(f"data: {size / 2**30:.2f} GiB in {count} files (ready in {time.perf_counter() - started:.1f} s)")

    naive_time = timed(lambda: naive(folder, "dada"))[0]
    print(f"naive scan (read+parse every file, filter, sort): {naive_time:.2f} s")

    drop_index(folder)
    app = create_app({"RUN_HISTORY_DIR": str(folder)})
    client = app.test_client()
    cold = timed(lambda: client.get("/api/runs?limit=20"))[0]
    print(f"\n-- Flask test client --\ncold index build (first request): {cold:.2f} s")
    for name, url in queries(count).items():
        assert client.get(url).status_code == 200, url
        print(f"{name:32s} p50 {ms(p50(timed(lambda: client.get(url), REPEAT)))}")

    drop_index(folder)
    server = Gunicorn(folder)
    try:
        cold = timed(lambda: server.get("/api/runs?limit=20"))[0]
        print(f"\n-- gunicorn over HTTP (2 gthread workers) --\ncold index build (first request): {cold:.2f} s")
        figures = {}
        for name, url in queries(count).items():
            server.get(url)
            figures[name] = p50(timed(lambda: server.get(url), REPEAT))
            print(f"{name:32s} p50 {ms(figures[name])}")
        normal = figures["filtered page + total"]
        print(f"naive scan / filtered page: {naive_time / normal:,.0f}x")

        visible = []
        for _ in range(10):
            time.sleep(2.1)  # past the racy window of the previous change, as in real life
            server.get("/api/runs?limit=1")  # the previous change is indexed: a quiet folder
            with ExecutionTracker("dada", store=RunStore(folder)) as run:
                run.log_user_input_text("fresh run")
            start = time.perf_counter()
            body = json.loads(server.get("/api/runs?config=dada&status=completed&limit=20"))
            visible.append(time.perf_counter() - start)
            assert body["executions"][0]["execution_id"] == run.execution_id
            os.unlink(folder / f"{run.execution_id}.json")
        print(f"new run visible on the next request: p50 {ms(p50(visible))} "
              f"({p50(visible) / normal:.1f}x a normal request)")
        print(f"worker peak RSS: {', '.join(f'{mb:.0f} MB' for mb in server.worker_rss_mb())}")
    finally:
        server.stop()


if __name__ == "__main__":
    run_sizes(bench_size, __doc__)
