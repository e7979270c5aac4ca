"""Benchmark bulk exports: every format, through the test client and gunicorn (curl), vs the raw libraries.

    python -m bench.export [--sizes 10000 100000] [--dir bench/out]

Prints, per format: item rows/s, MB/s, time to first byte, and (gunicorn) the worker's
peak memory growth over idle; beside it, in the same run, the floor of the raw
library (stdlib csv writer, openpyxl write-only, lxml xmlfile) on the same rows.
"""
from __future__ import annotations

import csv
import io
import itertools
import subprocess
import time
from pathlib import Path

from lxml import etree
from openpyxl import Workbook

from app import create_app
from execution_history import RunStore
from execution_history.exporters import EXPORTERS
from execution_history.exporters.cells import ITEM_COLUMNS, iter_item_rows

from .common import Gunicorn, generate, run_sizes

URLS = {"csv": "/api/runs/export/csv?shape=items", "jsonl": "/api/runs/export/jsonl",
        "json": "/api/runs/export/json", "xml": "/api/runs/export/xml", "xlsx": "/api/runs/export/xlsx"}
#: Runs whose rows the raw-library floors write (held in memory).
FLOOR_RUNS = {"csv": 5000, "xml": 5000, "xlsx": 1000}


class Null(io.RawIOBase):
    """A sink that counts what it is given."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def writable(self) -> bool:
        return True


def floors(folder: Path) -> dict[str, float]:
    """Item rows/s of the raw writers on rows already in memory."""
    store = RunStore(folder)
    ids = store.list_ids()
    result = {}
    for fmt, count in FLOOR_RUNS.items():
        rows = [row for record in store.iter_records(ids[:count]) for row in iter_item_rows(record)]
        started = time.perf_counter()
        if fmt == "csv":
            writer = csv.writer(io.StringIO(), lineterminator="\r\n")
            writer.writerows(rows)
        elif fmt == "xml":
            with etree.xmlfile(Null(), encoding="utf-8") as xf, xf.element("items"):
                for row in rows:
                    item = etree.Element("item")
                    for name, value in zip(ITEM_COLUMNS, row):
                        etree.SubElement(item, name).text = "" if value is None else str(value)
                    xf.write(item)
        else:
            book = Workbook(write_only=True)
            sheet = book.create_sheet("Items")
            for row in rows:
                sheet.append(row)
            book.save(io.BytesIO())
        result[fmt] = len(rows) / (time.perf_counter() - started)
    return result


def through_client(client, url: str) -> tuple[float, float, int]:
    """(time to first byte, total seconds, bytes) through Flask's test client."""
    started = time.perf_counter()
    response = client.get(url, buffered=False)
    first = None
    size = 0
    for chunk in response.response:
        if first is None:
            first = time.perf_counter() - started
        size += len(chunk)
    response.close()
    return first or 0.0, time.perf_counter() - started, size


def through_curl(server: Gunicorn, url: str) -> tuple[float, float, int, int]:
    """(time to first byte, total, bytes, HTTP status) with curl."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} "
                          "%{size_download} %{http_code}", server.url + url], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])


def rss_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_size(count: int, root: Path) -> None:
    folder = root / f"runs_{count}"
    print(f"\n=== {count} runs ===")
    generate(folder, count)
    store = RunStore(folder)
    item_rows = sum(len(r["items"]) for r in itertools.islice(store.iter_records(store.list_ids()), 200))
    item_rows = item_rows * count // 200
    print(f"about {item_rows} item rows")
    floor = floors(folder)
    print("raw library floors (rows in memory): " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in floor.items()))

    app = create_app({"RUN_HISTORY_DIR": str(folder)})
    client = app.test_client()
    client.get("/api/runs?limit=1")  # index built outside the timings
    print(f"\n{'format':6s} {'via':8s} {'TTFB':>9s} {'total':>8s} {'MB':>8s} {'rows/s':>10s} {'MB/s':>7s}"
          f" {'vs raw':>7s} {'RSS +MB':>8s}")
    for fmt, url in URLS.items():
        if fmt == "xlsx" and item_rows > EXPORTERS["xlsx"].max_rows:
            status = client.get(url).status_code
            print(f"{fmt:6s} {'both':8s} refused with {status} EXPORT_TOO_LARGE ({item_rows} rows > Excel's limit)")
            continue
        first, total, size = through_client(client, url)
        ratio = f"{item_rows / total / floor[fmt]:6.0%}" if fmt in floor else "     -"
        print(f"{fmt:6s} {'client':8s} {first * 1000:7.1f}ms {total:7.1f}s {size / 2**20:8.1f} "
              f"{item_rows / total:10,.0f} {size / 2**20 / total:7.1f} {ratio:>7s} {'':>8s}")
        server = Gunicorn(folder, workers=1)
        try:
            server.get("/api/runs?limit=1")
            worker = int(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()[0])
            idle = rss_mb(worker, "VmRSS:")
            first, total, size, status = through_curl(server, url)
            growth = rss_mb(worker, "VmHWM:") - idle
        finally:
            server.stop()
        ratio = f"{item_rows / total / floor[fmt]:6.0%}" if fmt in floor else "     -"
        print(f"{fmt:6s} {'gunicorn':8s} {first * 1000:7.1f}ms {total:7.1f}s {size / 2**20:8.1f} "
              f"{item_rows / total:10,.0f} {size / 2**20 / total:7.1f} {ratio:>7s} {growth:8.1f}"
              + ("" if status == 200 else f"  HTTP {status}"))


if __name__ == "__main__":
    run_sizes(bench_size, __doc__)
