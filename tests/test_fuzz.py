"""Fuzzing: schemathesis against the app's own OpenAPI spec (over a folder holding hostile
records and special files, its strings also carrying noncharacters); hypothesis on the
exporters and on folders of special files."""
import csv
import datetime as dt
import io
import json
import signal
import tempfile
import zipfile
from pathlib import Path

import openpyxl
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from app import create_app
from app.auth import TokenStore
from examples.sample_pipeline import iter_sample_runs
from execution_history import RunStore
from execution_history.exporters import EXPORTERS
from execution_history.exporters.cells import ITEM_COLUMNS, iter_item_rows
from execution_history.exporters.xlsx_writer import excel_text
from execution_history.exporters.xml_writer import read_records, xsd_bytes
from execution_history.records import check_record
from execution_history.taxonomy import TAXONOMY

from .hostile_records import NONCHARACTERS, SPECIAL_KINDS, make_special_file, make_special_files, write_hostile_runs

XSD = etree.XMLSchema(etree.fromstring(xsd_bytes()))
csv.field_size_limit(2**31 - 1)  # Python's reader stops at 128 KB a field by default; our cells may be longer


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """The spec of an app with access control on (so its security scheme is exercised too)."""
    root = tmp_path_factory.mktemp("fuzz")
    list(iter_sample_runs(6, RunStore(root / "runs"), now=dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc)))
    write_hostile_runs(root / "runs", 8)   # noncharacters, controls, lone surrogates in the records
    make_special_files(root / "runs")      # FIFOs, sockets, symlinks... named like records
    token = TokenStore(root / "tokens.json").create("fuzzer", "admin")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(root / "runs"),
                      "RUN_HISTORY_TOKENS": str(root / "tokens.json")})
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app,
                                            headers={"Authorization": f"Bearer {token}"})
    schema.token = token
    return schema


def test_api_never_fails_and_matches_its_spec(api_schema):
    """Every operation, bounded examples: no 500, every response as the spec says; then again
    with a noncharacter added to one of each case's string parameters (a uniform draw rarely
    makes one).

    (Driven by hand: schemathesis' pytest plugin does not load under pytest 9.)
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 22  # 13 + delete, media file, thumbnail, 5 export-job operations, health
    for operation in operations:
        for hostile in (False, True):
            @given(case=operation.as_strategy(), data=st.data())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case, data):
                excluded = [not_a_server_error]
                if hostile:  # a noncharacter may make a valid value invalid: a JSON 400 then, as the spec says
                    add_a_noncharacter(case, data)
                    excluded.append(positive_data_acceptance)
                case.call_and_validate(headers={"Authorization": f"Bearer {api_schema.token}"},
                                       excluded_checks=excluded, additional_checks=[no_500])

            check()


def add_a_noncharacter(case, data):
    """A noncharacter put into one of the case's string query or path parameters, if it has any."""
    places = [(part, key) for part in ("query", "path_parameters") for key, value in (getattr(case, part) or {}).items()
              if isinstance(value, str)]
    if places:
        part, key = data.draw(st.sampled_from(places))
        value = getattr(case, part)[key]
        at = data.draw(st.integers(0, len(value)))
        getattr(case, part)[key] = value[:at] + data.draw(st.sampled_from(NONCHARACTERS)) + value[at:]


def no_500(ctx, response, case):
    """Like schemathesis' server-error check, but 501 for a planned format is the contract."""
    assert response.status_code < 500 or response.status_code == 501, f"{response.status_code} for {case.path}"


# ---------------------------------------------------------------- exporters

# Any text a record can hold: every code point but lone surrogates (the tracker replaces them).
# Noncharacters are drawn explicitly: a uniform draw over 1.1 million code points rarely
# hits one of the 66, and they break formats (U+FFFE/U+FFFF are not XML 1.0 characters).
TEXT = st.one_of(st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(NONCHARACTERS)),
                         max_size=60),
                 # long texts (past Excel's cell limit), built by repetition to stay cheap to generate
                 st.builds(lambda unit, times: unit * times,
                           st.text(st.sampled_from("a🌸\x00\x0b\r\n=\"'\ufffe\U0010ffff"), min_size=1, max_size=8),
                           st.integers(2_000, 6_000)))
NUMBER = st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                                     st.floats(allow_nan=False, allow_infinity=False), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
TIMESTAMPS = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                          timezones=st.just(dt.timezone.utc)).map(lambda d: d.isoformat())


