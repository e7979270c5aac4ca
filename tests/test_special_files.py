"""Files named like records that are not regular files: never opened blocking, never served, counted."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import urllib.error
import urllib.request

import pytest

from execution_history.index import RunIndex

from .conftest import LiveServer, assert_error
from .hostile_records import make_special_files

#: Client timeout: a request blocked on a FIFO fails the test instead of hanging the suite.
TIMEOUT = 20


@pytest.fixture(autouse=True)
def no_hang():
    """A read blocked on a FIFO in this process fails the test (SIGALRM interrupts open())."""
    def fail(signum, frame):
        raise Hung("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT, 1)  # and every second after, should one be swallowed
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


class Hung(BaseException):
    """Not an OSError, so no ``except OSError`` on the way swallows it."""


def test_special_files_are_counted_unreadable_and_never_served(client, store, recorded_runs):
    special = make_special_files(store.root)
    stats = client.get("/api/runs/stats").get_json()
    assert stats["unreadable_records"] == len(special)
    assert stats["total_records"] == len(recorded_runs)
    assert store.scan_stats() == stats
    for execution_id in special:
        assert_error(client.get(f"/api/runs/{execution_id}"), 404, "NOT_FOUND")
        assert_error(client.get(f"/api/runs/{execution_id}/export/json"), 404, "NOT_FOUND")
    listed = client.get("/api/runs?limit=100").get_json()
    assert sorted(r["execution_id"] for r in listed["executions"]) == sorted(recorded_runs)
    export = client.get("/api/runs/export/jsonl")
    lines = [json.loads(line) for line in export.data.decode().splitlines()]
    assert int(export.headers["X-Total-Count"]) == len(lines) == len(recorded_runs)


def test_a_full_rescan_keeps_counting_them_without_reading_them(store, recorded_runs, monkeypatch):
    special = make_special_files(store.root)
    index = RunIndex(store)
    assert index.stats()["unreadable_records"] == len(special)
    import execution_history.index.sync as sync_module  # where the scan reads files
    read = []
    monkeypatch.setattr(sync_module, "read_indexed", lambda path, i, text=True: read.append(i))
    index.sync(full=True)
    assert index.stats()["unreadable_records"] == len(special) and read == []


def get(server: LiveServer, path: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(server.url + path, timeout=TIMEOUT) as response:
        return response.status, dict(response.headers), response.read()


def assert_everything_answers(server: LiveServer, runs: list[str], word: str, fifos: int) -> None:
    status, _, body = get(server, "/api/runs?limit=100")
    assert status == 200 and sorted(r["execution_id"] for r in json.loads(body)["executions"]) == sorted(runs)
    stats = json.loads(get(server, "/api/runs/stats")[2])
    assert stats["unreadable_records"] == fifos and stats["total_records"] == len(runs)
    found = json.loads(get(server, f"/api/runs?q={word}")[2])
    assert found["total"] >= 1
    status, headers, body = get(server, "/api/runs/export/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert status == 200 and int(headers["X-Total-Count"]) == len(rows) == len(runs)


def test_fifos_at_start_up_and_while_serving_hang_nothing(runs_dir, tmp_path, store, recorded_runs):
    os.mkfifo(runs_dir / "exec_20250101_000000_0000f1f0.json")
    content = store.load(recorded_runs[0])["items"]
    word = next(w for item in content if item["content"] for w in re.findall(r"[A-Za-z]{4,}", item["content"]))
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    try:
        assert_everything_answers(server, recorded_runs, word, fifos=1)
        os.mkfifo(runs_dir / "exec_20250102_000000_0000f1f1.json")
        assert_everything_answers(server, recorded_runs, word, fifos=2)
        with pytest.raises(urllib.error.HTTPError) as err:
            get(server, "/api/runs/exec_20250102_000000_0000f1f1")
        assert err.value.code == 404 and json.loads(err.value.read())["code"] == "NOT_FOUND"
    finally:
        server.stop()
    assert "WORKER TIMEOUT" not in server.log_path.read_text()
