"""Older record files in a real browser: chromium (Playwright) against gunicorn reading Europe/Berlin."""
import json
import shutil

import pytest

from .conftest import LiveServer
from .test_browser import browser, page, screenshot, table_column  # noqa: F401 - fixtures shared with test_browser
from .test_legacy_records import COMPLETED, EXPECTED_IDS, FAILED, LEGACY, expected_record


@pytest.fixture(scope="module")
def legacy_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy_browser")
    runs_dir = root / "pipeline_runs"
    runs_dir.mkdir()
    for path in LEGACY.glob("exec_*.json"):
        shutil.copy2(path, runs_dir / path.name)
    server = LiveServer(runs_dir, root / "gunicorn.log", extra_env={"RUN_HISTORY_NAIVE_TIMEZONE": "Europe/Berlin"})
    yield server
    server.stop()


def test_older_runs_are_listed_filtered_and_opened(legacy_site, page):
    page.goto(legacy_site.url + "/")
    assert sorted(table_column(page, 1)) == sorted(EXPECTED_IDS)
    page.goto(legacy_site.url + "/?status=failed")
    assert table_column(page, 1) == [FAILED]
    page.locator("a.run-link").first.click()
    record = expected_record(FAILED)
    assert page.locator("#execution-id").inner_text() == FAILED
    assert page.locator(".item").count() == len(record["items"])
    assert page.locator(".item time").evaluate_all("els => els.map(e => e.getAttribute('datetime'))") == \
        [item["timestamp"] for item in record["items"]]
    screenshot(page, "legacy-run-failed")
    page.goto(legacy_site.url + f"/runs/{COMPLETED}")
    assert page.locator("h3:has-text('Stage 5')").count() == 1
    assert page.locator("section.stage-5 .item").count() == 1
    served = json.loads(page.request.get(legacy_site.url + f"/api/runs/{COMPLETED}").text())
    assert served == expected_record(COMPLETED)
    screenshot(page, "legacy-run-completed")
