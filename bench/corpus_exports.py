"""Every export format over a whole corpus of record files, single and bulk, each output read
back with its real parser (csv, openpyxl, lxml + the shipped XSD, json, zipfile); prints
counts, failures and timings, one JSON line per format (and CSV shape).

    python -m bench.corpus_exports FOLDER [--single N] [--formats csv xml] [--gunicorn]

Without ``--gunicorn`` the writers run in this process on the folder's records (read only,
no index). With ``--gunicorn`` everything goes through the shipped gunicorn config, as a
client sees it: single runs from ``/api/runs/<id>/export/<fmt>``, bulk from
``/api/runs/export/<fmt>`` (CSV in both shapes), each streamed to a temporary file and
parsed there; ``X-Total-Count`` must match the runs parsed. The server's index goes to a
temporary ``RUN_HISTORY_INDEX_DIR`` (the folder is not written to, apart from the
audit log beside it, as with any served folder). ``--single N`` exports a sample of N runs
one by one (spread evenly over the corpus; default: all).

The corpus comes from ``../shared/corpus`` (gen_runs.py, then to_contract.py); the test suite
runs its own small hostile generator through every format instead (tests/hostile_records.py,
tests/test_hostile_exports.py).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import openpyxl
from lxml import etree

from execution_history import RunStore
from execution_history.exporters import EXPORTERS, ExportInfo
from execution_history.exporters.xml_writer import xsd_bytes

csv.field_size_limit(2**31 - 1)
XSD = etree.XMLSchema(etree.fromstring(xsd_bytes()))

#: (format, CSV shape or None): what is exported in bulk; single runs take each format's default.
BULK = [("csv", "runs"), ("csv", "items"), ("json", None), ("jsonl", None), ("xml", None), ("xlsx", None),
        ("zip", None)]


def count_json(handle: IO[bytes], bulk: bool) -> int:
    parsed = json.load(handle)
    assert isinstance(parsed, list if bulk else dict)
    return len(parsed) if bulk else 1


def count_jsonl(handle: IO[bytes], bulk: bool) -> int:
    return sum(1 for line in handle if line.strip() and isinstance(json.loads(line), dict))


def count_csv(handle: IO[bytes], bulk: bool) -> int:
    """Runs in a CSV of either shape (the items shape repeats the run's id on each item row)."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    try:
        rows = csv.reader(text)
        header = next(rows)
        assert header[0] == "execution_id", header[:3]
        ids = set()
        for row in rows:
            assert len(row) == len(header), (len(row), len(header))
            ids.add(row[0])
    finally:
        text.detach()  # the caller's file stays open (and is the caller's to close)
    return len(ids)


def count_xml(handle: IO[bytes], bulk: bool) -> int:
    """Validated against the shipped XSD while parsed (streaming: the tree is cleared as read)."""
    runs = depth = 0
    for event, element in etree.iterparse(handle, events=("start", "end"), schema=XSD, huge_tree=True):
        depth += 1 if event == "start" else -1
        if event == "end" and depth == (1 if bulk else 0):
            runs += 1
            if bulk:
                element.clear()
    return runs


def count_xlsx(handle: IO[bytes], bulk: bool) -> int:
    book = openpyxl.load_workbook(handle, read_only=True)
    assert {"Runs", "Items", "About"} <= set(book.sheetnames), book.sheetnames
    runs = sum(1 for _ in book["Runs"].iter_rows(min_row=2, values_only=True))
    for _ in book["Items"].iter_rows(values_only=True):
        pass
    book.close()
    return runs


def count_zip(handle: IO[bytes], bulk: bool) -> int:
    """Every entry's CRC checked, every record in the manifest parsed as JSON."""
    archive = zipfile.ZipFile(handle)
    assert archive.testzip() is None
    manifest = json.loads(archive.read("manifest.json"))
    for run in manifest["runs"]:
        assert isinstance(json.loads(archive.read(run["record"]["path"])), dict)
    return len(manifest["runs"])


COUNTERS: dict[str, Callable[[IO[bytes], bool], int]] = {
    "json": count_json, "jsonl": count_jsonl, "csv": count_csv, "xml": count_xml, "xlsx": count_xlsx,
    "zip": count_zip}


class InProcess:
    """The writers in this process, records read straight from the folder."""

    def __init__(self, folder: Path) -> None:
        self.store = RunStore(folder)
        self.ids = self.store.list_ids()

    def single(self, execution_id: str, fmt: str, spool: IO[bytes]) -> int | None:
        record = self.store.load(execution_id)
        for chunk in EXPORTERS[fmt].write(iter([record]), bulk=False, info=ExportInfo(count=1)):
            spool.write(chunk)
        return None

    def bulk(self, fmt: str, shape: str | None, spool: IO[bytes]) -> int | None:
        options = {"shape": shape} if shape else {}
        for chunk in EXPORTERS[fmt].write(self.store.iter_records(self.ids), bulk=True,
                                          info=ExportInfo(count=len(self.ids)), **options):
            spool.write(chunk)
        return None

    def close(self) -> None:
        pass


class ThroughGunicorn:
    """The shipped gunicorn serving the folder; exports fetched over HTTP."""

    def __init__(self, folder: Path) -> None:
        from .common import Gunicorn

        self.index_dir = Path(tempfile.mkdtemp(prefix="corpus-exports-index-"))
        self.server = Gunicorn(folder, env={"RUN_HISTORY_INDEX_DIR": str(self.index_dir)})
        started = time.perf_counter()
        total = json.loads(self.server.get("/api/runs?limit=1"))["total"]  # waits out the cold build
        print(json.dumps({"index_ready_seconds": round(time.perf_counter() - started, 1), "listed": total}),
              flush=True)
        self.ids = sorted(RunStore(folder).list_ids())

    def _fetch(self, path: str, spool: IO[bytes]) -> int | None:
        with urllib.request.urlopen(self.server.url + path, timeout=3600) as response:
            assert response.status == 200, response.status
            shutil.copyfileobj(response, spool, 1 << 20)
            total = response.headers.get("X-Total-Count")
        return int(total) if total is not None else None

    def single(self, execution_id: str, fmt: str, spool: IO[bytes]) -> int | None:
        self._fetch(f"/api/runs/{execution_id}/export/{fmt}", spool)
        return None

    def bulk(self, fmt: str, shape: str | None, spool: IO[bytes]) -> int | None:
        return self._fetch(f"/api/runs/export/{fmt}" + (f"?shape={shape}" if shape else ""), spool)

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.index_dir, ignore_errors=True)


