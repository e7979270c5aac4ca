"""Benchmark bulk exports on the realistic corpus through gunicorn (curl), beside the bare libraries.

    python -m bench.export [--runs 20000] [--source DIR] [--formats runs csv xml xlsx jsonl json]

The corpus is bench/corpus.py's (../shared/corpus, made once into bench/out/). Prints, per
format: time to first byte, total, MB, item rows/s, the ratio to the floor and the worker's
peak RSS (one fresh single-worker gunicorn per format, so the peak is that export's). It
starts with a cold index build (time and the worker's peak RSS during it).

The floor of a format is the bare library writing the same rows from the same files, in
the same run: each file read and parsed with orjson (no checks), the rows built with
plain ``dict.get``, then the stdlib ``csv`` writer / lxml ``xmlfile`` (one element per
item, a child per column) / openpyxl write-only (Runs and Items sheets, the characters
XML cannot hold replaced with one regex, or openpyxl refuses the corpus) / ``orjson.dumps``.
The floor of ``runs`` (a bulk CSV of run rows, the default shape) is a bare
SQLite query of the index the server built (``SELECT`` the run columns in list order) into
the stdlib ``csv`` writer: those rows come from the index, not the files. Each floor is
measured just before and just after the export and averaged, since other work shares
the two CPUs (a short one: the median of up to five, as for a short export). ``in memory``
is the writer alone on rows already parsed (the figure the first round of benchmarks called
the floor).

The service's CSV writer is not the csv module (it builds the same bytes with str methods,
which scan long text cells at memory speed), so a CSV ratio over 100% means the floor's
writer is the slower one, not that the export skips work.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from lxml import etree
from openpyxl import Workbook

from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS

from . import corpus
from .common import Gunicorn, through_curl

URLS = {"runs": "/api/runs/export/csv", "csv": "/api/runs/export/csv?shape=items", "xml": "/api/runs/export/xml",
        "xlsx": "/api/runs/export/xlsx", "jsonl": "/api/runs/export/jsonl", "json": "/api/runs/export/json"}
#: Goals of issue 13 (share of the floor's rows/s).
GOALS = {"runs": 0.5, "csv": 0.9, "xml": 0.7, "xlsx": 0.8}
_HEAD = ("execution_id", "config_name", "timestamp", "status", "execution_mode", "safety_level", "user_id",
         "session_id")
_ITEM = ("sequence_number", "stage", "stage_iteration", "loop_iteration", "item_type", "timestamp", "model_used",
         "backend_used", "media_type", "config_used", "execution_time", "file_path", "content")
_RUN = RUN_COLUMNS[:10]
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class Null(io.RawIOBase):
    """A sink that counts what it is given."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)

    def writable(self) -> bool:
        return True


