"""Media in a real browser: Debian's chromium (Playwright) against a real gunicorn serving real files."""
from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import sync_playwright

from examples.sample_pipeline import iter_sample_runs
from execution_history import ExecutionTracker, RunStore

from .conftest import LiveServer
from .media_files import write_png, write_wav, write_webm
from .test_browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path

#: Headless chromium has no user to click play: let media play without a gesture.
MEDIA_ARGS = [*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
UNBROKEN = "Wiese" * 200  # 1,000 characters without a space: folded, with a 300-character preview
#: A found file with a 250-byte name and hostile characters (a control, a bidi override, formula text).
LONG_NAME = "=SUM(A1)\x07\u202e" + "L" * 230 + ".png"


@pytest.fixture(scope="module")
def media_site(tmp_path_factory):
    """Sample runs with real media in a tmp media root; a run with a long unbroken text and a lost file."""
    root = tmp_path_factory.mktemp("media-browser")
    store = RunStore(root / "pipeline_runs")
    ids = list(iter_sample_runs(8, store, now=dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc),
                                media_root=root / "media"))
    write_png(root / "media" / "exports" / "media" / LONG_NAME, size=(40, 30))
    with ExecutionTracker("unbroken", store=store) as run:
        run.log_user_input_text(UNBROKEN)
        run.log_output_text("x" * 400)
        run.log_output_text("y" * 300, model_used="m" * 300)  # shown whole: 300 characters, no break
        run.log_output_image(file_path="exports/media/gone.png", loop_iteration=1)
        run.log_output_image(file_path="../../etc/passwd.png", loop_iteration=1)
        run.log_output_image(file_path="exports/media/" + LONG_NAME, loop_iteration=1)
        run.log_output_image(file_path="exports/media/" + "Z" * 300 + ".png", loop_iteration=1)  # missing
    write_webm(root / "media" / "exports" / "media" / "clip.webm")
    write_png(root / "media" / "exports" / "media" / "still.png", size=(50, 40))
    write_wav(root / "media" / "exports" / "media" / "tone.wav")
    with ExecutionTracker("video", store=store) as video:  # image, audio, video: shown in timeline order
        video.log_output_image(file_path="exports/media/still.png", loop_iteration=1)
        video.log_output_audio(file_path="exports/media/tone.wav", loop_iteration=1)
        video.log("output_video", None, loop_iteration=1, file_path="exports/media/clip.webm")
    ids.append(video.execution_id)
    server = LiveServer(store.root, root / "gunicorn.log", extra_env={"RUN_HISTORY_MEDIA_DIR": str(root / "media")})
    yield server, store, ids, run.execution_id
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=MEDIA_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.console_errors, page.failed = [], []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("response", lambda response: response.status >= 400 and page.failed.append(response.url))
    yield page
    context.close()


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def stille_post_id(store, ids):
    return next(i for i in ids if store.load(i)["config_name"] == "stillepost")


def test_stille_post_page_shows_its_image_and_plays_its_audio(media_site, page):
    server, store, ids, _ = media_site
    execution_id = stille_post_id(store, ids)
    page.goto(f"{server.url}/runs/{execution_id}")
    image = page.locator(".media-image img")
    assert image.count() == 1 and image.get_attribute("loading") == "lazy"
    image.scroll_into_view_if_needed()  # lazy: it loads once it is near the viewport
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [160, 120]
    audio = page.locator(".media-audio audio")
    assert audio.count() == 1 and audio.get_attribute("preload") == "none"
    state = audio.evaluate("""a => new Promise((done, fail) => {
        a.addEventListener('canplay', () => done(a.readyState), {once: true});
        a.addEventListener('error', () => fail(new Error('media error ' + (a.error && a.error.code))), {once: true});
        a.load();
    })""")
    assert state >= 2  # HAVE_CURRENT_DATA or better: chromium decoded the WAV
    assert audio.evaluate("a => a.play().then(() => !a.paused)") is True
    # timeline order: the image before the audio, both after the text output
    order = page.locator(".item .type").all_inner_texts()
    assert order.index("output image") < order.index("output audio") and order.index("output text") < order.index(
        "output image")
    assert not [m for m in page.console_errors if "Content Security Policy" in m]  # nothing refused by the CSP
    assert [url for url in page.failed if not url.endswith("/favicon.ico")] == []
    screenshot(page, "run-stillepost-media")


