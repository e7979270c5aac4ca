"""The run page's delete button in a real browser (chromium through Playwright, real gunicorn)."""
import datetime as dt

from playwright.sync_api import expect

from app.auth import TokenStore
from execution_history import RunStore

from .conftest import LiveServer
from .test_browser import browser, page, screenshot, table_column  # noqa: F401 - fixtures and helpers
from .test_lifecycle import record_run


def test_an_admin_deletes_a_run_from_its_page_after_confirming(tmp_path, page):  # noqa: F811
    store = RunStore(tmp_path / "runs")
    start = dt.datetime(2025, 11, 3, tzinfo=dt.timezone.utc)
    kept, doomed = (record_run(store, "dada", start + dt.timedelta(hours=n), text=f"text {n}") for n in range(2))
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("root", "admin")
    server = LiveServer(store.root, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TOKENS": str(tokens.path)})
    try:
        page.goto(f"{server.url}/runs/{doomed}")
        page.fill("#token", token)
        page.click("form:not(.delete-run) button[type=submit]")
        page.wait_for_url(lambda url: url.endswith(f"/runs/{doomed}"))
        button = page.locator("form.delete-run button[type=submit]")
        button.click()  # not confirmed: the browser refuses to send the form (the checkbox is required)
        assert page.eval_on_selector("form.delete-run input[name=confirm]", "box => box.validity.valueMissing")
        assert doomed in store.list_ids()
        page.check("form.delete-run input[name=confirm]")
        screenshot(page, "run-delete-confirmed")
        button.click()
        page.wait_for_url(lambda url: url == f"{server.url}/")
        assert table_column(page, 1) == [kept] and store.list_ids() == [kept]
        response = page.goto(f"{server.url}/runs/{doomed}")
        assert response.status == 404
        expect(page.locator("h1")).to_have_text("Not found")
    finally:
        server.stop()
