"""Bulk CSV of run rows from the index: the same bytes as from the record files, none read.

A bulk CSV in its default shape (run rows) takes each run's fields from the index instead of
parsing every record file (issue 13). These tests hold the two paths to the same output over
hostile records, files of the earlier tracker and tracker-written runs, on both stores.
"""
import csv
import io
import json
from pathlib import Path

import pytest

from execution_history.errors import SelectionChanged
from execution_history.exporters.csv_writer import write_csv
from execution_history.filters import RunQuery
from execution_history.index import RunIndex, queries
from execution_history.pseudonyms import pseudonymize_fields
from execution_history.s3store import S3Store
from execution_history.storage import RunStore

from .conftest import write_raw
from .hostile_records import write_hostile_runs

STORE_KINDS = ("local", "s3")
LEGACY = Path(__file__).parent / "legacy"
SECRET = "test-secret-shared-by-every-host"


@pytest.fixture
def mixed_runs(store, recorded_runs, tmp_path):
    """Tracker runs, hostile files, the earlier tracker's files and a whole-number run time."""
    scratch = tmp_path / "hostile"
    scratch.mkdir()
    for execution_id in write_hostile_runs(scratch, 12):
        write_raw(store, f"{execution_id}.json", (scratch / f"{execution_id}.json").read_bytes())
    for path in sorted(LEGACY.glob("exec_*.json")):
        write_raw(store, path.name, path.read_bytes())
    whole = json.loads((scratch / sorted(p.name for p in scratch.iterdir())[0]).read_text("ascii"))
    whole.update(execution_id="exec_20251104_010101_0000abcd", total_execution_time=3, finished_at=None,
                 status="failed", user_id=None)
    write_raw(store, "exec_20251104_010101_0000abcd.json", json.dumps(whole).encode())
    return store


def from_records(client, store, query: str, pseudonymize: bool = False, **options) -> bytes:
    """What the record-file path writes for the list's selection (the reference)."""
    body = client.get(f"/api/runs?{query}" + ("" if "limit=" in query else "&limit=100")).get_json()
    records = [store.load(e["execution_id"]) for e in body["executions"]]
    if pseudonymize:
        records = [pseudonymize_fields(r, SECRET) for r in records]
    return b"".join(write_csv(records, bulk=True, **options))


@pytest.mark.parametrize("query, options", [
    ("", {}),
    ("order_by=total_execution_time&order=asc", {}),
    ("config=stillepost&limit=3&offset=1", {}),
    ("status=failed", {"bom": True}),
    ("q=Blume", {"raw": True}),
])
def test_bulk_run_rows_equal_the_record_files(client, app, mixed_runs, query, options):
    flags = "".join(f"&{name}=true" for name in options)
    response = client.get(f"/api/runs/export/csv?{query}{flags}")
    assert response.status_code == 200
    expected = from_records(client, mixed_runs, query, **options)
    assert response.data == expected
    rows = list(csv.reader(io.StringIO(response.data.decode("utf-8-sig"), newline="")))
    assert int(response.headers["X-Total-Count"]) == len(rows) - 1 > 0


def test_pseudonymized_run_rows_equal_the_record_files(app, mixed_runs):
    app.config["SECRET_KEY"] = SECRET
    client = app.test_client()
    response = client.get("/api/runs/export/csv?pseudonymize=true")
    assert response.status_code == 200
    assert response.data == from_records(client, mixed_runs, "", pseudonymize=True)


def test_bulk_run_rows_read_no_record_file(client, mixed_runs, monkeypatch):
    client.get("/api/runs")  # indexed
    expected = client.get("/api/runs/export/csv?shape=items").status_code

    def refuse(*args, **kwargs):
        raise AssertionError("a record file was read for run rows")

    for kind in (RunStore, S3Store):
        monkeypatch.setattr(kind, "load", refuse)
        monkeypatch.setattr(kind, "read_bytes", refuse)
    response = client.get("/api/runs/export/csv")
    assert response.status_code == 200 == expected
    assert response.data.count(b"\r\n") > 20
    assert client.get("/api/runs/export/csv?shape=items").status_code == 500  # item rows still read the files


def test_a_run_gone_from_the_index_mid_export_cuts_it(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(queries, "FETCH", 2)  # rows are read two at a time
    ids = write_hostile_runs(runs_dir, 5)
    index = RunIndex(RunStore(runs_dir), folder=tmp_path / "index")
    rows = index.iter_run_rows(RunQuery(order="asc", limit=None))
    assert next(rows)["execution_id"] == sorted(ids)[0]
    (runs_dir / f"{sorted(ids)[-1]}.json").unlink()
    index.recheck([sorted(ids)[-1]])
    with pytest.raises(SelectionChanged):
        list(rows)

