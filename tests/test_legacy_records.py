"""Record files of the earlier tracker (API.md 1b, tests/legacy/) are records like any other.

The fixtures are written from API.md 1b: naive Europe/Berlin timestamps (one run across
the DST change of 2026-03-29), ``backend_used`` (November) and ``backend_type``
(December on), every item type of taxonomy 1.1, stage 5, ``used_seed``, unknown extra
fields, a blocked, a failed and a never-completed run, and a lone surrogate escape.
"""
import copy
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import lxml.html
import pytest

from app import create_app
from execution_history import records
from execution_history.exporters.cells import ITEM_COLUMNS
from execution_history.index import RunIndex, read_chunk

from .conftest import PROJECT, LiveServer, app_config, free_port, store_for
from .test_exports import PARSERS, expected_item_rows, expected_run_row, unneutralize

LEGACY = Path(__file__).parent / "legacy"
BERLIN = ZoneInfo("Europe/Berlin")
COMPLETED, BLOCKED = "exec_20251103_205239_896e054c", "exec_20251215_101500_1a2b3c4d"
FAILED, NEVER_DONE = "exec_20260329_003000_aabbccdd", "exec_20251120_080000_deadbeef"
#: Worked out by hand from API.md 1b: (status, finished_at) of each file.
INFERRED = {
    COMPLETED: ("completed", "2025-11-03T20:52:49.200000+00:00"),   # 21:52:39 CET + 10.2 s
    BLOCKED: ("blocked", "2025-12-15T10:15:01.300000+00:00"),       # 11:15:00 CET + 1.3 s
    FAILED: ("failed", "2026-03-29T01:00:30+00:00"),                # 01:30 CET + 1830 s, across the DST change
    NEVER_DONE: ("interrupted", None),                              # no total_execution_time
}


def as_utc(naive: str) -> str:
    return dt.datetime.fromisoformat(naive).replace(tzinfo=BERLIN).astimezone(dt.timezone.utc).isoformat()


def expected_record(execution_id: str) -> dict:
    """The file upgraded by the rules of API.md 1b (an implementation apart from records.py)."""
    raw = json.loads((LEGACY / f"{execution_id}.json").read_text(encoding="utf-8"))
    record = copy.deepcopy(raw)
    record["status"], record["finished_at"] = INFERRED[execution_id]
    record["timestamp"] = as_utc(raw["timestamp"])
    record["taxonomy_version"] = "1.0"
    record.setdefault("total_execution_time", None)
    for item in record["items"]:
        item["timestamp"] = as_utc(item["timestamp"])
        if "backend_type" in item:
            item["backend_used"] = item["backend_type"]  # and the original key stays
        if item["content"]:
            item["content"] = item["content"].replace("\ud83d", "\ufffd")
    return record


EXPECTED_IDS = [COMPLETED, BLOCKED, FAILED, NEVER_DONE]


def fingerprints(folder: Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.glob("exec_*.json")) if p.is_file() and not p.is_symlink()}  # a FIFO blocks


@pytest.fixture
def legacy_dir(runs_dir):
    for path in LEGACY.glob("exec_*.json"):
        shutil.copy2(path, runs_dir / path.name)
    return runs_dir


@pytest.fixture
def berlin_app(legacy_dir):
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(legacy_dir),
                      "RUN_HISTORY_NAIVE_TIMEZONE": "Europe/Berlin"})
    yield app
    records.set_naive_timezone("UTC")  # a process-wide setting: leave it as the other tests expect


@pytest.fixture
def berlin(berlin_app):
    return berlin_app.test_client()


def test_the_fixtures_are_what_api_md_1b_describes():
    raw = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in LEGACY.glob("exec_*.json")}
    assert sorted(raw) == sorted(EXPECTED_IDS)
    assert all("status" not in r and "finished_at" not in r and "taxonomy_version" not in r for r in raw.values())
    items = [i for r in raw.values() for i in r["items"]]
    assert {"stage1_safety_check_image", "output_music", "output_3d", "stage_transition"} <= \
        {i["item_type"] for i in items}
    assert any(i["stage"] == 5 and i["item_type"] == "pipeline_complete" for i in items)
    assert {"backend_used", "backend_type"} <= {key for i in items for key in i}
    assert "\\ud83d" in (LEGACY / f"{NEVER_DONE}.json").read_text(encoding="utf-8")


