"""Every export format over a whole corpus of record files, single and bulk, each output read
back with its real parser (csv, openpyxl, lxml + the shipped XSD, json); prints counts and
timings. Reads the folder only (no index, nothing written beside it).

    python -m bench.corpus_exports bench/out/corpus_20000_s42 [--single 20000] [--formats csv xml]

The corpus comes from ``../shared/corpus`` (gen_runs.py, then to_contract.py); the test suite
runs its own small hostile generator instead (tests/hostile_records.py).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import openpyxl
from lxml import etree

from execution_history import RunStore
from execution_history.exporters import EXPORTERS, ExportInfo
from execution_history.exporters.xml_writer import xsd_bytes

csv.field_size_limit(2**31 - 1)
XSD = etree.XMLSchema(etree.fromstring(xsd_bytes()))


def count_json(data: bytes, bulk: bool) -> int:
    parsed = json.loads(data)
    return len(parsed) if bulk else 1


def count_jsonl(data: bytes, bulk: bool) -> int:
    return sum(1 for line in data.split(b"\n") if line and json.loads(line) is not None)


def count_csv(data: bytes, bulk: bool) -> int:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return len({row[0] for row in rows[1:]})  # runs (items shape repeats the id)


def count_xml(data: bytes, bulk: bool) -> int:
    document = etree.fromstring(data, parser=etree.XMLParser(huge_tree=True))
    XSD.assertValid(document)
    return len(document) if bulk else 1


def count_xlsx(data: bytes, bulk: bool) -> int:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    runs = sum(1 for _ in book["Runs"].iter_rows(min_row=2, values_only=True))
    for _ in book["Items"].iter_rows(values_only=True):
        pass
    book.close()
    return runs


COUNTERS = {"json": count_json, "jsonl": count_jsonl, "csv": count_csv, "xml": count_xml, "xlsx": count_xlsx}


def run(folder: Path, formats: list[str], single: int) -> int:
    """Export and parse; returns the number of failures."""
    store = RunStore(folder)
    ids = store.list_ids()
    print(json.dumps({"corpus": str(folder), "runs": len(ids)}), flush=True)
    failures = 0
    for fmt in formats:
        exporter, counter = EXPORTERS[fmt], COUNTERS[fmt]
        started = time.perf_counter()
        ok = failed = 0
        first_error = None
        for execution_id in ids[:single]:
            try:
                data = b"".join(exporter.write(iter([store.load(execution_id)]), bulk=False, info=ExportInfo(count=1)))
                assert counter(data, False) == 1
                ok += 1
            except Exception as err:  # counted and reported, the run goes on
                failed += 1
                first_error = first_error or f"{execution_id}: {err.__class__.__name__}: {err}"[:300]
        single_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with tempfile.TemporaryFile() as spool:
            size = 0
            try:
                for chunk in exporter.write(store.iter_records(ids), bulk=True, info=ExportInfo(count=len(ids))):
                    spool.write(chunk)
                    size += len(chunk)
                written = time.perf_counter() - started
                spool.seek(0)
                bulk_runs = counter(spool.read(), True)
                bulk_error = None if bulk_runs == len(ids) else f"{bulk_runs} runs parsed of {len(ids)}"
            except Exception as err:
                written, bulk_runs, bulk_error = time.perf_counter() - started, None, f"{err.__class__.__name__}: {err}"[:300]
        failures += failed + (bulk_error is not None)
        print(json.dumps({"format": fmt, "single_ok": ok, "single_failed": failed, "single_seconds": round(single_seconds, 1),
                          "first_single_error": first_error, "bulk_runs": bulk_runs, "bulk_bytes": size,
                          "bulk_write_seconds": round(written, 1),
                          "bulk_total_seconds": round(time.perf_counter() - started, 1), "bulk_error": bulk_error}),
              flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    """Command line: the corpus folder, how many runs to export one by one, which formats."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of record files (e.g. made by bench.corpus)")
    parser.add_argument("--single", type=int, default=None, help="runs exported one by one (default: all)")
    parser.add_argument("--formats", nargs="+", default=sorted(COUNTERS), choices=sorted(COUNTERS))
    args = parser.parse_args(argv)
    return 1 if run(args.folder, args.formats, args.single if args.single is not None else 10**9) else 0


if __name__ == "__main__":
    sys.exit(main())
