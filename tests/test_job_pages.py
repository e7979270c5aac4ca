"""The /exports page, the API reference page, the pages' session calls to the jobs API, and the page fixes."""
import re
import time

import lxml.html
import pytest

from app import create_app
from app.auth import TokenStore

from .conftest import assert_error

TIME_TEXT = re.compile(r"\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z")


def html(response):
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return lxml.html.fromstring(response.get_data(as_text=True))


def wait_done(client, job_id, timeout=60.0, **kwargs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/exports/{job_id}", **kwargs).get_json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError("job not done")


def test_a_shared_limit_is_kept_by_the_per_page_box(client, recorded_runs):
    page = html(client.get("/?limit=5"))
    assert len(page.xpath("//table[@class='runs']/tbody/tr")) == 5
    assert page.xpath("//select[@id='limit']/option[@selected]/@value")[0] == "5"
    # Pressing Filter submits the form as it stands: the limit stays 5.
    form = {el.get("name"): el.value for el in page.xpath("//form[@class='filters']//select | //form[@class='filters']//input")}
    again = html(client.get("/", query_string={k: v for k, v in form.items() if v}))
    assert len(again.xpath("//table[@class='runs']/tbody/tr")) == 5


def test_mode_and_safety_level_are_choices_of_the_values_present(client, store, recorded_runs):
    records = list(store.iter_records(store.list_ids()))
    page = html(client.get("/?execution_mode=eco"))
    for name, field in (("execution_mode", "execution_mode"), ("safety_level", "safety_level")):
        options = [o.get("value") for o in page.xpath(f"//select[@id='{name}']/option")]
        assert options == ["", *sorted({r[field] for r in records if r[field] is not None})]
    assert page.xpath("//select[@id='execution_mode']/option[@selected]/@value")[0] == "eco"


def test_times_on_the_run_and_stats_pages_are_formatted_like_the_list(client, recorded_runs):
    run = html(client.get(f"/runs/{recorded_runs[0]}"))
    stats = html(client.get("/stats"))
    times = [t.text_content() for t in run.xpath("//dl[@class='meta']//time") + stats.xpath("//dl[@class='meta']//time")]
    assert len(times) == 4 and all(TIME_TEXT.match(t) for t in times), times


def test_times_with_an_offset_are_shown_in_utc_on_every_page(client, runs_dir):
    """A record written with a +02:00 offset reads as its UTC time, not its local one labelled UTC."""
    from bench.common import make_record
    from execution_history.records import dump_record

    record = make_record(1)
    record["timestamp"] = "2025-06-01T12:00:00.123456+02:00"
    record["finished_at"] = "2025-06-01T12:00:20+02:00"
    record["items"][0]["timestamp"] = "2025-06-01T12:00:01.5+02:00"
    (runs_dir / f"{record['execution_id']}.json").write_bytes(dump_record(record))
    listed = html(client.get("/")).xpath("//table[@class='runs']//time")[0].text_content()
    run = html(client.get(f"/runs/{record['execution_id']}"))
    meta = [t.text_content() for t in run.xpath("//dl[@class='meta']//time")]
    stats = [t.text_content() for t in html(client.get("/stats")).xpath("//dl[@class='meta']//time")]
    assert listed == "2025-06-01 10:00:00" and meta == ["2025-06-01 10:00:00", "2025-06-01 10:00:20"]
    assert stats == ["2025-06-01 10:00:00", "2025-06-01 10:00:00"]
    assert run.xpath("//ol//time | //li//time")[0].text_content() == "10:00:01"


def test_the_api_reference_page_lists_every_operation(client):
    spec = client.get("/api/openapi.json").get_json()
    page = html(client.get("/api-docs"))
    listed = [(s.xpath(".//span[@class='method']")[0].text_content(), s.xpath(".//code[@class='path']")[0].text_content())
              for s in page.xpath("//section[@class='op']")]
    expected = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    assert listed == expected
    post = page.get_element_by_id("op-create_export_job")
    assert "202" in [td.text_content() for td in post.xpath(".//table[@class='responses']//td")]
    nav = html(client.get("/")).xpath("//header[@class='site']//a")
    assert "/api-docs" in [a.get("href") for a in nav if a.text_content() == "API (OpenAPI)"]


def test_the_exports_page_lists_jobs_without_javascript(client, recorded_runs):
    assert html(client.get("/exports")).xpath("//*[@id='no-jobs']")
    done_id = client.post("/api/exports", json={"format": "json"}).get_json()["id"]
    wait_done(client, done_id)
    bad = client.post("/api/exports", json={"format": "csv", "filters": {"config": "none"}}).get_json()["id"]
    wait_done(client, bad)
    page = html(client.get("/exports"))
    rows = page.xpath("//tr[@class='job']")
    assert [r.get("id") for r in rows] == [f"job-{bad}", f"job-{done_id}"]  # newest first
    done_row = rows[1]
    assert done_row.xpath(".//*[@class='job-state']")[0].text_content() == "done"
    assert done_row.xpath(".//a[@class='job-download']")[0].get("href") == f"/api/exports/{done_id}/download"
    assert done_row.xpath(".//*[contains(@class, 'size')]")[0].text_content().strip().endswith("KB")
    assert done_row.xpath(".//time")[0].text_content().endswith("ago")


def test_download_buttons_mark_the_job_formats(client, recorded_runs):
    page = html(client.get("/"))
    marked = {a.get("data-format"): a.get("data-job") for a in page.xpath("//ul[@class='downloads']//a")}
    assert marked["xlsx"] == "xlsx" and marked["zip"] == "zip"
    assert {marked[f] for f in ("csv", "json", "jsonl", "xml")} == {None}
    run = html(client.get(f"/runs/{recorded_runs[0]}"))
    assert not run.xpath("//ul[@class='downloads']//a[@data-job]")  # one run: a direct download


@pytest.fixture
def secured(runs_dir, recorded_runs, tmp_path):
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("root", "admin")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tokens.path)})
    client = app.test_client()
    page = client.get("/login", base_url="https://localhost")
    csrf = html(page).xpath("//input[@name='csrf']/@value")[0]
    signed_in = client.post("/login", data={"csrf": csrf, "token": token}, base_url="https://localhost")
    assert signed_in.status_code == 302
    # The pages carry the session's CSRF token for their own calls (a new one since sign-in).
    meta = html(client.get("/", base_url="https://localhost")).xpath("//meta[@name='csrf-token']/@content")
    assert meta and meta[0] != csrf
    return client, meta[0]


