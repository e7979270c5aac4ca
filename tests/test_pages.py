"""The pages through the test client: escaping, error pages, empty state, presenters."""

from app.presenters import FOLD_AT, day_bars, timeline, visible_controls
from execution_history import ExecutionTracker


def test_user_text_is_escaped(client, store):
    with ExecutionTracker("<b>cfg</b>", store=store) as run:
        run.log_user_input_text("<script>alert(1)</script>", model_used='"><img src=x>')
    for url in ["/", f"/runs/{run.execution_id}", "/stats"]:
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert(1)" not in html and "<b>cfg</b>" not in html and '"><img' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/runs/{run.execution_id}").get_data(as_text=True)


def test_pages_answer_html_errors_and_the_api_json(client):
    page = client.get("/runs/exec_20990101_000000_00000000")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "Execution not found" in page.get_data(as_text=True)
    bad = client.get("/?limit=abc")
    assert bad.status_code == 400 and bad.mimetype == "text/html" and "limit" in bad.get_data(as_text=True)
    assert client.get("/api/runs/exec_20990101_000000_00000000").mimetype == "application/json"
    assert client.get("/api/nope").mimetype == "application/json"


def test_empty_store_explains_how_to_record(client):
    html = client.get("/").get_data(as_text=True)
    assert "No runs recorded yet" in html and "runs sample" in html
    assert "No runs recorded yet" in client.get("/stats").get_data(as_text=True)


def test_filtered_empty_result_offers_all_runs(client, recorded_runs):
    html = client.get("/?config=nobody").get_data(as_text=True)
    assert "No runs match these filters" in html


def test_timeline_groups_stages_and_output_loops(store, recorded_runs):
    multi = next(r for r in store.iter_records(recorded_runs) if r["config_name"] == "bauhaus")
    titles = [section.title for section in timeline(multi)]
    assert titles == ["Stage 0: Run", "Stage 1: Input and safety check", "Stage 2: Interception",
                      "Output loop 1", "Output loop 2", "Stage 0: Run"]
    assert [i for s in timeline(multi) for i in s.items] == multi["items"]


def test_long_text_is_folded(client, store):
    with ExecutionTracker("long", store=store) as run:
        run.log_output_text("x" * (FOLD_AT + 1))
        run.log_output_text("short")
    html = client.get(f"/runs/{run.execution_id}").get_data(as_text=True)
    assert html.count('<details class="content">') == 1


def test_control_characters_are_made_visible():
    assert visible_controls("a\x00b\x0bc\nd\te\x7f") == "a\u2400b\u240bc\nd\te\u2421"


def test_day_bars_scale_to_the_busiest_day():
    bars = day_bars([("2025-01-01", 2), ("2025-01-02", 0), ("2025-01-03", 4)], width=300, height=100)
    assert [(b.x, b.height, b.y) for b in bars] == [(0, 50.0, 50.0), (100.0, 0.0, 100.0), (200.0, 100.0, 0.0)]
