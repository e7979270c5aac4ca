"""Exports: every format read back with its real parser, hostile content, headers and statuses."""
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import zipfile

import openpyxl
import pytest
from lxml import etree
from openpyxl.utils import get_column_letter

from execution_history.exporters import EXPORTERS, get_exporter
from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS, metadata_text
from execution_history.exporters.xlsx_writer import (
    EXCEL_MAX_CELL,
    excel_text,
    utf16_length,
)
from execution_history.exporters.xml_writer import read_records, xsd_bytes
from execution_history.records import check_record

from .conftest import HOSTILE, assert_error, record_every_type

#: Every test here runs on the local folder and on S3 (see conftest.pytest_generate_tests).
STORE_KINDS = ("local", "s3")

XSD = etree.XMLSchema(etree.fromstring(xsd_bytes()))


def parse_json(data, bulk):
    return json.loads(data)


def parse_jsonl(data, bulk):
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line]


def parse_csv(data, bulk):
    text = data.decode("utf-8")
    assert "\r\n" in text or text.count("\n") == 0
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def parse_xml(data, bulk):
    document = etree.fromstring(data, parser=etree.XMLParser(huge_tree=True))
    XSD.assertValid(document)
    return read_records(data)


def parse_xlsx(data, bulk):
    return openpyxl.load_workbook(io.BytesIO(data))


