"""Pseudonymized exports: every format, single and bulk and through links, through gunicorn."""
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import urllib.error
import urllib.request
import zipfile
from urllib.parse import urlsplit

import openpyxl
import pytest

from app import create_app
from app.auth import TokenStore
from execution_history import RunStore
from execution_history.exporters import EXPORTERS
from execution_history.pseudonyms import pseudonym, pseudonymize_fields

from .conftest import LiveServer, audit_events
from .test_exports import PARSERS
from .test_lifecycle import record_run

SECRET = "pseudonym-test-key-0123456789"
PEOPLE = {"alice-7f3": ["workshop-s1", "workshop-s2"], "bob-c41": ["bob-session-9"]}
ORIGINALS = {*PEOPLE, *(s for sessions in PEOPLE.values() for s in sessions)}


def expected(value, prefix):
    """The contract's pseudonym, computed here independently of the code under test."""
    return prefix + hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudonyms")
    store = RunStore(root / "runs")
    start = dt.datetime(2025, 11, 3, 9, tzinfo=dt.timezone.utc)
    runs = {}
    for n, (user, session) in enumerate((u, s) for u, sessions in PEOPLE.items() for s in sessions):
        runs[session] = record_run(store, "dada", start + dt.timedelta(hours=n), user=user, session=session,
                                   text=f"the flower of run {n}")
    token = TokenStore(root / "tokens.json").create("root", "admin")
    server = LiveServer(store.root, root / "gunicorn.log", extra_env={
        "RUN_HISTORY_SECRET_KEY": SECRET, "RUN_HISTORY_TOKENS": str(root / "tokens.json"),
        "RUN_HISTORY_AUDIT_LOG": str(root / "audit.log")})
    yield {"server": server, "runs": runs, "token": token, "audit": root / "audit.log", "store": store}
    server.stop()


