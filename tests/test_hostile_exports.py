"""Every export format takes every string a record can hold (noncharacters, controls, lone
surrogates that reached a file), read back with its real parser; through a real gunicorn too."""
import http.client
import io
import json
import urllib.parse

import openpyxl
import pytest

from execution_history.exporters import EXPORTERS
from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS

from .conftest import LiveServer
from .hostile_records import NONCHARACTERS, PIECES, write_hostile_runs, xlsx_expected
from .test_exports import PARSERS, expected_item_rows, expected_run_row, sheet_rows


@pytest.fixture
def hostile(runs_dir):
    return write_hostile_runs(runs_dir, 24)


def strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_the_generator_covers_what_it_claims(store, hostile):
    records = [store.load(i) for i in hostile]
    text = "".join(strings(records))
    assert all(ch in text for ch in NONCHARACTERS) and "\x00" in text and "\x85" in text
    assert any(r["session_id"] == "s\U000103ff\ufffdx" for r in records)  # lone surrogate read as U+FFFD


def xlsx_cell(value):
    return value if not isinstance(value, str) else xlsx_expected(value)


def check_parsed(fmt, data, records, bulk):
    parsed = PARSERS[fmt](data, bulk)
    if fmt in ("json", "jsonl", "xml", "zip"):  # zip: the records it bundles
        assert (parsed if fmt != "json" or bulk else [parsed]) == records
    elif fmt == "csv":
        expected = [expected_run_row(r) for r in records] if bulk else \
            [row for r in records for row in expected_item_rows(r)]
        assert parsed == expected
    else:
        runs = sheet_rows(parsed["Runs"])[1]
        assert [row[0] for row in runs] == [r["execution_id"] for r in records]
        for row, record in zip(runs, records):
            values = dict(zip(RUN_COLUMNS, row))
            for name in ("config_name", "user_id", "session_id"):
                assert values[name] == xlsx_expected(record[name])
        items = [dict(zip(ITEM_COLUMNS, row)) for row in sheet_rows(parsed["Items"])[1]]
        expected = [item for r in records for item in r["items"]]
        assert len(items) == len(expected)
        for row, item in zip(items, expected):
            if item["content"] is not None and len(item["content"]) < 16_000:
                assert row["content"] == (xlsx_expected(item["content"]) or None)
            assert row["model_used"] == (xlsx_cell(item["model_used"]))
        assert any("\ufffd" in (row["content"] or "") for row in items)


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_every_format_takes_hostile_records_single_and_bulk(client, store, hostile, fmt):
    options = "?raw=true" if fmt == "csv" else ""
    for execution_id in hostile[:6]:
        response = client.get(f"/api/runs/{execution_id}/export/{fmt}{options}")
        assert response.status_code == 200, response.get_data()[:300]
        check_parsed(fmt, response.get_data(), [store.load(execution_id)], bulk=False)
    response = client.get(f"/api/runs/export/{fmt}?order=asc{options and '&raw=true'}")
    assert response.status_code == 200, response.get_data()[:300]
    check_parsed(fmt, response.get_data(), [store.load(i) for i in sorted(hostile)], bulk=True)


def get(server, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_xlsx_and_xml_with_noncharacters_through_gunicorn(live_server, store, hostile):
    """Single run, bulk, and a filter value holding a noncharacter (the About sheet)."""
    for execution_id in hostile[:4]:
        for fmt in ("xlsx", "xml"):
            status, ctype, data = get(live_server, f"/api/runs/{execution_id}/export/{fmt}")
            assert status == 200, data[:300]
            check_parsed(fmt, data, [store.load(execution_id)], bulk=False)
    status, _, data = get(live_server, "/api/runs/export/xlsx?order=asc")
    assert status == 200, data[:300]
    check_parsed("xlsx", data, [store.load(i) for i in sorted(hostile)], bulk=True)
    for value in ["\ufffe", "\uffff", "\ufdd0x", "\U0010ffff", "a\x01b", "cfg \ufffe\x01"]:
        query = urllib.parse.urlencode({"config": value})
        status, _, data = get(live_server, f"/api/runs/export/xlsx?{query}")
        assert status == 200, data[:300]
        book = openpyxl.load_workbook(io.BytesIO(data))
        about = {row[0]: row[1] for row in book["About"].iter_rows(values_only=True)}
        assert about["filter: config"] == xlsx_expected(value)
        matching = [i for i in hostile if store.load(i)["config_name"] == value]
        assert about["runs"] == len(matching)
    status, _, data = get(live_server, "/api/runs/export/xml?" + urllib.parse.urlencode({"config": "\ufffe"}))
    assert status == 200 and PARSERS["xml"](data, True) == []


def test_a_failure_before_the_first_byte_is_the_apps_json_500(runs_dir, tmp_path, hostile):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", app="tests.fault_xlsx_app:app")
    try:
        for path in (f"/api/runs/{hostile[0]}/export/xlsx", "/api/runs/export/xlsx"):
            status, ctype, data = get(server, path, headers={"X-Request-ID": "early-7"})
            assert status == 500 and ctype.startswith("application/json")
            body = json.loads(data)
            assert body["code"] == "INTERNAL_ERROR" and body["request_id"] == "early-7"
    finally:
        server.stop()
    assert "simulated failure before the first byte" in server.log_path.read_text()


def test_pieces_reach_csv_and_json_unchanged(client, store, runs_dir):
    """CSV and JSON keep everything, noncharacters and controls included."""
    ids = write_hostile_runs(runs_dir, 3, seed=11)
    text = "".join(PIECES.values())
    for execution_id in ids:
        record = store.load(execution_id)
        record["items"][0]["content"] = text
        (runs_dir / f"{execution_id}.json").write_text(json.dumps(record), encoding="utf-8")
    rows = PARSERS["csv"](client.get("/api/runs/export/csv?shape=items&raw=true").get_data(), True)
    assert sum(row["content"] == text for row in rows) == 3
    records = PARSERS["json"](client.get("/api/runs/export/json").get_data(), True)
    assert sum(r["items"][0]["content"] == text for r in records) == 3