def parse_zip(data, bulk):
    """The records of a zip export, in manifest order (every entry's CRC checked first)."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    manifest = json.loads(archive.read("manifest.json"))
    return [json.loads(archive.read(run["record"]["path"])) for run in manifest["runs"]]


PARSERS = {"json": parse_json, "jsonl": parse_jsonl, "csv": parse_csv, "xml": parse_xml, "xlsx": parse_xlsx,
           "zip": parse_zip}


def test_every_format_has_a_parser():
    assert set(PARSERS) == set(EXPORTERS)


def unneutralize(value):
    return value[1:] if value.startswith("'") else value


def csv_cell(value):
    return "" if value is None else str(value)


def expected_item_rows(record):
    items = record["items"] or [None]
    rows = []
    for item in items:
        run = {"execution_id": record["execution_id"], "config_name": record["config_name"],
               "run_timestamp": record["timestamp"], "status": record["status"],
               "execution_mode": record["execution_mode"], "safety_level": record["safety_level"],
               "user_id": record["user_id"], "session_id": record["session_id"]}
        fields = {} if item is None else {
            "sequence_number": item["sequence_number"], "stage": item["stage"],
            "stage_iteration": item["stage_iteration"], "loop_iteration": item["loop_iteration"],
            "item_type": item["item_type"], "item_timestamp": item["timestamp"], "model_used": item["model_used"],
            "backend_used": item["backend_used"], "media_type": item["media_type"],
            "config_used": item["config_used"], "execution_time": item["execution_time"],
            "file_path": item["file_path"], "content": item["content"], "metadata": metadata_text(item["metadata"])}
        rows.append({name: csv_cell({**run, **fields}.get(name)) for name in ITEM_COLUMNS})
    return rows


def expected_run_row(record):
    values = {**record, "items_count": len(record["items"])}
    return {name: csv_cell(values[name]) for name in RUN_COLUMNS}


def export(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response, response.get_data()


# ---------------------------------------------------------------- round trips, one run


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_formats_are_lossless_for_one_run(client, store, recorded_runs, fmt):
    for execution_id in recorded_runs:
        _, data = export(client, f"/api/runs/{execution_id}/export/{fmt}")
        parsed = PARSERS[fmt](data, False)
        assert (parsed if fmt == "json" else parsed[0]) == store.load(execution_id)


def test_csv_one_run_is_its_items_and_neutralized(client, store, recorded_runs):
    hostile = recorded_runs[-1]
    record = store.load(hostile)
    _, data = export(client, f"/api/runs/{hostile}/export/csv")
    rows = parse_csv(data, False)
    assert [{k: unneutralize(v) for k, v in row.items()} for row in rows] == expected_item_rows(record)
    contents = {row["content"] for row in rows}
    for text in [HOSTILE["formula"], HOSTILE["formula_plus"], HOSTILE["formula_minus"], HOSTILE["formula_at"],
                 HOSTILE["formula_tab"], HOSTILE["formula_cr"]]:
        assert "'" + text in contents and text not in contents
    _, raw = export(client, f"/api/runs/{hostile}/export/csv?raw=true")
    assert parse_csv(raw, False) == expected_item_rows(record)


def test_csv_bom_and_runs_shape(client, store, recorded_runs):
    _, data = export(client, f"/api/runs/{recorded_runs[0]}/export/csv?bom=true&shape=runs")
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\xef\xbb\xbf") == 1
    assert parse_csv(data, False) == [expected_run_row(store.load(recorded_runs[0]))]


def test_xml_one_run_is_valid_and_decodes_back(client, store, recorded_runs):
    for execution_id in recorded_runs:
        _, data = export(client, f"/api/runs/{execution_id}/export/xml")
        assert parse_xml(data, False) == [store.load(execution_id)]
    _, data = export(client, f"/api/runs/{recorded_runs[-1]}/export/xml")
    encoded = etree.fromstring(data, parser=etree.XMLParser(huge_tree=True)).xpath("//*[@encoding='base64']")
    assert encoded, "control characters must travel as base64"


def sheet_rows(sheet):
    rows = list(sheet.iter_rows(values_only=True))
    return rows[0], rows[1:]


def test_xlsx_one_run_has_native_types_and_safe_text(client, store, recorded_runs):
    hostile = recorded_runs[-1]
    record = store.load(hostile)
    _, data = export(client, f"/api/runs/{hostile}/export/xlsx")
    book = parse_xlsx(data, False)
    assert book.sheetnames == ["Runs", "Items", "About"]
    items = book["Items"]
    header, rows = sheet_rows(items)
    assert list(header) == list(ITEM_COLUMNS)  # the CSV column names, exactly
    assert all(cell.font.b for cell in items[1]) and items.freeze_panes == "A2"
    assert items.auto_filter.ref == f"A1:{get_column_letter(len(ITEM_COLUMNS))}{len(rows) + 1}"
    assert len(rows) == len(record["items"])
    for row, item in zip(rows, record["items"]):
        values = dict(zip(ITEM_COLUMNS, row))
        assert values["sequence_number"] == item["sequence_number"] and isinstance(values["stage"], int)
        assert values["execution_time"] == item["execution_time"]
        assert values["item_timestamp"] == dt.datetime.fromisoformat(item["timestamp"]).replace(tzinfo=None)
        assert values["content"] == (excel_text(item["content"]) if item["content"] else None)
    by_text = {cell.value: cell for cell in items[get_column_letter(ITEM_COLUMNS.index("content") + 1)][1:] if cell.value}
    assert by_text[HOSTILE["formula"]].data_type == "s"  # kept exactly, as text
    long = next(v for v in by_text if v.startswith("Stille Post"))
    assert utf16_length(long) <= EXCEL_MAX_CELL and re.search(r"…\[truncated \d+ characters\]$", long)
    control = next(v for v in by_text if v.startswith("nul"))
    assert "\u2400" in control and "\u240b" in control  # visible, and the sheet goes on
    runs_header, runs = sheet_rows(book["Runs"])
    assert list(runs_header) == list(RUN_COLUMNS)
    assert runs[0][RUN_COLUMNS.index("items_count")] == len(record["items"])
    about = {row[0]: row[1] for row in book["About"].iter_rows(values_only=True)}
    assert about["runs"] == 1 and about["item rows"] == len(record["items"]) and about["taxonomy_version"] == "1.1"
    assert "UTC" in about["times"] and isinstance(about["exported_at"], dt.datetime)


@pytest.mark.parametrize("text", ["x" * 100_000, "🌸" * 40_000, "a🌸" * 20_000])
def test_xlsx_truncation_fits_excel_and_counts_the_cut_characters(text):
    cut = excel_text(text)
    kept, marker = cut.rsplit("…", 1)
    assert utf16_length(cut) <= EXCEL_MAX_CELL and utf16_length(cut) > EXCEL_MAX_CELL - 40
    assert text.startswith(kept)
    assert int(re.search(r"\d+", marker).group()) == len(text) - len(kept)


def test_xlsx_text_replaces_exactly_what_its_docstring_says_in_every_plane():
    """Every code point, checked against the rule as written (not against the pattern)."""
    def expected(code):
        if code < 0x20 and chr(code) not in "\t\n\r":
            return chr(0x2400 + code)  # a control picture
        if 0xD800 <= code <= 0xDFFF or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
            return "\ufffd"  # lone surrogates, noncharacters
        return chr(code)
    for start in range(0, 0x110000, 16_000):  # chunks under the length cap
        codes = range(start, min(start + 16_000, 0x110000))
        assert excel_text("".join(map(chr, codes))) == "".join(map(expected, codes)), hex(start)


def test_xlsx_keeps_formula_and_error_text_as_text_on_every_row():
    """Text openpyxl would store as a formula or an error value is text, in the run's columns
    (made once for all its items) on every item row as much as in an item's own."""
    texts = ["=1+1", "#N/A", "#DIV/0!", "#REF!"]
    record = check_record({
        "execution_id": "exec_20251103_205239_896e054c", "config_name": "#NAME?",
        "timestamp": "2025-11-03T20:52:39+00:00", "status": "completed", "user_id": "=HYPERLINK(\"x\")",
        "session_id": "#NUM!",
        "items": [{"sequence_number": n, "stage": 1, "item_type": "user_input_text",
                   "timestamp": "2025-11-03T20:52:40+00:00", "content": text} for n, text in enumerate(texts, 1)]})
    book = openpyxl.load_workbook(io.BytesIO(b"".join(EXPORTERS["xlsx"].write([record]))))
    rows = list(book["Items"].iter_rows(min_row=2))
    assert len(rows) == len(texts)
    for row, text in zip(rows, texts):
        cells = dict(zip(ITEM_COLUMNS, row))
        for name, wanted in [("config_name", "#NAME?"), ("user_id", '=HYPERLINK("x")'), ("session_id", "#NUM!"),
                             ("content", text)]:
            assert (cells[name].value, cells[name].data_type) == (wanted, "s"), name
        # the run's time is one date cell shared by its rows: a date on every one of them
        assert cells["run_timestamp"].is_date and cells["run_timestamp"].value == dt.datetime(2025, 11, 3, 20, 52, 39)
        assert cells["item_timestamp"].is_date and cells["item_timestamp"].value == dt.datetime(2025, 11, 3, 20, 52, 40)
    run = dict(zip(RUN_COLUMNS, next(book["Runs"].iter_rows(min_row=2))))
    assert [(run[name].value, run[name].data_type) for name in ("config_name", "user_id")] == [
        ("#NAME?", "s"), ('=HYPERLINK("x")', "s")]


