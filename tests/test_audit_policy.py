"""One place decides what gets audited: app/audit_policy.py's table of endpoints and events."""
import json

import pytest

from app import create_app
from app.audit_policy import AUDITED, Audited
from app.auth import TokenStore
from execution_history import ExecutionTracker, RunStore


@pytest.fixture
def audited_app(runs_dir, tmp_path):
    return make_audited_app(runs_dir, tmp_path)


def make_audited_app(runs_dir, tmp_path):
    """An app with access control on, one run of alice, and alice's token (made after any
    change to the policy table: the app reads it at start-up)."""
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("alice", "researcher")
    with ExecutionTracker("cfg", user_id="alice", store=RunStore(runs_dir)) as run:
        run.log_user_input_text("hello")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tokens.path),
                      "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})
    return app, token, run.execution_id


def audit_lines(app) -> list[dict]:
    path = app.extensions["run_history"]["audit"].path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_endpoint_the_policy_names_is_a_route(app):
    assert set(AUDITED) <= set(app.view_functions)


def test_a_policy_entry_that_names_no_route_stops_start_up(runs_dir, monkeypatch):
    monkeypatch.setitem(AUDITED, "api.no_such_view", Audited("export"))
    with pytest.raises(LookupError, match="api.no_such_view"):
        create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir)})


def test_the_table_alone_decides_the_event(runs_dir, tmp_path, monkeypatch):
    # Renamed in the table only: the views, the refusal check and the stream all follow it.
    monkeypatch.setitem(AUDITED, "api.export_run", Audited("export_renamed", ("execution_id", "format")))
    monkeypatch.setitem(AUDITED, "jobs.create_export_job", Audited("job_renamed", at_start=False))
    monkeypatch.setitem(AUDITED, "api.get_stats", Audited("stats_read"))  # a route audited by one line
    app, token, execution_id = make_audited_app(runs_dir, tmp_path)
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}

    assert client.get(f"/api/runs/{execution_id}/export/json", headers=bearer).status_code == 200
    assert client.get(f"/api/runs/{execution_id}/export/json").status_code == 401
    assert client.post("/api/exports", json={"format": "json"}, headers=bearer).status_code == 202
    assert client.get("/api/runs/stats", headers=bearer).status_code == 200

    lines = audit_lines(app)
    assert [(e["event"], e["status"]) for e in lines] == [
        ("export_renamed", 200), ("export_renamed", 401), ("job_renamed", 202), ("stats_read", 200)]
    assert lines[0]["execution_id"] == execution_id and lines[0]["format"] == "json"
    assert lines[0]["rows"] == 1 and lines[0]["route"] == "/api/runs/<execution_id>/export/<fmt>"
    assert lines[1]["execution_id"] == execution_id and lines[1]["user"] is None
    assert lines[2]["format"] == "json" and lines[2]["rows"] == 1
    assert lines[3]["route"] == "/api/runs/stats" and lines[3]["user"] == "alice"


def test_a_route_the_table_does_not_name_writes_no_line(audited_app):
    app, token, execution_id = audited_app
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    for url in ("/api/runs", f"/api/runs/{execution_id}", "/api/runs/stats", "/api/openapi.json"):
        assert client.get(url, headers=bearer).status_code == 200
        assert client.get(url).status_code == 401
    assert audit_lines(app) == []
    assert client.get(f"/api/runs/{execution_id}/export/csv", headers=bearer).status_code == 200
    assert [e["event"] for e in audit_lines(app)] == ["export"]


def test_a_refusal_is_audited_only_where_the_table_says(audited_app, monkeypatch):
    app, token, execution_id = audited_app
    client = app.test_client()
    monkeypatch.setitem(AUDITED, "api.export_run", Audited("export", ("execution_id", "format"), refused=False))
    assert client.get(f"/api/runs/{execution_id}/export/csv").status_code == 401
    assert audit_lines(app) == []
    monkeypatch.setitem(AUDITED, "api.export_run", Audited("export", ("execution_id", "format")))
    assert client.get(f"/api/runs/{execution_id}/export/csv").status_code == 401
    assert [(e["event"], e["execution_id"], e["format"], e["status"]) for e in audit_lines(app)] == [
        ("export", execution_id, "csv", 401)]