@st.composite
def records(draw):
    items = []
    for n in range(1, draw(st.integers(0, 4)) + 1):
        items.append({
            "sequence_number": n, "stage": draw(st.integers(0, 4)),
            "stage_iteration": draw(st.one_of(st.none(), st.integers(1, 9))),
            "loop_iteration": draw(st.one_of(st.none(), st.integers(1, 9))),
            "item_type": draw(st.sampled_from(sorted(TAXONOMY))), "timestamp": draw(TIMESTAMPS),
            "content": draw(st.one_of(st.none(), TEXT)), "file_path": draw(st.one_of(st.none(), TEXT)),
            "model_used": draw(st.one_of(st.none(), TEXT)), "backend_used": draw(st.one_of(st.none(), TEXT)),
            "media_type": draw(st.one_of(st.none(), TEXT)), "config_used": draw(st.one_of(st.none(), TEXT)),
            "execution_time": draw(st.one_of(st.none(), st.floats(0, 1e6))),
            "metadata": draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3)),
            **draw(st.one_of(st.just({}), st.fixed_dictionaries({"backend_type": TEXT}))),  # an older file's key
        })
    return check_record({
        "execution_id": "exec_20251103_205239_896e054c", "config_name": draw(TEXT), "timestamp": draw(TIMESTAMPS),
        "finished_at": draw(st.one_of(st.none(), TIMESTAMPS)),
        "status": draw(st.sampled_from(["completed", "blocked", "failed", "interrupted"])),
        "execution_mode": draw(st.one_of(st.none(), TEXT)), "safety_level": draw(st.one_of(st.none(), TEXT)),
        "user_id": draw(TEXT), "session_id": draw(TEXT), "total_execution_time": draw(NUMBER),
        "taxonomy_version": "1.0", "items": items,
        # only older files have a seed (orjson, which writes JSON exports, takes 64-bit integers)
        **draw(st.one_of(st.just({}), st.fixed_dictionaries(
            {"used_seed": st.one_of(st.none(), st.integers(-2**63 + 1, 2**64 - 1))})))})


def unneutralize(value):
    return value[1:] if value.startswith("'") else value


def csv_text(value):
    return "" if value is None else str(value)


def excel_value(name, value):
    if isinstance(value, str):
        if "timestamp" in name:
            return dt.datetime.fromisoformat(value).replace(tzinfo=None)
        return excel_text(value) or None  # an empty string is an empty cell
    return value


@given(record=records())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_record_survives_every_format(record):
    outputs = {fmt: b"".join(exporter.write([record], bulk=True)) for fmt, exporter in EXPORTERS.items()}
    assert json.loads(outputs["json"]) == [record]
    archive = zipfile.ZipFile(io.BytesIO(outputs["zip"]))
    assert archive.testzip() is None
    assert [json.loads(archive.read(run["record"]["path"])) for run in json.loads(archive.read("manifest.json"))["runs"]] \
        == [record]
    assert [json.loads(line) for line in outputs["jsonl"].splitlines()] == [record]
    document = etree.fromstring(outputs["xml"], parser=etree.XMLParser(huge_tree=True))
    XSD.assertValid(document)
    assert read_records(outputs["xml"]) == [record]
    rows = list(csv.DictReader(io.StringIO(outputs["csv"].decode("utf-8"), newline="")))
    assert len(rows) == 1
    assert {k: unneutralize(v) for k, v in rows[0].items()} == {
        k: csv_text(len(record["items"]) if k == "items_count" else record[k]) for k in rows[0]}
    items_csv = b"".join(EXPORTERS["csv"].write([record], bulk=True, shape="items"))
    expected = [[csv_text(v) for v in row] for row in iter_item_rows(record)]
    got = list(csv.reader(io.StringIO(items_csv.decode("utf-8"), newline="")))[1:]
    assert [[unneutralize(v) for v in row] for row in got] == expected
    sheet = openpyxl.load_workbook(io.BytesIO(outputs["xlsx"]))["Items"]
    sheet_rows, record_rows = list(sheet.iter_rows(min_row=2, values_only=True)), list(iter_item_rows(record))
    assert len(sheet_rows) == len(record_rows)
    for values, row in zip(sheet_rows, record_rows):
        for got_value, name, value in zip(values, ITEM_COLUMNS, row):
            wanted = excel_value(name, value)
            if isinstance(wanted, dt.datetime):  # Excel keeps times to the millisecond
                assert abs(got_value - wanted) < dt.timedelta(milliseconds=1)
            elif isinstance(wanted, float):  # and numbers to 15 significant digits
                assert got_value == pytest.approx(wanted, rel=1e-14), name
            else:
                assert got_value == wanted, name


# ---------------------------------------------------------------- special files

class Hung(BaseException):
    """Not an OSError, so no ``except OSError`` on the way swallows it."""


@given(kinds=st.lists(st.sampled_from(SPECIAL_KINDS), max_size=6), regular=st.integers(0, 3),
       fresh_index=st.booleans())
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_mix_of_special_files_is_counted_and_never_opened(kinds, regular, fresh_index):
    """Regular records among special files named like records (made before the index or after
    it was built): list, stats, GET by id and a bulk export agree, and nothing blocks."""
    def fail(signum, frame):
        raise Hung("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, 20, 1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(tmp) / "runs"
            runs.mkdir()
            ids = sorted(write_hostile_runs(runs, regular, seed=3)) if regular else []
            app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs)})
            client = app.test_client()
            if not fresh_index:
                assert client.get("/api/runs/stats").get_json()["total_records"] == len(ids)
            special = [f"exec_20250102_00000{n}_0000cafe" for n, kind in enumerate(kinds)
                       if make_special_file(runs / f"exec_20250102_00000{n}_0000cafe.json", kind)]
            stats = client.get("/api/runs/stats").get_json()
            assert (stats["total_records"], stats["unreadable_records"]) == (len(ids), len(special))
            listed = client.get("/api/runs?limit=100").get_json()
            assert sorted(r["execution_id"] for r in listed["executions"]) == ids
            for execution_id in special:
                assert client.get(f"/api/runs/{execution_id}").status_code == 404
            export = client.get("/api/runs/export/jsonl")
            assert export.status_code == 200
            assert sorted(json.loads(line)["execution_id"] for line in export.get_data().splitlines()) == ids
            assert int(export.headers["X-Total-Count"]) == len(ids)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
