"""The index's own files damaged under a live gunicorn: JSON answers, never a dead or stalled worker."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import LiveServer

TIMEOUT = 20
PATHS = ("/api/runs?limit=5", "/api/runs/stats", "/api/runs?q=flower", "/api/runs?order_by=items_count",
         "/api/runs?config=dada&offset=2")


def ask(server: LiveServer, path: str) -> tuple[int, dict]:
    """Status and JSON body; a hang or a dropped connection (a dead worker) raises and fails the test."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def hammer(server: LiveServer, rounds: int = 20) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: ask(server, PATHS[n % len(PATHS)]), range(rounds * len(PATHS))))


def index_files(runs_dir) -> list:
    return sorted(p for p in (runs_dir / ".index").iterdir() if p.name.startswith("runs.sqlite3"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_index_side_files_damaged_under_load(runs_dir, tmp_path, recorded_runs, damage):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    try:
        assert all(status == 200 for status, _ in hammer(server, 2))
        side = [path for path in index_files(runs_dir) if path.name != "runs.sqlite3"]
        # the mechanism: a rollback journal, no WAL, so no -shm file any process maps (and dies on)
        assert [path.name for path in side] == ["runs.sqlite3-journal"], side
        (runs_dir / ".index" / "runs.sqlite3-shm").write_bytes(b"")  # a stray one (an older WAL index) too
        side.append(runs_dir / ".index" / "runs.sqlite3-shm")
        for path in side:
            with open(path, "r+b") as handle:  # the -shm / -wal / -journal files, whichever exist
                handle.truncate(0)
                if damage == "garbage":
                    handle.write(os.urandom(4096))
        answers = hammer(server)
    finally:
        server.stop()
    for status, body in answers:
        assert status == 200 or body["code"] in ("INTERNAL_ERROR", "INDEX_BUILDING", "STORE_UNAVAILABLE")
    assert sum(status == 200 for status, _ in answers) >= len(answers) // 2
    log = server.log_path.read_text()
    for sign in ("SIGBUS", "WORKER TIMEOUT", "was sent", "Booting worker"):
        assert log.count(sign) == (2 if sign == "Booting worker" else 0), (sign, log[-3000:])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("name", ["runs.sqlite3", "search.sqlite3"])
def test_a_damaged_index_file_is_rebuilt(runs_dir, tmp_path, recorded_runs, damage, name):
    """The index, or the search database beside it: thrown away and made again, lists and
    searches answering as before (a search 503 while the text is indexed again)."""
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    try:
        assert ask(server, "/api/runs/stats")[1]["total_records"] == len(recorded_runs)
        searched = ask(server, "/api/runs?q=flower&limit=100")
        assert searched[0] == 200 and searched[1]["total"] > 0
        with open(runs_dir / ".index" / name, "r+b") as handle:
            if damage == "truncate":
                handle.truncate(4096)
            else:  # every page but the header's
                size = handle.seek(0, os.SEEK_END)
                handle.seek(4096)
                handle.write(os.urandom(size - 4096))
        server.stop()  # fresh workers: nothing cached from before the damage
        server = LiveServer(runs_dir, tmp_path / "gunicorn2.log")
        answers = hammer(server, 2)
        final = ask(server, "/api/runs/stats")
        deadline = time.monotonic() + TIMEOUT
        while (found := ask(server, "/api/runs?q=flower&limit=100"))[0] == 503 and time.monotonic() < deadline:
            time.sleep(0.2)  # the text indexed again
    finally:
        server.stop()
    assert all(status == 200 or body["code"] in ("INTERNAL_ERROR", "INDEX_BUILDING") for status, body in answers)
    assert final[0] == 200 and final[1]["total_records"] == len(recorded_runs)
    assert found == searched
    assert "SIGBUS" not in server.log_path.read_text()


def test_an_older_wal_index_is_turned_to_a_rollback_journal_and_survives_a_truncated_shm(runs_dir, tmp_path,
                                                                                      recorded_runs):
    """An index left in WAL mode (an earlier release) has a -shm file every worker maps; the
    app switches it to the rollback journal at open, so truncating -shm kills nothing."""
    import sqlite3

    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    assert ask(server, "/api/runs/stats")[1]["total_records"] == len(recorded_runs)
    server.stop()
    database = runs_dir / ".index" / "runs.sqlite3"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    server = LiveServer(runs_dir, tmp_path / "gunicorn2.log")
    try:
        assert all(status == 200 for status, _ in hammer(server, 2))
        with sqlite3.connect(database) as conn:  # WAL persists in the file; rollback modes are per connection
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
        shm = runs_dir / ".index" / "runs.sqlite3-shm"
        shm.write_bytes(b"")
        answers = hammer(server)
    finally:
        server.stop()
    assert all(status == 200 for status, _ in answers)
    log = server.log_path.read_text()
    assert "SIGBUS" not in log and "WORKER TIMEOUT" not in log and log.count("Booting worker") == 2