def test_older_files_are_served_as_upgraded_records(berlin):
    for execution_id in EXPECTED_IDS:
        response = berlin.get(f"/api/runs/{execution_id}")
        assert response.status_code == 200
        assert response.get_json() == expected_record(execution_id)
    listing = berlin.get("/api/runs?order=asc").get_json()
    assert [(r["execution_id"], r["status"], r["timestamp"], r["items_count"], r["taxonomy_version"])
            for r in listing["executions"]] == [
        (i, INFERRED[i][0], expected_record(i)["timestamp"], len(expected_record(i)["items"]), "1.0")
        for i in sorted(EXPECTED_IDS)]


def test_the_dst_run_is_converted_on_both_sides_of_the_change(berlin):
    record = berlin.get(f"/api/runs/{FAILED}").get_json()
    assert record["timestamp"] == "2026-03-29T00:30:00+00:00"
    assert [i["timestamp"] for i in record["items"]] == [
        "2026-03-29T00:30:00+00:00", "2026-03-29T00:30:00.500000+00:00",
        "2026-03-29T00:59:30+00:00", "2026-03-29T01:00:30+00:00"]  # 01:59:30 CET, then 03:00:30 CEST


def test_a_lone_surrogate_escape_is_read_as_the_replacement_character(berlin):
    record = berlin.get(f"/api/runs/{NEVER_DONE}").get_json()
    assert record["items"][0]["content"] == "Ein Haiku über \ufffd den Mond"


def test_naive_timestamps_are_utc_by_default(client, legacy_dir):
    record = client.get(f"/api/runs/{COMPLETED}").get_json()
    assert record["timestamp"] == "2025-11-03T21:52:39+00:00"
    assert record["finished_at"] == "2025-11-03T21:52:49.200000+00:00"


@pytest.mark.parametrize("query, expected", [
    ("config=stillepost", {COMPLETED}),
    ("status=completed", {COMPLETED}), ("status=blocked", {BLOCKED}),
    ("status=failed", {FAILED}), ("status=interrupted", {NEVER_DONE}),
    ("date=2026-03-29", {FAILED}), ("date=2025-11-03", {COMPLETED}),
    # the bounds are UTC: read as UTC, the naive Berlin times would be an hour later
    ("date_from=2026-03-29T00:30:00Z&date_to=2026-03-29T00:30:00Z", {FAILED}),
    ("date_from=2025-11-03T20:52:39&date_to=2025-11-03T20:52:39", {COMPLETED}),
    ("date_from=2025-11-03T20:52:40", {BLOCKED, FAILED, NEVER_DONE}),
    ("date_to=2025-12-15T10:14:59%2B00:00", {COMPLETED, NEVER_DONE}),
    ("item_type=output_music", {COMPLETED}), ("item_type=output_3d", {COMPLETED}),
    ("item_type=stage1_safety_check_image", {BLOCKED}), ("item_type=stage_transition", {COMPLETED}),
    ("item_type=pipeline_error", {FAILED}),
    ("model=llava:13b", {BLOCKED}), ("model=mistral-nemo", {FAILED}), ("model=ace-step", {COMPLETED}),
    ("q=zerfließen", {FAILED}), ("q=mondlicht", {NEVER_DONE}), ("q=%22Blüte+im+Gras%22", {COMPLETED}),
    ("q=gewalt", {BLOCKED}), ("q=uhren&status=failed", {FAILED}),
])
def test_older_files_are_filtered_and_searched(berlin, query, expected):
    body = berlin.get(f"/api/runs?{query}").get_json()
    assert {r["execution_id"] for r in body["executions"]} == expected and body["total"] == len(expected)