# ---------------------------------------------------------------- bulk


def listing_order(client, query=""):
    body = client.get(f"/api/runs?limit=100&{query}").get_json()
    return [e["execution_id"] for e in body["executions"]]


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_bulk_exports_every_match_in_list_order(client, store, recorded_runs, fmt):
    response, data = export(client, f"/api/runs/export/{fmt}")
    order = listing_order(client)
    assert int(response.headers["X-Total-Count"]) == len(order) == len(recorded_runs)
    records = [store.load(i) for i in order]
    parsed = PARSERS[fmt](data, True)
    if fmt in ("json", "jsonl", "xml", "zip"):
        assert parsed == records
    elif fmt == "csv":
        assert [{k: unneutralize(v) for k, v in row.items()} for row in parsed] == \
            [expected_run_row(r) for r in records]
    else:
        assert [row[0] for row in sheet_rows(parsed["Runs"])[1]] == order
        assert len(sheet_rows(parsed["Items"])[1]) == sum(max(len(r["items"]), 1) for r in records)


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_bulk_takes_the_list_filters(client, store, recorded_runs, fmt):
    query = "config=stillepost&order=asc&limit=1&offset=1"
    response, data = export(client, f"/api/runs/export/{fmt}?{query}")
    expected = listing_order(client, "config=stillepost&order=asc")[1:2]
    assert int(response.headers["X-Total-Count"]) == 1 and len(expected) == 1
    parsed = PARSERS[fmt](data, True)
    ids = {"json": lambda: [r["execution_id"] for r in parsed], "jsonl": lambda: [r["execution_id"] for r in parsed],
           "xml": lambda: [r["execution_id"] for r in parsed], "csv": lambda: [r["execution_id"] for r in parsed],
           "zip": lambda: [r["execution_id"] for r in parsed],
           "xlsx": lambda: [row[0] for row in sheet_rows(parsed["Runs"])[1]]}[fmt]()
    assert ids == expected


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_empty_selection(client, recorded_runs, fmt):
    response, data = export(client, f"/api/runs/export/{fmt}?config=nobody")
    assert response.headers["X-Total-Count"] == "0"
    parsed = PARSERS[fmt](data, True)
    if fmt == "csv":
        assert parsed == [] and data.decode().split("\r\n")[0] == ",".join(RUN_COLUMNS)
    elif fmt == "xlsx":
        assert sheet_rows(parsed["Runs"])[1] == [] and sheet_rows(parsed["Items"])[1] == []
    else:
        assert parsed == []


