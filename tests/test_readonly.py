"""A read-only data folder (a shared archive) is served fully, through gunicorn, with its index elsewhere.

The tests run as root, which ignores file permissions, so ``chmod a-w`` would prove
nothing: gunicorn runs in a private mount namespace (``unshare -m``) where the data
folder's parent is bind-mounted read-only, a real EROFS. Skipped where mount namespaces
are not allowed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openpyxl
import pytest

from execution_history import ExecutionTracker, stores

from .conftest import PROJECT, LiveServer, free_port

READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


def _namespaces_work(folder) -> bool:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    result = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY, str(folder), "sh", "-c", f"! touch {folder}/x"],
                            capture_output=True, timeout=10)
    return result.returncode == 0


class ReadOnlyServer(LiveServer):
    """gunicorn (shipped config) in a mount namespace where *folder* is read-only."""

    def __init__(self, folder, runs_dir, log_path, env=None) -> None:  # noqa: D107 - LiveServer's, behind a mount
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = {**os.environ, "RUN_HISTORY_DIR": str(runs_dir), **(env or {})}
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", READ_ONLY, str(folder), sys.executable, "-m", "gunicorn",
             "-c", str(PROJECT / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{self.port}", "wsgi:app"],
            cwd=PROJECT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.folder = folder
        self._wait_ready()

    def make_writable(self) -> None:
        """Remount the folder read-write inside the server's namespace (the archive is writable again)."""
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "mount", "-o", "remount,rw,bind",
                        str(self.folder), str(self.folder)], check=True, timeout=10)


def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def test_read_only_data_folder_is_served_fully_and_keeps_working_once_writable(runs_dir, store, recorded_runs,
                                                                             tmp_path):
    archive = runs_dir.parent
    if not _namespaces_work(archive):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    before = sorted(p.name for p in archive.rglob("*"))
    server = ReadOnlyServer(archive, runs_dir, tmp_path.parent / f"{tmp_path.name}-gunicorn.log")
    try:
        status, body = fetch(f"{server.url}/api/runs?limit=100")
        assert status == 200 and json.loads(body)["total"] == len(recorded_runs)
        status, body = fetch(f"{server.url}/api/runs/stats")
        assert json.loads(body) == store.scan_stats()
        assert json.loads(fetch(f"{server.url}/api/runs?q=Stille")[1])["total"] >= 1
        status, body = fetch(f"{server.url}/api/runs/export/csv")
        assert len(list(csv.DictReader(io.StringIO(body.decode())))) == len(recorded_runs)
        status, body = fetch(f"{server.url}/api/runs/export/xlsx")
        assert openpyxl.load_workbook(io.BytesIO(body))["Runs"].max_row == len(recorded_runs) + 1
        status, body = fetch(f"{server.url}/api/runs/export/jsonl")
        assert len(body.splitlines()) == len(recorded_runs)
        assert sorted(p.name for p in archive.rglob("*")) == before  # nothing written into the archive
        state = stores.state_dir(store)
        assert (state / "index" / "runs.sqlite3").exists() and (state / "audit.log").exists()
        assert str(state) in server.log_path.read_text()  # the app said where at start-up

        # writable again: new runs (written outside the namespace) are listed, exports work
        server.make_writable()
        with ExecutionTracker("after", store=store) as run:
            run.log_user_input_text("Blume again")
        deadline = time.monotonic() + 5
        while run.execution_id not in fetch(f"{server.url}/api/runs?config=after")[1].decode():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, body = fetch(f"{server.url}/api/runs/export/jsonl")
        assert status == 200 and len(body.splitlines()) == len(recorded_runs) + 1
    finally:
        server.stop()