def test_stats_count_older_files_as_records(berlin):
    stats = berlin.get("/api/runs/stats").get_json()
    assert stats["total_records"] == 4 and stats["unreadable_records"] == 0
    assert stats["by_status"] == {"completed": 1, "blocked": 1, "failed": 1, "interrupted": 1}
    assert stats["by_config"] == {"stillepost": 1, "image_from_text": 1, "dada": 1, "haiku": 1}
    assert (stats["first_timestamp"], stats["last_timestamp"]) == \
        ("2025-11-03T20:52:39+00:00", "2026-03-29T00:30:00+00:00")


def test_pages_show_older_files(berlin):
    page = lxml.html.fromstring(berlin.get("/").get_data(as_text=True))
    linked = {href.rsplit("/", 1)[-1] for href in page.xpath("//a/@href") if href.startswith("/runs/exec_")}
    assert linked == set(EXPECTED_IDS)
    for execution_id in EXPECTED_IDS:
        response = berlin.get(f"/runs/{execution_id}")
        assert response.status_code == 200
        page = lxml.html.fromstring(response.get_data(as_text=True))
        for item in expected_record(execution_id)["items"]:
            (element,) = page.xpath(f"//li[@id='item-{item['sequence_number']}']")
            assert element.xpath(".//*[@class='type']")[0].text_content() == item["item_type"].replace("_", " ")
            assert element.xpath(".//time/@datetime") == [item["timestamp"]]
            assert not item["content"] or item["content"] in element.text_content()