def fetch(site, path, token=True):
    headers = {"Authorization": f"Bearer {site['token']}"} if token else {}
    request = urllib.request.Request(site["server"].url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers, response.read()


def strings(value):
    """Every text value (and key) in a parsed export, whatever its shape."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        try:
            yield from strings(json.loads(value))
        except ValueError:
            yield value.decode("utf-8", "replace")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)
    elif isinstance(value, openpyxl.Workbook):
        for sheet in value.worksheets:
            for row in sheet.iter_rows(values_only=True):
                yield from strings([cell for cell in row if isinstance(cell, str)])
    elif isinstance(value, zipfile.ZipFile):
        for name in value.namelist():
            yield name
            yield from strings(value.read(name))


def identities(fmt, parsed):
    """(user_id, session_id) of every run or row, for the formats whose shape is known here."""
    if fmt in ("json", "jsonl", "xml"):
        records = parsed if isinstance(parsed, list) else [parsed]
        return {(r["user_id"], r["session_id"]) for r in records}
    if fmt == "csv":
        return {(row["user_id"], row["session_id"]) for row in parsed}
    if fmt == "xlsx":
        pairs = set()
        for name in ("Runs", "Items"):
            rows = list(parsed[name].iter_rows(values_only=True))
            header = list(rows[0])
            pairs |= {(row[header.index("user_id")], row[header.index("session_id")]) for row in rows[1:]}
        return pairs
    return None  # a format added later (zip): the scan for original ids still covers it


def check_pseudonymized(fmt, data, bulk, sessions):
    parsed = PARSERS[fmt](data, bulk)
    leaked = [s for s in strings(parsed) if any(original in s for original in ORIGINALS)]
    assert leaked == []
    found = identities(fmt, parsed)
    if found is not None:
        assert found == {(expected(user, "u_"), expected(s, "s_")) for user, s in sessions}


def all_sessions():
    return {(u, s) for u, sessions in PEOPLE.items() for s in sessions}


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_every_format_single_bulk_and_link_carries_no_original_id(site, fmt):
    run = site["runs"]["workshop-s2"]
    headers, data = fetch(site, f"/api/runs/{run}/export/{fmt}?pseudonymize=true")
    assert headers["Content-Disposition"] == f'attachment; filename="{run}_pseudonymized{EXPORTERS[fmt].extension}"'
    check_pseudonymized(fmt, data, False, {("alice-7f3", "workshop-s2")})

    headers, data = fetch(site, f"/api/runs/export/{fmt}?pseudonymize=true")
    assert re.fullmatch(rf'attachment; filename="runs_\d{{8}}_\d{{6}}_pseudonymized\{EXPORTERS[fmt].extension}"',
                        headers["Content-Disposition"])
    check_pseudonymized(fmt, data, True, all_sessions())

    for path, bulk, sessions in [(f"/api/runs/{run}/export/{fmt}/link?pseudonymize=true", False,
                                  {("alice-7f3", "workshop-s2")}),
                                 (f"/api/runs/export/{fmt}/link?pseudonymize=true&user_id=bob-c41", True,
                                  {("bob-c41", "bob-session-9")})]:
        url = json.loads(fetch(site, path)[1])["url"]
        parts = urlsplit(url)
        headers, data = fetch(site, f"{parts.path}?{parts.query}", token=False)
        assert "_pseudonymized" in headers["Content-Disposition"]
        check_pseudonymized(fmt, data, bulk, sessions)


def test_without_the_option_the_ids_are_there(site):
    """The check above is not vacuous: the same exports carry the ids unless asked not to."""
    _, data = fetch(site, "/api/runs/export/jsonl")
    assert {(r["user_id"], r["session_id"]) for r in PARSERS["jsonl"](data, True)} == all_sessions()


def test_the_same_person_has_the_same_pseudonym_across_exports(site):
    _, first = fetch(site, f"/api/runs/{site['runs']['workshop-s1']}/export/json?pseudonymize=true")
    _, second = fetch(site, "/api/runs/export/csv?pseudonymize=true&user_id=alice-7f3&shape=items")
    one = json.loads(first)
    rows = PARSERS["csv"](second, True)
    assert {row["user_id"] for row in rows} == {one["user_id"]} == {expected("alice-7f3", "u_")}
    assert one["session_id"] in {row["session_id"] for row in rows}  # joinable on the session too


def test_the_xlsx_about_sheet_names_filters_by_pseudonym(site):
    _, data = fetch(site, "/api/runs/export/xlsx?pseudonymize=true&user_id=alice-7f3&session_id=workshop-s1")
    about = {row[0]: row[1] for row in openpyxl.load_workbook(io.BytesIO(data))["About"].iter_rows(values_only=True)}
    assert about["filter: user_id"] == expected("alice-7f3", "u_")
    assert about["filter: session_id"] == expected("workshop-s1", "s_")


def test_pseudonymized_exports_are_audited_as_such(site):
    def count(lines, event):
        return sum(line["event"] == event for line in lines)

    before = audit_events(site["audit"])
    fetch(site, f"/api/runs/{site['runs']['workshop-s1']}/export/csv?pseudonymize=true")
    fetch(site, f"/api/runs/{site['runs']['workshop-s1']}/export/csv")
    parts = urlsplit(json.loads(fetch(site, "/api/runs/export/xml/link?pseudonymize=true")[1])["url"])
    fetch(site, f"{parts.path}?{parts.query}", token=False)
    lines = audit_events(site["audit"], until=lambda lines: count(lines, "export") == count(before, "export") + 2
                         and count(lines, "link_used") == count(before, "link_used") + 1)
    last_two = [line for line in lines if line["event"] == "export"][-2:]
    assert [line["pseudonymized"] for line in last_two] == [True, None]
    assert [line for line in lines if line["event"] == "link_used"][-1]["pseudonymized"] is True


def test_bad_values_are_400(site):
    for path in ("/api/runs/export/csv?pseudonymize=maybe", f"/api/runs/{site['runs']['workshop-s1']}/export/xml"
                 "?pseudonymize=2"):
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch(site, path)
        body = json.loads(err.value.read())
        assert (err.value.code, body["code"], body["parameter"]) == (400, "INVALID_PARAMETER", "pseudonymize")


def test_cli_export_pseudonymize(runs_dir, store, tmp_path):
    record_run(store, "dada", dt.datetime(2025, 11, 3, tzinfo=dt.timezone.utc), user="alice-7f3",
               session="workshop-s1")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_SECRET_KEY": SECRET})
    out = tmp_path / "runs.jsonl"
    result = app.test_cli_runner().invoke(args=["runs", "export", "--all", "--format", "jsonl", "--pseudonymize",
                                                "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [(r["user_id"], r["session_id"]) for r in PARSERS["jsonl"](out.read_bytes(), True)] == [
        (expected("alice-7f3", "u_"), expected("workshop-s1", "s_"))]
    [execution_id] = store.list_ids()
    result = app.test_cli_runner().invoke(args=["runs", "export", execution_id, "--format", "json", "--pseudonymize"])
    assert json.loads(result.output)["user_id"] == expected("alice-7f3", "u_")


def test_pseudonyms_depend_on_the_key_and_leave_content_alone():
    record = {"user_id": "alice", "session_id": "s1", "items": [{"content": "alice was here"}]}
    mine = pseudonymize_fields(record, "key-one")
    assert mine == {"user_id": pseudonym("key-one", "alice", "u_"), "session_id": pseudonym("key-one", "s1", "s_"),
                    "items": [{"content": "alice was here"}]}  # free text is not rewritten (documented)
    assert re.fullmatch(r"u_[0-9a-f]{12}", mine["user_id"]) and record["user_id"] == "alice"  # a copy
    assert pseudonymize_fields(record, "key-two")["user_id"] != mine["user_id"]
    assert pseudonymize_fields({"user_id": None, "session_id": None}, "k") == {"user_id": None, "session_id": None}


def test_every_export_operation_documents_the_option(client):
    spec = client.get("/api/openapi.json").get_json()
    exports = {path: ops["get"] for path, ops in spec["paths"].items() if "/export/" in path}
    assert len(exports) == 4 * (1 + sum(1 for e in EXPORTERS.values() if e.options))  # run, bulk, and their links
    for path, operation in exports.items():
        documented = [p for p in operation["parameters"] if p.get("name") == "pseudonymize"]
        assert [(p["in"], p["schema"]) for p in documented] == [("query", {"type": "boolean"})], path


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_export_jobs_pseudonymize_every_format(site, fmt):
    """POST /api/exports with options.pseudonymize: the job's file carries pseudonyms only, and its name says so."""
    from .test_export_jobs import call, wait_for

    token, base = site["token"], site["server"].url
    status, _, data = call(base + "/api/exports", "POST", {"format": fmt, "options": {"pseudonymize": True}},
                           token=token)
    assert status == 202, data
    job = json.loads(data)
    assert job["options"]["pseudonymize"] is True
    done = wait_for(job["status_url"], token=token)[-1]
    assert done["state"] == "done", done
    status, headers, data = call(done["download_url"], token=token)
    assert status == 200
    assert re.fullmatch(rf'attachment; filename="runs_\d{{8}}_\d{{6}}_pseudonymized\{EXPORTERS[fmt].extension}"',
                        headers["Content-Disposition"])
    check_pseudonymized(fmt, data, True, all_sessions())


def test_the_export_job_body_documents_the_option(client):
    spec = client.get("/api/openapi.json").get_json()
    body = spec["paths"]["/api/exports"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    variants = {tuple(v["properties"]["format"]["enum"]): v["properties"]["options"]["properties"]
                for v in body["oneOf"] if v["properties"]["format"]["enum"][0] in EXPORTERS}
    assert len(variants) == len(EXPORTERS)
    assert all(options["pseudonymize"] == {"type": "boolean"} for options in variants.values())