def parsed(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield orjson.loads(path.read_bytes())


def item_rows(record: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    head = tuple(record.get(k) for k in _HEAD)
    items = record.get("items") or [{}]
    for item in items:
        yield head + tuple(item.get(k) for k in _ITEM) + (orjson.dumps(item.get("metadata")).decode(),)


def run_row(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(k) for k in _RUN) + (len(record.get("items") or ()), record.get("taxonomy_version"))


def floor_csv(records: Iterable[dict[str, Any]]) -> int:
    return csv_floor(list(item_rows(record)) for record in records)


def csv_floor(batches: Iterable[list[tuple[Any, ...]]]) -> int:
    """The stdlib ``csv`` writer over batches of rows, encoded 64 KB at a time; the rows written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    rows = 0
    for batch in batches:
        writer.writerows(batch)
        rows += len(batch)
        if buffer.tell() >= 65536:
            buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    buffer.getvalue().encode("utf-8")
    return rows


def floor_csv_runs(index_file: Path) -> int:
    """Run rows straight from the index's SQLite file into the csv writer (the ``runs`` floor)."""
    conn = sqlite3.connect(index_file)
    try:
        cursor = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE source = 'file'"
                              " ORDER BY ts_key DESC, execution_id DESC")
        return csv_floor(iter(lambda: cursor.fetchmany(1000), []))
    finally:
        conn.close()


def _text(value: Any) -> str:
    return "" if value is None else _NOT_XML.sub("\ufffd", value) if type(value) is str else str(value)


def floor_xml(records: Iterable[dict[str, Any]]) -> int:
    rows = 0
    with etree.xmlfile(Null(), encoding="utf-8") as xf, xf.element("items"):
        for record in records:
            for row in item_rows(record):
                item = etree.Element("item")
                for name, value in zip(ITEM_COLUMNS, row):
                    etree.SubElement(item, name).text = _text(value)
                xf.write(item)
                rows += 1
    return rows


def floor_xlsx(records: Iterable[dict[str, Any]]) -> int:
    def clean(row: tuple[Any, ...]) -> list[Any]:
        return [_NOT_XML.sub("\ufffd", v) if type(v) is str else v for v in row]

    book = Workbook(write_only=True)
    runs, items = book.create_sheet("Runs"), book.create_sheet("Items")
    runs.append(RUN_COLUMNS)
    items.append(ITEM_COLUMNS)
    rows = 0
    for record in records:
        runs.append(clean(run_row(record)))
        for row in item_rows(record):
            items.append(clean(row))
            rows += 1
    book.save(Null())
    return rows


def floor_jsonl(records: Iterable[dict[str, Any]]) -> int:
    rows = 0
    for record in records:
        orjson.dumps(record)
        rows += max(1, len(record.get("items") or ()))
    return rows


FLOORS: dict[str, Callable[[Iterable[dict[str, Any]]], int]] = {
    "csv": floor_csv, "xml": floor_xml, "xlsx": floor_xlsx, "jsonl": floor_jsonl, "json": floor_jsonl}


def in_memory(fmt: str, paths: list[Path]) -> float:
    """Rows/s of the floor's writer alone, on (at most 3000) records already parsed."""
    if fmt == "runs":
        return float("nan")  # its floor reads no record
    records = list(parsed(paths[:3000]))
    started = time.perf_counter()
    rows = FLOORS[fmt](records)
    return rows / (time.perf_counter() - started)


def floor(fmt: str, paths: list[Path]) -> tuple[int, float]:
    """(item rows, or run rows for ``runs``; rows/s) of the bare library over the files (the index).

    A short floor is timed like a short export (up to five times within 5 s, the median): one
    sample of a fraction of a second is at the mercy of whatever else runs on the two CPUs.
    """
    times = []
    while len(times) < 5 and sum(times) < 5:
        started = time.perf_counter()
        rows = (floor_csv_runs(paths[0].parent / ".index" / "runs.sqlite3") if fmt == "runs"
                else FLOORS[fmt](parsed(paths)))
        times.append(time.perf_counter() - started)
    return rows, rows / sorted(times)[len(times) // 2]


def cold_build(folder: Path) -> None:
    """The first answer after the index is gone, through one gunicorn worker, and its peak RSS."""
    shutil.rmtree(folder / ".index", ignore_errors=True)
    server = Gunicorn(folder, workers=1)
    try:
        started = time.perf_counter()
        while True:  # during a build the API may answer 503 with Retry-After
            status = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                     server.url + "/api/runs?limit=20"], capture_output=True, text=True).stdout
            if status == "200":
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        while b'"build"' in server.get("/api/health"):  # the text phase: searches answer 503 until it ends
            time.sleep(0.5)
        whole = time.perf_counter() - started
        print(f"cold index build (first 200 answer): {seconds:.1f} s, text search after {whole:.1f} s; "
              f"worker peak RSS {', '.join(f'{mb:.0f} MB' for mb in server.worker_rss_mb())} (goal <= 120 MB)")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus.add_arguments(parser)
    parser.add_argument("--formats", nargs="+", default=list(URLS), choices=list(URLS))
    parser.add_argument("--no-build", action="store_true", help="skip the cold index build")
    args = parser.parse_args(argv)
    folder = corpus.from_arguments(args)
    paths = sorted(folder.glob("exec_*.json"))
    print(f"=== {len(paths)} runs of {folder} ===")
    if not args.no_build:
        cold_build(folder)
    print(f"{'format':6s} {'TTFB':>9s} {'total':>7s} {'MB':>7s} {'rows/s':>9s} {'floor':>9s} {'ratio':>6s}"
          f" {'goal':>5s} {'in memory':>10s} {'peak RSS':>9s}")
    for fmt in args.formats:
        server = Gunicorn(folder, workers=1)
        try:
            server.get("/api/runs?limit=1")  # the index is there (the runs floor reads it)
            server.stop()
            rows, before = floor(fmt, paths)
            server = Gunicorn(folder, workers=1)
            server.get("/api/runs?limit=1")
            samples = [through_curl(server, URLS[fmt])]
            while len(samples) < 5 and sum(sample[1] for sample in samples) < 5:  # short ones: the median of up to 5
                samples.append(through_curl(server, URLS[fmt]))
            first, total, size, status = sorted(samples, key=lambda sample: sample[1])[len(samples) // 2]
            peak = max(server.worker_rss_mb())
        finally:
            server.stop()
        _, after = floor(fmt, paths)
        base = (before + after) / 2
        rate = rows / total
        goal = f"{GOALS[fmt]:.0%}" if fmt in GOALS else "-"
        print(f"{fmt:6s} {first * 1000:7.0f}ms {total:6.1f}s {size / 2**20:7.1f} {rate:9,.0f} {base:9,.0f}"
              f" {rate / base:6.0%} {goal:>5s} {in_memory(fmt, paths):10,.0f} {peak:6.0f} MB"
              + ("" if status == 200 else f"  HTTP {status}") + f"   (floor before/after {before:,.0f}/{after:,.0f})",
              flush=True)
    print("rows: item rows, or run rows for runs (a bulk CSV's default shape)")


if __name__ == "__main__":
    main()