def export(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_data()


def check_xlsx(data, expected):
    """Every cell of the Items sheet equals the item row of the expected records (times as UTC datetimes)."""
    book = PARSERS["xlsx"](data, True)
    rows = [dict(zip(ITEM_COLUMNS, row)) for row in book["Items"].iter_rows(min_row=2, values_only=True)]
    wanted = [row for record in expected for row in expected_item_rows(record)]
    for got, want in zip(rows, wanted, strict=True):
        for name in ITEM_COLUMNS:
            if name in ("run_timestamp", "item_timestamp"):
                utc = dt.datetime.fromisoformat(want[name]).astimezone(dt.timezone.utc).replace(tzinfo=None)
                assert abs(got[name] - utc) < dt.timedelta(milliseconds=1), name
            elif isinstance(got[name], (int, float)):  # native numbers (Excel shows 3.0 as 3)
                assert got[name] == float(want[name]), name
            else:
                assert ("" if got[name] is None else got[name]) == want[name], name
    return True


def check_csv(data, expected):
    rows = [{k: unneutralize(v) for k, v in row.items()} for row in PARSERS["csv"](data, True)]
    return rows == [row for record in expected for row in expected_item_rows(record)]


#: Per format: does an export hold exactly *expected* (every field, parsed)? bulk: several records.
CHECKS = {
    "json": lambda data, expected, bulk: PARSERS["json"](data, bulk) == (expected if bulk else expected[0]),
    "jsonl": lambda data, expected, bulk: PARSERS["jsonl"](data, bulk) == expected,
    "xml": lambda data, expected, bulk: PARSERS["xml"](data, bulk) == expected,
    "csv": lambda data, expected, bulk: check_csv(data, expected),
    "xlsx": lambda data, expected, bulk: check_xlsx(data, expected),
}


@pytest.mark.parametrize("fmt", sorted(CHECKS))
def test_older_files_are_exported_with_every_field(berlin, fmt):
    shape = "&shape=items" if fmt == "csv" else ""
    expected = [expected_record(i) for i in sorted(EXPECTED_IDS)]
    assert CHECKS[fmt](export(berlin, f"/api/runs/export/{fmt}?order=asc{shape}"), expected, True)
    for record in expected:
        assert CHECKS[fmt](export(berlin, f"/api/runs/{record['execution_id']}/export/{fmt}"), [record], False)


def test_extra_fields_stay_in_json_and_xml_and_csv_has_the_run_columns(berlin):
    record = expected_record(COMPLETED)
    assert record["used_seed"] == 123456 and record["pipeline_version"] == "2.3"
    assert record["items"][5]["token_count"] == 42
    exported = PARSERS["xml"](export(berlin, f"/api/runs/{COMPLETED}/export/xml"), False)[0]
    assert (exported["used_seed"], exported["pipeline_version"], exported["items"][5]["token_count"]) == \
        (123456, "2.3", 42)
    assert PARSERS["xml"](export(berlin, f"/api/runs/{BLOCKED}/export/xml"), False)[0]["used_seed"] is None
    runs = PARSERS["csv"](export(berlin, "/api/runs/export/csv?order=asc&shape=runs"), True)
    assert [{k: unneutralize(v) for k, v in row.items()} for row in runs] == \
        [expected_run_row(expected_record(i)) for i in sorted(EXPECTED_IDS)]


def test_reading_never_rewrites_a_file(berlin_app, legacy_dir):
    before = fingerprints(legacy_dir)
    assert len(before) == 4
    client = berlin_app.test_client()
    urls = ["/api/runs", "/api/runs/stats", "/", "/stats", "/api/runs?q=uhren", "/api/runs/export/json",
            "/api/runs/export/jsonl", "/api/runs/export/csv", "/api/runs/export/xml", "/api/runs/export/xlsx"]
    for execution_id in EXPECTED_IDS:
        urls += [f"/api/runs/{execution_id}", f"/runs/{execution_id}",
                 *(f"/api/runs/{execution_id}/export/{fmt}" for fmt in CHECKS)]
    for url in urls:
        assert client.get(url).status_code == 200, url
    RunIndex(berlin_app.extensions["run_history"]["store"]).rebuild()
    assert fingerprints(legacy_dir) == before
    assert {p.name: p.read_bytes() for p in legacy_dir.glob("exec_*.json")} == \
        {p.name: p.read_bytes() for p in LEGACY.glob("exec_*.json")}


def test_an_unknown_time_zone_stops_the_app(runs_dir):
    for name in ("Mars/Olympus_Mons", "../../etc/passwd", "", "Europe/Berlin\x00", "/etc/localtime"):
        with pytest.raises(ValueError, match="RUN_HISTORY_NAIVE_TIMEZONE"):
            create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_NAIVE_TIMEZONE": name})


def test_index_worker_processes_read_in_the_apps_zone(legacy_dir, monkeypatch, caplog):
    import execution_history.index as index_module

    ids = sorted(EXPECTED_IDS)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        parsed = dict(pool.submit(read_chunk, str(legacy_dir), ids, "Europe/Berlin").result())
    assert [parsed[i].summary[2] for i in ids] == [expected_record(i)["timestamp"] for i in ids]
    records.set_naive_timezone("Europe/Berlin")  # as create_app does
    try:
        monkeypatch.setattr(index_module.sync, "PARALLEL_MIN", 2)
        monkeypatch.setattr(index_module.sync, "CHUNK", 1)
        chunks = list(index_module.iter_parsed(index_module.RunStore(legacy_dir), ids))
    finally:
        records.set_naive_timezone("UTC")
    assert "worker processes failed" not in caplog.text  # the pool did the parsing, not the fallback
    assert [run.summary[2] for chunk in chunks for _, run in chunk] == [expected_record(i)["timestamp"] for i in ids]


def test_gunicorn_serves_older_files_in_the_configured_zone(legacy_dir, tmp_path):
    server = LiveServer(legacy_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_NAIVE_TIMEZONE": "Europe/Berlin"})
    try:
        with urllib.request.urlopen(f"{server.url}/api/runs/{FAILED}") as response:
            assert json.loads(response.read()) == expected_record(FAILED)
        with urllib.request.urlopen(f"{server.url}/api/runs/export/jsonl?item_type=output_music") as response:
            assert [json.loads(line) for line in response.read().splitlines()] == [expected_record(COMPLETED)]
    finally:
        server.stop()


def test_gunicorn_refuses_to_start_with_an_unknown_zone(legacy_dir):
    env = {**os.environ, "RUN_HISTORY_DIR": str(legacy_dir), "RUN_HISTORY_NAIVE_TIMEZONE": "Mars/Olympus_Mons"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(PROJECT / "gunicorn.conf.py"),
                             "--bind", f"127.0.0.1:{free_port()}", "wsgi:app"],
                            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "RUN_HISTORY_NAIVE_TIMEZONE: unknown time zone 'Mars/Olympus_Mons'" in result.stdout + result.stderr


def test_openapi_documents_the_older_fields(client):
    schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    assert {"media_type", "config_used", "backend_used"} <= set(schemas["RunItem"]["properties"])
    assert "used_seed" in schemas["RunRecord"]["properties"]
    assert schemas["RunItem"]["properties"]["stage"]["maximum"] == 5


# ---------------------------------------------------------------- runs import


def run_import(app, source):
    result = app.test_cli_runner().invoke(args=["runs", "import", str(source)])
    return result.exit_code, result.output.splitlines()


@pytest.mark.parametrize("store_kind", ["local", "s3"], indirect=True)
def test_import_copies_the_original_bytes_and_reports_every_file(tmp_path, runs_dir, store_kind):
    store = store_for(store_kind, runs_dir)
    source = tmp_path / "executions"
    shutil.copytree(LEGACY, source)
    (source / "exec_20250101_000000_0000dead.json").write_text('{"execution_id": "exec_2025')
    (source / "notes\x1b[2J.json").write_text("{}")
    (source / "README.txt").write_text("not a record")
    (source / ".hidden.json").write_text("{}")
    os.mkfifo(source / "exec_20250101_000000_00000001.json")  # reading it would block
    (source / "exec_20250101_000000_00000002.json").symlink_to(LEGACY / f"{FAILED}.json")
    app = create_app(app_config(store))
    before = fingerprints(source)
    code, lines = run_import(app, source)
    assert code == 1  # an unreadable file
    assert lines == [
        "unreadable: exec_20250101_000000_00000001.json (not a regular file)",
        "unreadable: exec_20250101_000000_00000002.json (not a regular file)",
        "unreadable: exec_20250101_000000_0000dead.json (not JSON: JSONDecodeError)",
        *(f"copied: {i}.json" for i in sorted(EXPECTED_IDS)),
        "unreadable: notes\\x1b[2J.json (the file name is no execution id, exec_YYYYMMDD_HHMMSS_<8 hex>.json)",
        f"8 file(s) from {source}: 4 copied, 0 already there, 4 unreadable.",
    ]
    assert {i: store.read_bytes(i) for i in store.list_ids()} == \
        {p.name[:-len(".json")]: p.read_bytes() for p in LEGACY.glob("exec_*.json")}
    assert fingerprints(source) == before
    assert {r["execution_id"] for r in app.test_client().get("/api/runs").get_json()["executions"]} == \
        set(EXPECTED_IDS)


@pytest.mark.parametrize("store_kind", ["local", "s3"], indirect=True)
def test_import_never_overwrites(tmp_path, runs_dir, store_kind):
    store = store_for(store_kind, runs_dir)
    source = tmp_path / "pipeline_runs_old"
    shutil.copytree(LEGACY, source)
    app = create_app(app_config(store))
    assert run_import(app, source)[0] == 0
    changed = source / f"{FAILED}.json"
    changed.write_text(changed.read_text(encoding="utf-8").replace("dada", "bauhaus"), encoding="utf-8")
    stored = store.read_bytes(FAILED)
    code, lines = run_import(app, source)
    assert code == 0
    assert sorted(lines[:-1]) == sorted(
        [f"already there: {i}.json" for i in sorted(EXPECTED_IDS) if i != FAILED]
        + [f"already there: {FAILED}.json (the stored file differs; kept as it is)"])
    assert lines[-1] == f"4 file(s) from {source}: 0 copied, 4 already there, 0 unreadable."
    assert store.read_bytes(FAILED) == stored


def test_import_refuses_what_is_no_folder(tmp_path, runs_dir):
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir)})
    code, _ = run_import(app, tmp_path / "missing")
    assert code == 2
