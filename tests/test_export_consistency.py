"""A run listed, then broken or gone: lists, GET by id and bulk exports must agree (through gunicorn)."""
from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request

import pytest

from execution_history import ExecutionTracker

from .conftest import LiveServer

TIMEOUT = 30


def get_json(server: LiveServer, path: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def break_in_place(path) -> None:
    """Truncate the file where it is: same inode, the folder's mtime unmoved, so the index
    cannot know until it looks at this file again."""
    with open(path, "r+b") as handle:
        handle.truncate(7)


def audit_lines(runs_dir) -> list[dict]:
    path = runs_dir.parent / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def server(runs_dir, tmp_path):
    live = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    yield live
    live.stop()


def test_a_run_that_answers_404_leaves_the_list_at_once(server, store, recorded_runs):
    listed = get_json(server, "/api/runs?limit=100")[2]
    assert listed["total"] == len(recorded_runs)
    victim = recorded_runs[3]
    break_in_place(store.path_for(victim))
    status, _, body = get_json(server, f"/api/runs/{victim}")
    assert status == 404 and body["code"] == "NOT_FOUND"
    listed = get_json(server, "/api/runs?limit=100")[2]
    assert victim not in {r["execution_id"] for r in listed["executions"]}
    assert listed["total"] == len(recorded_runs) - 1
    stats = get_json(server, "/api/runs/stats")[2]
    assert stats["unreadable_records"] == 1 and stats["total_records"] == len(recorded_runs) - 1


def test_a_run_broken_before_the_first_byte_is_a_json_503_then_the_export_agrees(runs_dir, tmp_path, store,
                                                                                  recorded_runs):
    # Without the folder watch an edit in place goes unseen until the next full check, so the
    # export still lists the run it finds broken (with the watch: the next test).
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_FOLDER_WATCH": "0"})
    try:
        check_broken_before_the_first_byte(server, store, recorded_runs)
    finally:
        server.stop()


def test_a_run_broken_in_place_is_left_out_of_the_next_export_with_the_folder_watch(server, store, recorded_runs):
    get_json(server, "/api/runs")
    server.wait_watching(workers=2)  # a worker still booting would not have seen the edit (nor would the index)
    newest = max(recorded_runs)
    break_in_place(store.path_for(newest))  # the watch sees the write: unreadable from the next request on
    with urllib.request.urlopen(server.url + "/api/runs/export/jsonl", timeout=TIMEOUT) as response:
        records = [json.loads(line) for line in response.read().splitlines()]
        assert int(response.headers["X-Total-Count"]) == len(records) == len(recorded_runs) - 1
    assert newest not in {r["execution_id"] for r in records}
    assert get_json(server, "/api/runs/stats")[2]["unreadable_records"] == 1


def check_broken_before_the_first_byte(server, store, recorded_runs):
    get_json(server, "/api/runs")
    newest = max(recorded_runs)  # the first run in the default order (timestamp desc)
    break_in_place(store.path_for(newest))
    status, headers, body = get_json(server, "/api/runs/export/jsonl")
    assert status == 503 and body["code"] == "STORE_UNAVAILABLE" and int(headers["Retry-After"]) >= 1
    with urllib.request.urlopen(server.url + "/api/runs/export/jsonl", timeout=TIMEOUT) as response:
        records = [json.loads(line) for line in response.read().splitlines()]
        assert int(response.headers["X-Total-Count"]) == len(records) == len(recorded_runs) - 1
    assert newest not in {r["execution_id"] for r in records}
    refused, done = [line for line in audit_lines(store.root) if line["event"] == "export"]
    assert refused["status"] == 503 and done["complete"] is True and done["rows"] == len(records)


def test_a_run_broken_mid_stream_cuts_the_download_and_the_audit_says_so(runs_dir, tmp_path, store):
    big = "Stille Post " * 25_000  # ~300 KB per run: far more than the socket buffers hold
    ids = []
    for n in range(60):
        with ExecutionTracker(f"big{n % 3}", store=store) as run:
            run.log_output_text(big)
        ids.append(run.execution_id)
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)  # not connected yet
    try:
        # the run exported last, in the export's own order (timestamp desc: not the smallest id,
        # whose random part orders the runs of one second, and 60 can be written in one)
        oldest = get_json(server, "/api/runs?limit=60")[2]["executions"][-1]["execution_id"]
        conn.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        conn.request("GET", "/api/runs/export/jsonl")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("X-Total-Count") == "60"
        received = response.read(64 * 1024)  # the stream has begun; the last run is not read yet
        break_in_place(store.path_for(oldest))
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
    finally:
        conn.close()  # here too if the test fails: no unclosed socket warning in the next test
        server.stop()
    lines = (received + cut.value.partial).split(b"\n")
    whole = [json.loads(line) for line in lines[:-1]]
    assert len(whole) < 60 and oldest not in {r["execution_id"] for r in whole}
    (line,) = [line for line in audit_lines(runs_dir) if line["event"] == "export"]
    assert line["complete"] is False and line["rows"] < 60