def test_csv_items_shape_for_bulk(client, store, recorded_runs):
    _, data = export(client, "/api/runs/export/csv?shape=items&raw=true")
    records = [store.load(i) for i in listing_order(client)]
    assert parse_csv(data, True) == [row for r in records for row in expected_item_rows(r)]


def test_unicode_config_name_keeps_file_names_safe(client, store):
    execution_id = record_every_type(store, config_name='日本語 "quoted"; filename=evil.exe')
    for fmt, exporter in EXPORTERS.items():
        response = client.get(f"/api/runs/{execution_id}/export/{fmt}")
        assert response.headers["Content-Disposition"] == f'attachment; filename="{execution_id}{exporter.extension}"'
        response = client.get(f"/api/runs/export/{fmt}?config=日本語 \"quoted\"; filename=evil.exe")
        assert re.fullmatch(r'attachment; filename="runs_\d{8}_\d{6}' + re.escape(exporter.extension) + '"',
                            response.headers["Content-Disposition"])


def test_xlsx_over_excels_row_limit_is_refused_before_streaming(client, recorded_runs, monkeypatch):
    monkeypatch.setitem(EXPORTERS, "xlsx", dataclasses.replace(EXPORTERS["xlsx"], max_rows=5))
    body = assert_error(client.get("/api/runs/export/xlsx"), 400, "EXPORT_TOO_LARGE")
    assert body["runs"] == len(recorded_runs) and body["item_rows"] > 5 and body["max_rows"] == 5
    assert "csv" in body["hint"] and "jsonl" in body["hint"]
    assert client.get("/api/runs/export/xlsx?limit=1&config=dada").status_code == 200


def test_error_after_the_first_byte_is_logged_and_raised(client, recorded_runs, monkeypatch, caplog):
    def broken(records, **options):
        yield b"execution_id\r\n"
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(EXPORTERS, "csv", dataclasses.replace(EXPORTERS["csv"], write=broken, options=()))
    response = client.get("/api/runs/export/csv", headers={"X-Request-ID": "cut-me"}, buffered=False)
    assert response.status_code == 200
    with pytest.raises(RuntimeError):
        response.get_data()
    assert "cut-me" in caplog.text and "cut off" in caplog.text


