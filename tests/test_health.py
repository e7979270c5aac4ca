"""GET /api/health: readiness for a load balancer, public, cheap, honest about the store."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from app import create_app


def test_health_says_ok_and_ready_once_indexed(client, recorded_runs):
    body = client.get("/api/health").get_json()
    assert body["store"] == "ok" and body["index"] == "building"  # nothing indexed yet: no build here
    client.get("/api/runs")
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json() == {"store": "ok", "index": "ready", "runs_indexed": len(recorded_runs)}


def test_health_needs_no_token_and_tells_nothing_private(runs_dir, tmp_path, recorded_runs):
    tokens = tmp_path / "tokens.json"
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tokens)})
    client = app.test_client()
    assert client.get("/api/runs").status_code == 401
    response = client.get("/api/health")
    assert response.status_code == 200
    assert str(runs_dir) not in response.get_data(as_text=True)


def test_health_is_503_when_the_store_cannot_be_listed(runs_dir, tmp_path):
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir)})
    os.rename(runs_dir, tmp_path / "elsewhere")
    runs_dir.write_text("")  # the store's path now leads to a file: it cannot be listed
    response = app.test_client().get("/api/health")
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert body["store"] == "unavailable" and body["code"] == "STORE_UNAVAILABLE"
    assert str(tmp_path) not in response.get_data(as_text=True)


def test_health_through_gunicorn(live_server, recorded_runs):
    # health never syncs (it must stay cheap): a list request brings the index in step first
    urllib.request.urlopen(live_server.url + "/api/runs", timeout=20).close()
    with urllib.request.urlopen(live_server.url + "/api/health", timeout=20) as response:
        body = json.loads(response.read())
    assert response.status == 200 and body["store"] == "ok" and body["index"] == "ready"
    assert body["runs_indexed"] == len(recorded_runs)