def fetch_error(url):
    """(status, JSON body, Retry-After) of a request that must fail."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=60)
    return caught.value.code, json.loads(caught.value.read()), caught.value.headers.get("Retry-After")


def test_an_index_folder_that_cannot_be_written_serves_its_index_then_503_until_writable(
        runs_dir, store, recorded_runs, tmp_path):
    """README "The index": served while nothing must be written; 503 INDEX_UNAVAILABLE (and
    health 503) once a new run or damage needs a write; nothing touched; repaired once writable."""
    index_dir = tmp_path / "index"
    # one worker: health speaks for the worker whose requests failed (README), so it answers for it
    env = {"RUN_HISTORY_INDEX_DIR": str(index_dir), "WEB_CONCURRENCY": "1"}
    if not _namespaces_work(tmp_path):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "runs", "reindex"], cwd=PROJECT, check=True,
                   env={**os.environ, "RUN_HISTORY_DIR": str(runs_dir), **env}, capture_output=True, timeout=120)
    server = ReadOnlyServer(index_dir, runs_dir, tmp_path.parent / f"{tmp_path.name}-gunicorn.log", env)
    try:
        status, body = fetch(f"{server.url}/api/runs?limit=100")
        assert status == 200 and json.loads(body)["total"] == len(recorded_runs)  # nothing to write: served

        with ExecutionTracker("after", store=store) as run:  # a new run: the index must be written
            run.log_user_input_text("Blume")
        status, body, retry = fetch_error(f"{server.url}/api/runs")
        assert (status, body["code"], retry) == (503, "INDEX_UNAVAILABLE", "30")
        assert body["reason"] == os.strerror(30)  # EROFS, said as the system says it
        status, body, retry = fetch_error(f"{server.url}/api/health")  # the load balancer hears it
        assert (status, body["index"], body["code"]) == (503, "unavailable", "INDEX_UNAVAILABLE")
        index_file = index_dir / "runs.sqlite3"
        with open(index_file, "r+b") as damaged:  # and damaged (outside the namespace)
            damaged.write(b"not a database" * 10)
        before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
        status, body, retry = fetch_error(f"{server.url}/api/runs/stats")
        assert (status, body["code"]) == (503, "INDEX_UNAVAILABLE")
        status, body, retry = fetch_error(f"{server.url}/api/health")
        assert (status, body["index"], body["code"], retry) == (503, "unavailable", "INDEX_UNAVAILABLE", "30")
        assert "reason" not in body  # the public route says no more
        assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before  # nothing touched

        server.make_writable()  # the first request repairs it, with the new run
        status, body = fetch(f"{server.url}/api/runs?limit=100")
        assert status == 200 and json.loads(body)["total"] == len(recorded_runs) + 1
        assert json.loads(fetch(f"{server.url}/api/health")[1])["index"] == "ready"
    finally:
        server.stop()


def test_an_empty_index_folder_that_cannot_be_written_answers_503_and_the_cli_says_why(
        runs_dir, recorded_runs, tmp_path):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    env = {"RUN_HISTORY_INDEX_DIR": str(index_dir), "WEB_CONCURRENCY": "1"}
    if not _namespaces_work(tmp_path):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    result = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY, str(index_dir), sys.executable, "-m", "flask",
                             "--app", "wsgi", "runs", "stats"], cwd=PROJECT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "RUN_HISTORY_DIR": str(runs_dir), **env})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stderr.split("Error: ", 1)[1])["code"] == "INDEX_UNAVAILABLE"
    server = ReadOnlyServer(index_dir, runs_dir, tmp_path.parent / f"{tmp_path.name}-gunicorn.log", env)
    try:
        status, body, retry = fetch_error(f"{server.url}/api/runs")
        assert (status, body["code"], retry) == (503, "INDEX_UNAVAILABLE", "30")
        status, body, retry = fetch_error(f"{server.url}/api/health")
        assert (status, body["index"]) == (503, "unavailable")
        assert list(index_dir.iterdir()) == []
        server.make_writable()
        deadline = time.monotonic() + 30
        while True:  # a cold build in the background: 503 INDEX_BUILDING meanwhile
            try:
                status, body = fetch(f"{server.url}/api/runs?limit=100")
                break
            except urllib.error.HTTPError as err:
                assert err.code == 503 and json.loads(err.read())["code"] == "INDEX_BUILDING"
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert json.loads(body)["total"] == len(recorded_runs)
    finally:
        server.stop()


FULL_DISK = """
import json, os, sys
from execution_history import ExecutionTracker, RunStore
from execution_history.errors import IndexUnavailable
from execution_history.index import RunIndex
store, index = RunStore(sys.argv[1]), RunIndex(RunStore(sys.argv[1]), folder=os.path.join(sys.argv[2], "index"))
index.sync()
filler = os.path.join(sys.argv[2], "filler")
with open(filler, "wb") as f:  # the disk fills up
    try:
        while True:
            f.write(bytes(65536)); f.flush()
    except OSError:
        pass