# ---------------------------------------------------------------- contract table


@pytest.mark.parametrize("name, canonical", [("json", "json"), ("JSON", "json"), ("jsonl", "jsonl"),
                                             ("csv", "csv"), ("Csv", "csv"), ("xml", "xml"),
                                             ("xlsx", "xlsx"), ("excel", "xlsx"), ("EXCEL", "xlsx"),
                                             ("zip", "zip"), ("ZIP", "zip")])
@pytest.mark.parametrize("bulk", [False, True])
def test_formats_headers(client, recorded_runs, name, canonical, bulk):
    url = f"/api/runs/export/{name}" if bulk else f"/api/runs/{recorded_runs[0]}/export/{name}"
    response = client.get(url)
    exporter = EXPORTERS[canonical]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == exporter.mimetype
    if canonical not in ("xlsx", "zip"):  # binary formats have no charset
        assert "charset=utf-8" in response.headers["Content-Type"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=") and disposition.endswith(f'{exporter.extension}"')
    assert ("X-Total-Count" in response.headers) is bulk
    assert get_exporter(name) is exporter


@pytest.mark.parametrize("name, label", [("pdf", "PDF"), ("docx", "DOCX"), ("PDF", "PDF")])
@pytest.mark.parametrize("bulk", [False, True])
def test_planned_formats_are_501(client, recorded_runs, name, label, bulk):
    url = f"/api/runs/export/{name}" if bulk else f"/api/runs/{recorded_runs[0]}/export/{name}"
    body = assert_error(client.get(url), 501, "FORMAT_NOT_IMPLEMENTED")
    assert {k: v for k, v in body.items() if k != "request_id"} == {
        "error": f"{label} export not yet implemented", "code": "FORMAT_NOT_IMPLEMENTED", "status": "planned",
        "details": "This format will be available in a future release"}


@pytest.mark.parametrize("name", ["txt", "xls", "exe", "json5", "%2e%2e"])
@pytest.mark.parametrize("bulk", [False, True])
def test_unknown_formats_are_400(client, recorded_runs, name, bulk):
    url = f"/api/runs/export/{name}" if bulk else f"/api/runs/{recorded_runs[0]}/export/{name}"
    body = assert_error(client.get(url), 400, "INVALID_FORMAT")
    assert body["error"] == "Invalid export format"
    assert body["supported_formats"] == ["json", "jsonl", "csv", "xml", "xlsx", "zip", "pdf", "docx"]
    assert body["available_now"] == ["json", "jsonl", "csv", "xml", "xlsx", "zip"]


@pytest.mark.parametrize("url, status, code", [
    ("/api/runs/exec_20990101_000000_00000000/export/csv", 404, "NOT_FOUND"),
    ("/api/runs/exec_../export/csv", 404, "NOT_FOUND"),
    ("/api/runs/export/csv?shape=cells", 400, "INVALID_PARAMETER"),
    ("/api/runs/export/csv?bom=maybe", 400, "INVALID_PARAMETER"),
    ("/api/runs/export/json?bom=true", 400, "UNKNOWN_PARAMETER"),
    ("/api/runs/export/csv?limit=0", 400, "INVALID_PARAMETER"),
    ("/api/runs/export/csv?date=2025-13-45", 400, "INVALID_PARAMETER"),
    ("/api/runs/export/csv?password=x", 400, "UNKNOWN_PARAMETER"),
    ("/api/runs/export/csv", 405, "METHOD_NOT_ALLOWED"),
])
def test_export_errors(client, recorded_runs, url, status, code):
    response = client.post(url) if status == 405 else client.get(url)
    assert_error(response, status, code)


def test_xsd_is_served(client):
    response = client.get("/api/schema/execution_record.xsd")
    assert response.status_code == 200 and etree.XMLSchema(etree.fromstring(response.get_data()))