def _error(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}: {err.read()[:200]!r}"
    return f"{err.__class__.__name__}: {err}"[:300]


def sample(ids: list[str], count: int) -> list[str]:
    """*count* ids spread evenly over *ids* (all of them if there are fewer)."""
    if count >= len(ids):
        return list(ids)
    step = len(ids) / count
    return [ids[int(n * step)] for n in range(count)]


def run(source: InProcess | ThroughGunicorn, formats: list[str], single: int) -> int:
    """Export and parse; returns the number of failures (each printed)."""
    ids = source.ids
    singles = sample(ids, single)
    print(json.dumps({"runs": len(ids), "single_sample": len(singles), "mode": type(source).__name__}), flush=True)
    failures = 0
    for fmt in formats:
        counter = COUNTERS[fmt]
        started = time.perf_counter()
        ok = failed = 0
        first_error = None
        for execution_id in singles:
            try:
                with tempfile.TemporaryFile() as spool:
                    source.single(execution_id, fmt, spool)
                    spool.seek(0)
                    assert counter(spool, False) == 1
                ok += 1
            except Exception as err:  # counted and reported, the run goes on
                failed += 1
                first_error = first_error or f"{execution_id}: {_error(err)}"
        print(json.dumps({"format": fmt, "single_ok": ok, "single_failed": failed,
                          "single_seconds": round(time.perf_counter() - started, 1), "first_single_error": first_error}),
              flush=True)
        failures += failed
        for bulk_fmt, shape in BULK:
            if bulk_fmt != fmt:
                continue
            started = time.perf_counter()
            bulk_runs = total = None
            size = 0
            with tempfile.TemporaryFile() as spool:
                try:
                    total = source.bulk(fmt, shape, spool)
                    size = spool.tell()
                    written = time.perf_counter() - started
                    spool.seek(0)
                    bulk_runs = counter(spool, True)
                    bulk_error = None if bulk_runs == len(ids) and total in (None, bulk_runs) else \
                        f"{bulk_runs} runs parsed of {len(ids)}, X-Total-Count {total}"
                except Exception as err:
                    written, bulk_error = time.perf_counter() - started, _error(err)
            failures += bulk_error is not None
            print(json.dumps({"format": fmt, "shape": shape, "bulk_runs": bulk_runs, "x_total_count": total,
                              "bulk_bytes": size, "bulk_write_seconds": round(written, 1),
                              "bulk_total_seconds": round(time.perf_counter() - started, 1),
                              "bulk_error": bulk_error}), flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    """Command line: the corpus folder, how many runs to export one by one, which formats, how."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of record files (e.g. made by bench.corpus)")
    parser.add_argument("--single", type=int, default=None, help="runs exported one by one (default: all)")
    parser.add_argument("--formats", nargs="+", default=sorted(COUNTERS), choices=sorted(COUNTERS))
    parser.add_argument("--gunicorn", action="store_true", help="through the shipped gunicorn config (HTTP)")
    args = parser.parse_args(argv)
    source = ThroughGunicorn(args.folder) if args.gunicorn else InProcess(args.folder)
    try:
        failures = run(source, args.formats, args.single if args.single is not None else 10**9)
    finally:
        source.close()
    print(json.dumps({"failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