def test_a_webm_video_plays_inline_after_the_image_and_audio(media_site, page):
    server, store, ids, _ = media_site
    execution_id = next(i for i in ids if store.load(i)["config_name"] == "video")
    page.goto(f"{server.url}/runs/{execution_id}")
    kinds = page.locator("figure.media").evaluate_all("figures => figures.map(f => f.className)")
    assert kinds == ["media media-image", "media media-audio", "media media-video"]  # timeline order
    video = page.locator(".media-video video")
    assert video.get_attribute("preload") == "none" and video.get_attribute("controls") is not None
    video.scroll_into_view_if_needed()
    size = video.evaluate("""v => new Promise((done, fail) => {
        v.addEventListener('loadeddata', () => done([v.videoWidth, v.videoHeight, v.duration]), {once: true});
        v.addEventListener('error', () => fail(new Error('media error ' + (v.error && v.error.code))), {once: true});
        v.load();
    })""")
    assert size[:2] == [64, 48] and 0.9 <= size[2] <= 1.1  # chromium decoded the VP8 frames
    played = video.evaluate("""v => v.play().then(() => new Promise(done =>
        v.addEventListener('timeupdate', () => v.currentTime > 0 && done(v.currentTime))))""")
    assert played > 0
    assert not [m for m in page.console_errors if "Content Security Policy" in m]
    assert [url for url in page.failed if not url.endswith("/favicon.ico")] == []
    screenshot(page, "run-video")


def test_a_missing_or_refused_file_is_said_plainly(media_site, page):
    server, _, _, execution_id = media_site
    page.goto(f"{server.url}/runs/{execution_id}")
    assert page.locator(".file.missing").all_inner_texts() == [
        "File not found: exports/media/gone.png", "File not found: ../../etc/passwd.png",
        "File not found: exports/media/" + "Z" * 300 + ".png"]
    assert page.locator(".media").count() == 1  # the long-named file, found


def test_long_unbroken_text_does_not_widen_the_page(media_site, page):
    server, _, _, execution_id = media_site
    page.goto(f"{server.url}/runs/{execution_id}")
    assert page.locator("details.content").count() == 1  # folded: its 300-character preview shows
    preview = page.locator("details.content summary .preview").inner_text()
    assert preview.rstrip("…") == UNBROKEN[:300]
    assert page.locator("div.content.text", has_text="y" * 300).count() == 1  # 300 characters shown whole
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 1366
    # every element stays inside the viewport: previews, texts, the model name, long file names
    widest = page.evaluate("""() => Math.max(...[...document.querySelectorAll('main *')].map(
        e => e.getBoundingClientRect().right))""")
    assert widest <= 1366
    caption = page.locator(".media figcaption code").inner_text()
    assert caption == "exports/media/=SUM(A1)\u2407[U+202E]" + "L" * 230 + ".png"  # nothing hidden or reordered
    image = page.locator(".media-image img")
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    narrow = page.context.new_page()  # a phone's width: still no horizontal scrolling
    narrow.set_viewport_size({"width": 360, "height": 800})
    narrow.goto(page.url)
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 360
    narrow.screenshot(path=str(ARTIFACTS / "run-unbroken-text-narrow.png"), full_page=True)
    narrow.close()
    page.locator("details.content summary").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    screenshot(page, "run-unbroken-text")


def test_gallery_view_shows_thumbnails_and_works_without_javascript(media_site, browser):
    server, store, ids, _ = media_site
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(server.url + "/?config=stillepost")
        page.click(".view-toggle a:has-text('Gallery')")
        page.wait_for_url(lambda url: "view=gallery" in url and "config=stillepost" in url)
        cards = page.locator(".gallery .card")
        expected = sorted((i for i in ids if store.load(i)["config_name"] == "stillepost"), reverse=True)
        assert cards.count() == len(expected)
        for n in range(cards.count()):
            image = cards.nth(n).locator("img")
            image.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            assert image.evaluate("img => [img.naturalWidth, new URL(img.currentSrc).pathname]") == [
                160, f"/api/runs/{expected[n]}/thumbnail"]  # the sample image is already small: kept at 160 px
        screenshot(page, "runs-gallery")
        page.select_option("#status", "completed")
        page.click("button[type=submit]")  # the filter form keeps the view
        page.wait_for_url(lambda url: "status=completed" in url and "view=gallery" in url)
        page.goto(server.url + "/?view=gallery&config=dada")
        assert page.locator(".gallery .no-image").count() == page.locator(".gallery .card").count() > 0
        page.click(".view-toggle a:has-text('Table')")
        assert page.locator("table.runs").count() == 1 and "view=" not in page.url
    finally:
        context.close()