for n in range(100):
    with ExecutionTracker("while-full", store=store) as run:
        run.log_user_input_text(f"text {n} " * 400)
try:
    index.sync()
    failed = None
except IndexUnavailable as err:
    failed = err.to_dict()
os.unlink(filler)  # room again
index.sync()
print(json.dumps({"failed": failed, "indexed": index.state()["runs_indexed"]}))
"""


def test_a_full_disk_under_the_index_answers_503_and_loses_no_run(runs_dir, recorded_runs, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _namespaces_work(tmp_path):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    result = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"',
                             str(disk), sys.executable, "-c", FULL_DISK, str(runs_dir), str(disk)],
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["failed"]["code"] == "INDEX_UNAVAILABLE" and "full" in outcome["failed"]["reason"]
    assert outcome["indexed"] == len(recorded_runs) + 100  # every run, once there is room (the watch's names kept)


TRACK = """
import json, logging, sys
from execution_history import ExecutionTracker
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
with ExecutionTracker("archived", data_dir=sys.argv[1]) as run:
    run.log_user_input_text("Stille")
    run.log_output_text("Post")
print(run.execution_id)
"""


def track_read_only(archive, runs_dir, env=None):
    """A pipeline's tracker writing into *runs_dir* while *archive* is mounted read-only: (id, its log)."""
    result = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY, str(archive), sys.executable, "-c", TRACK,
                             str(runs_dir)], cwd=PROJECT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


@pytest.mark.parametrize("journal", ["state folder", "unwritable"])
def test_a_tracker_on_a_read_only_folder_keeps_the_record_in_pending_and_says_so(runs_dir, store, journal):
    """The record goes to the state folder's pending/ (README "Read-only archives"), the log
    names only places that hold the run, and `runs recover` publishes it once writable."""
    archive = runs_dir.parent
    if not _namespaces_work(archive):
        pytest.skip("mount namespaces (unshare -m) are not available here")
    env = {"RUN_HISTORY_JOURNAL_DIR": str(runs_dir / ".journal")} if journal == "unwritable" else {}
    execution_id, log = track_read_only(archive, runs_dir, env)
    pending = stores.state_dir(store) / "pending" / f"{execution_id}.json"
    assert not store.path_for(execution_id).exists() and pending.exists()
    assert "run not saved" in log and str(pending) in log and "recover" in log
    kept = log.split("kept in ", 1)[1].split(" until ")[0].split(" and ")
    for place in kept:  # every place the log names holds the run (no journal claimed that does not exist)
        assert Path(place.removeprefix("its journal ")).exists(), (place, log)
    assert (journal == "unwritable") == (not any(place.startswith("its journal") for place in kept)), log
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "runs", "recover"], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RUN_HISTORY_DIR": str(runs_dir), **env})
    assert result.returncode == 0, result.stderr
    record = store.load(execution_id)
    assert [item["content"] for item in record["items"]] == ["Stille", "Post"] and record["status"] == "completed"
    assert not pending.exists()