def test_pages_call_the_jobs_api_with_the_session_and_a_csrf_token(secured):
    client, csrf = secured
    https = {"base_url": "https://localhost"}
    assert_error(client.post("/api/exports", data={"format": "csv"}, **https), 403, "FORBIDDEN")
    assert_error(client.post("/api/exports", data={"format": "csv"}, headers={"X-CSRF-Token": "wrong"}, **https),
                 403, "FORBIDDEN")
    made = client.post("/api/exports", data={"format": "csv", "shape": "items"}, headers={"X-CSRF-Token": csrf},
                       **https)
    assert made.status_code == 202, made.get_json()
    job = made.get_json()
    assert job["user"] == "root" and job["options"]["shape"] == "items"
    wait_done(client, job["id"], **https)
    assert client.get(f"/api/exports/{job['id']}/download", **https).status_code == 200
    assert_error(client.delete(f"/api/exports/{job['id']}", **https), 403, "FORBIDDEN")
    assert client.delete(f"/api/exports/{job['id']}", headers={"X-CSRF-Token": csrf}, **https).status_code == 204
    # Other API routes still need a bearer token: the session is for the pages' job calls only.
    assert_error(client.get("/api/runs", **https), 401, "UNAUTHORIZED")


def test_a_job_is_refused_like_a_direct_export_when_too_large(client, recorded_runs, monkeypatch, tmp_path):
    import dataclasses
    import json

    from execution_history.exporters import EXPORTERS

    monkeypatch.setitem(EXPORTERS, "xlsx", dataclasses.replace(EXPORTERS["xlsx"], max_rows=3))
    direct = assert_error(client.get("/api/runs/export/xlsx"), 400, "EXPORT_TOO_LARGE")
    body = assert_error(client.post("/api/exports", json={"format": "xlsx"}), 400, "EXPORT_TOO_LARGE")
    assert {k: body[k] for k in ("runs", "item_rows", "max_rows")} == {k: direct[k] for k in ("runs", "item_rows", "max_rows")}
    assert client.get("/api/exports").get_json()["jobs"] == []
    audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["event"], e["status"]) for e in audit][-1] == ("export_job", 400)


