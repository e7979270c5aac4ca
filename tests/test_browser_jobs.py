"""Export jobs and the page fixes in a real browser (Debian's chromium, Playwright, a real gunicorn)."""
import io
import time
from pathlib import Path

import openpyxl
import pytest

from app.auth import TokenStore
from bench.common import CONFIGS

from .conftest import LiveServer
from .test_browser import browser, page, screenshot  # noqa: F401 - shared fixtures
from .test_export_jobs import write_runs

#: Runs behind the module's server; its jobs take 0.02 s a run more (the test hook), so the
#: page's progress bar can be watched for seconds (it took 1,500 runs without the hook).
RUNS = 300
ITEMS_PER_RUN = 17  # bench.common.make_record's shape


@pytest.fixture(scope="module")
def big_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-jobs")
    write_runs(root / "runs", RUNS)
    server = LiveServer(root / "runs", root / "gunicorn.log", extra_env={"RUN_HISTORY_TEST_EXPORT_DELAY": "0.02"})
    server.wait_for_index()
    yield server
    server.stop()


def rows_of(data: bytes) -> dict[str, int]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    return {name: sum(1 for _ in book[name].iter_rows()) for name in ("Runs", "Items")}


def test_xlsx_button_shows_progress_then_downloads(big_site, page, tmp_path):
    page.goto(big_site.url + "/")
    seen, texts = [], set()
    with page.expect_download(timeout=300_000) as info:
        page.click(".downloads a[data-job=xlsx]")
        panel = page.locator("#job-progress")
        deadline = time.monotonic() + 300
        while panel.get_attribute("data-state") not in ("done", "failed"):
            assert time.monotonic() < deadline
            seen.append(panel.locator("progress").evaluate("p => p.value"))
            texts.add(panel.locator(".job-text").inner_text())
            if 20 < seen[-1] < 80 and not (tmp_path / "progress.png").exists():
                screenshot(page, "export-job-progress")
                (tmp_path / "progress.png").touch()
            page.wait_for_timeout(100)
    assert panel.get_attribute("data-state") == "done", panel.locator(".job-text").inner_text()
    assert seen == sorted(seen) and any(0 < value < 100 for value in seen), seen
    assert any("left" in text and "%" in text for text in texts), texts
    download = info.value
    assert download.suggested_filename.startswith("runs_") and download.suggested_filename.endswith(".xlsx")
    assert rows_of(Path(download.path()).read_bytes()) == {"Runs": RUNS + 1, "Items": RUNS * ITEMS_PER_RUN + 1}
    assert page.locator("#job-progress .job-download").is_visible()
    job_id = page.locator("#job-progress").get_attribute("data-job-id")
    page.goto(big_site.url + "/exports")
    row = page.locator(f"#job-{job_id}")
    assert row.locator(".job-state").inner_text() == "done"
    assert row.locator("a.job-download").get_attribute("href") == f"/api/exports/{job_id}/download"
    assert row.locator("td").nth(2).inner_text() == str(RUNS)
    screenshot(page, "exports")


def test_exports_page_follows_a_running_job(big_site, page):
    made = page.request.post(big_site.url + "/api/exports", data={"format": "xlsx", "filters": {"config": "dada"}})
    assert made.status == 202
    job_id = made.json()["id"]
    page.goto(big_site.url + "/exports")
    row = page.locator(f"#job-{job_id}")
    assert row.get_attribute("data-state") in ("queued", "running")  # a static list first: then live
    row.locator("a.job-download").wait_for(timeout=300_000)
    assert row.locator(".job-state").inner_text() == "done" and row.locator("progress").count() == 0
    assert row.locator(".size").inner_text().endswith("MB") or row.locator(".size").inner_text().endswith("KB")


def test_without_javascript_the_xlsx_button_is_a_direct_download(big_site, browser):  # noqa: F811
    context = browser.new_context(java_script_enabled=False, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(big_site.url + "/?config=dada&limit=5")
        assert page.locator("table.runs tbody tr").count() == 5
        with page.expect_download(timeout=300_000) as info:
            page.click(".downloads a[data-job=xlsx]")
        rows = rows_of(Path(info.value.path()).read_bytes())
        dada = sum(1 for n in range(RUNS) if CONFIGS[n % len(CONFIGS)] == "dada")
        assert rows["Runs"] == dada + 1  # every dada run, not the page of 5
        page.click("button[type=submit]")  # pressing Filter keeps the shared limit
        assert "limit=5" in page.url and page.locator("table.runs tbody tr").count() == 5
    finally:
        context.close()


def test_stats_chart_fills_its_width(big_site, page):
    page.goto(big_site.url + "/stats")
    chart = page.locator(".chart svg").bounding_box()
    main = page.locator("main section").first.bounding_box()
    assert abs(chart["width"] - main["width"]) <= 1, (chart, main)
    whitespace = page.locator("dl.meta time").first.evaluate("t => getComputedStyle(t).whiteSpace")
    assert whitespace == "nowrap"


def test_api_link_opens_a_readable_reference(big_site, page):
    page.goto(big_site.url + "/")
    page.click("header.site a:has-text('API (OpenAPI)')")
    assert page.url.endswith("/api-docs")
    assert page.locator("section.op").count() >= 18
    assert page.locator("#op-create_export_job h2").inner_text() == "POST /api/exports"
    screenshot(page, "api-docs")


def test_signed_in_page_runs_a_job_with_its_session(tmp_path, page):
    runs = tmp_path / "runs"
    write_runs(runs, 6, user="alice")
    write_runs(runs, 3, start=50, user="bob")
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("alice", "researcher")
    server = LiveServer(runs, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TOKENS": str(tokens.path)})
    try:
        page.goto(server.url + "/")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: url.rstrip("/") == server.url)
        # Without the page's CSRF token, the session cannot start a job.
        refused = page.request.post(server.url + "/api/exports", form={"format": "xlsx"})
        assert refused.status == 403 and refused.json()["code"] == "FORBIDDEN"
        with page.expect_download(timeout=120_000) as info:
            page.click(".downloads a[data-job=xlsx]")
        assert rows_of(Path(info.value.path()).read_bytes())["Runs"] == 6 + 1  # alice's runs only
        page.goto(server.url + "/exports")
        assert page.locator("tr.job .job-state").all_inner_texts() == ["done"]
    finally:
        server.stop()
