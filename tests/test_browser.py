"""The pages in a real browser: Debian's chromium driven by Playwright against a real gunicorn."""
import csv
import datetime as dt
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import openpyxl
import pytest
from lxml import etree
from playwright.sync_api import expect, sync_playwright

from examples.sample_pipeline import iter_sample_runs
from execution_history import ExecutionTracker, RunStore
from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS
from execution_history.exporters.xml_writer import read_records, xsd_bytes

from .conftest import PROJECT, LiveServer, record_every_type

ARTIFACTS = PROJECT / "test-artifacts" / "screenshots"
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
#: Flags for chromium as root in a container with no network (see the env notes in the README).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed: .ci/run installs it (apt-get install chromium)"
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A gunicorn serving sample runs, a hostile run and an XSS run."""
    root = tmp_path_factory.mktemp("browser")
    runs_dir = root / "pipeline_runs"
    store = RunStore(runs_dir)
    ids = list(iter_sample_runs(12, store, now=dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc)))
    ids.append(record_every_type(store))
    with ExecutionTracker("xss", store=store) as run:
        run.log_user_input_text(XSS, metadata={"note": XSS})
    server = LiveServer(runs_dir, root / "gunicorn.log")
    yield server, store, run.execution_id
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    yield page
    context.close()


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def table_column(page, index):
    return [cell.inner_text().strip() for cell in page.locator(f"table.runs tbody tr td:nth-child({index})").all()]


def test_filter_by_config_shows_only_those_runs(site, page):
    server, store, _ = site
    page.goto(server.url + "/")
    screenshot(page, "runs")
    total = int(page.locator("#total").inner_text())
    assert total == len(store.list_files())
    page.select_option("#config", "stillepost")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "config=stillepost" in url)
    configs = table_column(page, 2)
    expected = [r for r in store.iter_records(store.list_ids()) if r["config_name"] == "stillepost"]
    assert configs == ["stillepost"] * len(expected) and int(page.locator("#total").inner_text()) == len(expected)
    screenshot(page, "runs-filtered")
    page.reload()  # the URL carries the filters: a bookmark shows the same view
    assert table_column(page, 2) == configs and page.locator("#config").input_value() == "stillepost"


def test_paging_forward_and_back_keeps_filters(site, page):
    server, store, _ = site
    page.goto(server.url + "/?limit=3&status=completed")
    first = table_column(page, 1)
    page.click("a[rel=next]")
    page.wait_for_url(lambda url: "offset=3" in url and "status=completed" in url)
    second = table_column(page, 1)
    assert second and not set(first) & set(second)
    page.click("a[rel=prev]")
    assert table_column(page, 1) == first
    listed = json.loads(page.request.get(server.url + "/api/runs?status=completed&limit=100").text())
    assert first + second == [e["execution_id"] for e in listed["executions"]][:len(first) + len(second)]


def test_sorting_by_a_column(site, page):
    server, _, _ = site
    page.goto(server.url + "/")
    page.click("th a:has-text('Items')")
    counts = [int(c) for c in table_column(page, 8)]
    assert counts == sorted(counts, reverse=True)
    page.click("th a:has-text('Items')")
    counts = [int(c) for c in table_column(page, 8)]
    assert counts == sorted(counts)


def test_open_a_run_shows_its_timeline(site, page):
    server, store, _ = site
    page.goto(server.url + "/?config=stillepost")
    page.locator("a.run-link").first.click()
    execution_id = page.locator("#execution-id").inner_text()
    record = store.load(execution_id)
    assert page.locator(".item").count() == len(record["items"])
    assert page.locator("section.stage-2 .badge:has-text('iteration')").count() == 8
    assert page.locator("h3:has-text('Stage 2: Interception')").count() == 1
    screenshot(page, "run-stillepost")
    page.goto(server.url + "/?config=bauhaus")
    page.locator("a.run-link").first.click()
    assert page.locator("h3:has-text('Output loop 1')").count() == 1
    assert page.locator("h3:has-text('Output loop 2')").count() == 1
    assert page.locator(".file code").count() == 2  # the media file paths
    screenshot(page, "run-multi-output")


def parse_download(fmt, data, suffix):
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8").removeprefix("\ufeff"), newline="")))
    if fmt == "json":
        return json.loads(data)
    if fmt == "jsonl":
        return [json.loads(line) for line in data.splitlines() if line]
    if fmt == "xml":
        etree.XMLSchema(etree.fromstring(xsd_bytes())).assertValid(etree.fromstring(data))
        return read_records(data)
    if fmt == "zip":
        archive = zipfile.ZipFile(io.BytesIO(data))
        assert archive.testzip() is None
        return [json.loads(archive.read(run["record"]["path"]))
                for run in json.loads(archive.read("manifest.json"))["runs"]]
    return openpyxl.load_workbook(io.BytesIO(data))


def click_downloads(page, tmp_path):
    """Click every download button; yield (format, file name, bytes)."""
    for button in page.locator(".downloads a").all():
        fmt = button.get_attribute("data-format")
        with page.expect_download() as info:
            button.click()
        download = info.value
        target = tmp_path / download.suggested_filename
        download.save_as(target)
        yield fmt, button.inner_text(), download.suggested_filename, target.read_bytes()


def test_every_download_button_of_the_run_browser(site, page, tmp_path):
    server, store, _ = site
    page.goto(server.url + "/?config=bauhaus")
    expected = [r for r in store.iter_records(store.list_ids()) if r["config_name"] == "bauhaus"]
    seen = set()
    for fmt, label, name, data in click_downloads(page, tmp_path):
        seen.add(label)
        items = label.endswith(": items")
        assert name.startswith("runs_") and name.endswith(("_items." if items else ".") + fmt)
        assert re.fullmatch(r"runs_\d{8}_\d{6}(_items)?\." + fmt, name)
        parsed = parse_download(fmt, data, name)
        if fmt == "csv":
            if items:
                assert list(parsed[0]) == list(ITEM_COLUMNS)
                assert len(parsed) == sum(max(len(r["items"]), 1) for r in expected)
            else:
                assert list(parsed[0]) == list(RUN_COLUMNS)
                assert sorted(row["execution_id"] for row in parsed) == sorted(r["execution_id"] for r in expected)
            assert data.startswith(b"\xef\xbb\xbf") == label.startswith("CSV for Excel")
        elif fmt == "xlsx":
            runs = list(parsed["Runs"].iter_rows(values_only=True))[1:]
            assert sorted(row[0] for row in runs) == sorted(r["execution_id"] for r in expected)
        else:
            assert sorted(parsed, key=lambda r: r["execution_id"]) == sorted(expected, key=lambda r: r["execution_id"])
    assert seen >= {"CSV: runs", "CSV: items", "CSV for Excel: runs", "CSV for Excel: items", "XLSX", "JSON",
                    "JSONL", "XML", "ZIP (with media)"}


def test_every_download_button_of_a_run(site, page, tmp_path):
    server, store, _ = site
    execution_id = store.list_ids()[0]
    record = store.load(execution_id)
    page.goto(f"{server.url}/runs/{execution_id}")
    formats = []
    for fmt, label, name, data in click_downloads(page, tmp_path):
        formats.append(fmt)
        assert name == execution_id + "." + fmt
        parsed = parse_download(fmt, data, name)
        if fmt == "csv":
            assert label.endswith(": items")  # one run: item rows only (one file name, one content)
            assert [int(row["sequence_number"]) for row in parsed] == [i["sequence_number"] for i in record["items"]]
        elif fmt == "xlsx":
            assert len(list(parsed["Items"].iter_rows())) == len(record["items"]) + 1
        elif fmt == "json":
            assert parsed == record
        else:
            assert parsed == [record]
    assert sorted(formats) == ["csv", "csv", "json", "jsonl", "xlsx", "xml", "zip"]


def test_script_in_a_run_shows_as_text(site, page):
    server, _, xss_id = site
    page.goto(f"{server.url}/runs/{xss_id}")
    assert page.locator(".item .text").first.inner_text() == XSS
    page.locator("details.metadata summary").first.click()
    assert XSS in page.locator("details.metadata pre").first.inner_text()
    page.goto(server.url + "/?q=script")
    page.wait_for_timeout(300)
    assert page.dialogs == []
    assert page.locator("script:not([src])").count() == 0
    screenshot(page, "run-xss")


def test_stats_page(site, page):
    server, store, _ = site
    page.goto(server.url + "/stats")
    assert int(page.locator("#total-records").inner_text()) == len(store.list_files())
    bars = page.locator(".chart rect")
    assert bars.count() == 60
    titles = [bars.nth(i).locator("title").text_content() for i in range(bars.count())]
    per_day = {t.split(": ")[0]: int(t.split(": ")[1].split()[0]) for t in titles}
    starts = [dt.datetime.fromisoformat(r["timestamp"]).date().isoformat() for r in store.iter_records(store.list_ids())]
    assert max(per_day) == max(starts) and len(per_day) == 60
    assert per_day == {day: sum(1 for s in starts if s == day) for day in per_day}
    screenshot(page, "stats")


def test_unknown_run_is_a_404_page(site, page):
    server, _, _ = site
    response = page.goto(server.url + "/runs/exec_20990101_000000_00000000")
    assert response.status == 404 and "text/html" in response.headers["content-type"]
    expect(page.locator("h1")).to_have_text("Not found")
    screenshot(page, "not-found")


def test_browsing_and_downloading_work_without_javascript(site, browser, tmp_path):
    server, store, _ = site
    context = browser.new_context(java_script_enabled=False, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        page.select_option("#config", "dada")
        page.click("button[type=submit]")
        assert set(table_column(page, 2)) == {"dada"}
        with page.expect_download() as info:
            page.click(".downloads a[data-format=jsonl]")
        data = Path(info.value.path()).read_bytes()
        assert {json.loads(line)["config_name"] for line in data.splitlines()} == {"dada"}
    finally:
        context.close()


def test_empty_store_says_how_to_record_a_run(tmp_path, page):
    server = LiveServer(tmp_path / "empty", tmp_path / "gunicorn.log")
    try:
        page.goto(server.url + "/")
        expect(page.locator("#empty-title")).to_have_text("No runs recorded yet")
        assert "runs sample" in page.locator(".empty").inner_text()
        screenshot(page, "empty")
    finally:
        server.stop()


def test_signed_in_researcher_browses_and_downloads_own_runs(tmp_path, page):
    from app.auth import TokenStore

    store = RunStore(tmp_path / "runs")
    mine = []
    for n, user in enumerate(["alice", "bob", "alice"]):
        with ExecutionTracker("cfg", user_id=user, store=store) as run:
            run.log_user_input_text(f"text {n}")
        if user == "alice":
            mine.append(run.execution_id)
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("alice", "researcher")
    server = LiveServer(store.root, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TOKENS": str(tokens.path)})
    try:
        page.goto(server.url + "/stats")
        page.fill("#token", "not the token")
        page.click("button[type=submit]")
        expect(page.locator("[role=alert]")).to_contain_text("not valid")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: url.endswith("/stats"))
        page.goto(server.url + "/")
        assert sorted(table_column(page, 1)) == sorted(mine)
        screenshot(page, "runs-signed-in")
        with page.expect_download() as info:
            page.click(".downloads a[data-format=jsonl]")
        data = Path(info.value.path()).read_bytes()
        assert sorted(json.loads(line)["execution_id"] for line in data.splitlines()) == sorted(mine)
        page.click(".signout button")
        page.goto(server.url + "/")
        assert "/login" in page.url
    finally:
        server.stop()