def test_a_zip_job_equals_the_direct_bulk_zip(client, store, runs_dir, recorded_runs):
    """The list page's other job button: a bulk ZIP job's archive holds what the direct one
    does, media files from the app's media dir included."""
    import io
    import json
    import zipfile

    from execution_history import ExecutionTracker

    from .media_files import write_png

    picture = write_png(runs_dir.parent / "media" / "exports" / "media" / "flower.png")
    with ExecutionTracker("with-media", store=store) as run:
        run.log("output_image", None, loop_iteration=1, file_path="exports/media/flower.png")
    direct = client.get("/api/runs/export/zip")
    assert direct.status_code == 200
    job = client.post("/api/exports", data={"format": "zip"}).get_json()
    assert wait_done(client, job["id"])["state"] == "done"
    got = client.get(f"/api/exports/{job['id']}/download")
    assert got.status_code == 200 and got.mimetype == direct.mimetype
    assert got.headers["Content-Disposition"].endswith('.zip"')
    one, two = (zipfile.ZipFile(io.BytesIO(r.get_data())) for r in (direct, got))
    assert one.namelist() == two.namelist() and len(one.namelist()) > len(recorded_runs)
    assert two.read(f"{run.execution_id}/media/1_flower.png") == picture
    for name in one.namelist():  # the export time aside
        if name.endswith(".json"):
            assert ({k: v for k, v in json.loads(one.read(name)).items() if k != "exported_at"}
                    == {k: v for k, v in json.loads(two.read(name)).items() if k != "exported_at"}), name
        elif name == "SHA256SUMS":
            def sums(archive):
                return [line for line in archive.read(name).decode().splitlines() if not line.endswith("manifest.json")]
            assert sums(one) == sums(two)
        else:
            assert one.read(name) == two.read(name), name


@pytest.mark.parametrize("options, suffix", [({"pseudonymize": True}, "_pseudonymized.csv"),
                                             ({"shape": "items"}, "_items.csv"),
                                             ({"shape": "items", "pseudonymize": True}, "_items_pseudonymized.csv")])
def test_a_job_takes_the_direct_exports_options_and_file_name(client, recorded_runs, options, suffix):
    """pseudonymize=true and shape=items do to a job's file, and its name, what they do to a direct export."""
    import csv
    import io
    from urllib.parse import urlencode

    direct = client.get("/api/runs/export/csv?" + urlencode({k: str(v).lower() for k, v in options.items()}))
    assert direct.status_code == 200
    job = client.post("/api/exports", json={"format": "csv", "options": options}).get_json()
    final = wait_done(client, job["id"])
    assert final["state"] == "done", final
    got = client.get(f"/api/exports/{job['id']}/download")
    assert got.headers["Content-Disposition"].endswith(suffix + '"'), got.headers["Content-Disposition"]
    assert direct.headers["Content-Disposition"].endswith(suffix + '"')
    rows = list(csv.DictReader(io.StringIO(got.get_data(as_text=True))))
    assert rows == list(csv.DictReader(io.StringIO(direct.get_data(as_text=True))))
    if options.get("pseudonymize"):
        assert rows and all(r["user_id"].startswith("u_") and r["session_id"].startswith("s_") for r in rows)


def test_the_spec_lists_pseudonymize_among_every_formats_job_options(client):
    body = client.get("/api/openapi.json").get_json()["paths"]["/api/exports"]["post"]["requestBody"]
    for variant in body["content"]["application/json"]["schema"]["oneOf"]:
        if "pdf" not in variant["properties"]["format"]["enum"]:
            assert "pseudonymize" in variant["properties"]["options"]["properties"], variant
