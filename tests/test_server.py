"""The real thing: gunicorn with the shipped config, a real HTTP client."""
import json
import urllib.error
import urllib.request


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_gunicorn_serves_sample_runs_recorded_by_the_cli(live_server, app, store):
    result = app.test_cli_runner().invoke(args=["runs", "sample", "8"])
    assert result.exit_code == 0, result.output
    status, headers, body = fetch(f"{live_server.url}/api/runs/stats")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    stats = json.loads(body)
    assert stats["total_records"] == 8 and stats["by_status"]["failed"] == 2
    execution_id = store.list_ids()[0]
    status, _, body = fetch(f"{live_server.url}/api/runs/{execution_id}")
    assert status == 200 and json.loads(body) == store.load(execution_id)
    status, headers, body = fetch(f"{live_server.url}/api/runs/..%2F..%2Fetc%2Fpasswd")
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND" and headers["X-Request-ID"]
