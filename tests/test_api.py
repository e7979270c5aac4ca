"""HTTP API through the Flask test client."""
from pathlib import Path

import pytest

from .conftest import assert_error, write_raw

#: Every test here runs on the local folder and on S3 (see conftest.pytest_generate_tests).
STORE_KINDS = ("local", "s3")


def test_stats(client, store, recorded_runs):
    response = client.get("/api/runs/stats")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["total_records", "total_size_bytes", "total_size_mb", "storage_dir", "by_config",
                          "by_status", "first_timestamp", "last_timestamp", "unreadable_records"]
    assert body == store.scan_stats()
    assert body["total_records"] == len(recorded_runs)


def test_get_run_returns_the_whole_record(client, store, recorded_runs):
    for execution_id in recorded_runs:
        response = client.get(f"/api/runs/{execution_id}")
        assert response.status_code == 200
        assert response.get_json() == store.load(execution_id)


def test_unknown_run_is_404_with_contract_body(client, recorded_runs):
    body = assert_error(client.get("/api/runs/exec_20990101_000000_00000000"), 404, "NOT_FOUND")
    assert body["error"] == "Execution not found"
    assert body["execution_id"] == "exec_20990101_000000_00000000"


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc%2Fpasswd", "exec_../x", "..%2Fsecret", "exec_%00", "%2e%2e"])
def test_traversal_ids_are_404_and_touch_nothing(client, runs_dir, monkeypatch, bad):
    secret = runs_dir.parent / "secret.json"
    secret.write_text('{"execution_id": "leak"}')
    opened = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self) or real(self))
    assert_error(client.get(f"/api/runs/{bad}"), 404, "NOT_FOUND")
    assert opened == []


def test_unreadable_record_is_404_not_500(client, store):
    write_raw(store, "exec_20250101_000000_0000dead.json", b'{"truncated":')
    assert_error(client.get("/api/runs/exec_20250101_000000_0000dead"), 404, "NOT_FOUND")


def test_request_id_is_echoed_when_sane_and_made_otherwise(client):
    assert client.get("/api/runs/stats", headers={"X-Request-ID": "abc.DEF-1_2"}).headers["X-Request-ID"] == "abc.DEF-1_2"
    for bad in ["has space", "x" * 129, "ü"]:
        made = client.get("/api/runs/stats", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert made != bad and 1 <= len(made) <= 128


def test_unknown_route_and_method_are_json_errors(client):
    assert_error(client.get("/api/nothing-here"), 404, "NOT_FOUND")
    body = assert_error(client.post("/api/runs/stats"), 405, "METHOD_NOT_ALLOWED")
    assert "GET" in body["allowed_methods"]
