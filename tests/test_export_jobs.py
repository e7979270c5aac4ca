"""Export jobs through a real gunicorn: progress, the file, 409/410, delete, scoping, a killed server."""
from __future__ import annotations

import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import openpyxl
import pytest

from app.auth import TokenStore
from bench.common import make_record
from execution_history.records import dump_record

from .conftest import LiveServer, audit_events

#: Runs behind the module's server; its jobs take 0.02 s a run more (the test hook), so a job
#: of them all runs for seconds and its progress can be watched (1,500 runs without the hook
#: took as long to watch, and as long again to export directly and parse both).
RUNS = 150
RUN_DELAY = "0.02"
#: Seconds without a heartbeat before a job's worker counts as dead, in the killed-worker tests
#: (the default, 15, would only make them wait longer): eight heartbeats.
STALE_AFTER = "4"


def write_runs(folder: Path, count: int, start: int = 0, user: str | None = None) -> list[str]:
    """Record files written directly (the tracker is too slow for thousands)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for n in range(start, start + count):
        record = make_record(n)
        if user is not None:
            record["user_id"] = user
        (folder / f"{record['execution_id']}.json").write_bytes(dump_record(record))
        ids.append(record["execution_id"])
    return ids


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    """(status, headers, bytes) of one request."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def wait_for(url: str, states=("done", "failed", "expired"), token: str | None = None, timeout: float = 180.0):
    """Poll a job until it reaches one of *states*; returns every body seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, data = call(url, token=token)
        assert status == 200, data
        seen.append(json.loads(data))
        if seen[-1]["state"] in states:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job still {seen[-1]['state']} after {timeout} s")


def workbook_rows(data: bytes) -> dict[str, list[tuple]]:
    book = openpyxl.load_workbook(io.BytesIO(data))
    rows = {name: list(book[name].iter_rows(values_only=True)) for name in ("Runs", "Items")}
    rows["About"] = [row for row in book["About"].iter_rows(values_only=True) if row[0] != "exported_at"]
    return rows


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A gunicorn (two workers) over RUNS runs, its jobs slowed down by RUN_DELAY a run."""
    root = tmp_path_factory.mktemp("jobs")
    ids = write_runs(root / "runs", RUNS)
    server = LiveServer(root / "runs", root / "gunicorn.log", extra_env={"RUN_HISTORY_TEST_EXPORT_DELAY": RUN_DELAY})
    server.wait_for_index()
    yield server, root / "runs", ids
    server.stop()


def test_a_job_reports_progress_and_delivers_the_direct_export(many):
    server, runs_dir, ids = many
    query = "order_by=timestamp&order=asc"
    status, _, direct = call(f"{server.url}/api/runs/export/xlsx?{query}")
    assert status == 200
    status, headers, data = call(f"{server.url}/api/exports", "POST",
                                 {"format": "xlsx", "filters": {"order_by": "timestamp", "order": "asc"}})
    assert status == 202, data
    job = json.loads(data)
    assert job["state"] == "queued" and job["runs_total"] == RUNS and headers["Location"] == job["status_url"]
    status, _, data = call(f"{server.url}/api/exports/{job['id']}/download")
    assert status == 409 and json.loads(data)["code"] == "NOT_READY"
    # A run recorded after the job was queued is not in its file (the selection is the POST's).
    late = write_runs(runs_dir, 1, start=RUNS + 10)[0]
    seen = wait_for(job["status_url"])
    final = seen[-1]
    assert final["state"] == "done", final
    percents = [body["percent"] for body in seen]
    assert percents == sorted(percents)
    assert len({p for p in percents if 0 < p < 100}) >= 2, percents  # progress moved while running
    running = [body for body in seen if body["state"] == "running"]
    assert any(0 < body["runs_done"] < RUNS for body in running)
    assert any(body["eta_seconds"] is not None and body["eta_seconds"] > 0 for body in running)
    status, headers, data = call(final["download_url"])
    assert status == 200 and headers["Content-Disposition"].startswith('attachment; filename="runs_')
    assert headers["Content-Type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    assert len(data) == final["size_bytes"]
    assert workbook_rows(data) == workbook_rows(direct)
    assert [row[0] for row in workbook_rows(data)["Runs"][1:]] == ids
    _, _, after = call(f"{server.url}/api/runs/export/jsonl?{query}")
    assert late in [json.loads(line)["execution_id"] for line in after.splitlines()]  # the filters do select it


def test_jsonl_job_equals_the_direct_export_with_filters(many):
    server, _, _ = many
    status, _, direct = call(f"{server.url}/api/runs/export/jsonl?config=dada&status=completed")
    status, _, data = call(f"{server.url}/api/exports", "POST",
                           {"format": "JSONL", "filters": {"config": "dada", "status": "completed"}})
    assert status == 202
    final = wait_for(json.loads(data)["status_url"])[-1]
    assert final["state"] == "done" and final["format"] == "jsonl"
    _, headers, got = call(final["download_url"])
    assert headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert [json.loads(line) for line in got.splitlines()] == [json.loads(line) for line in direct.splitlines()]


def test_bad_requests_get_the_contract_errors(many):
    server, _, _ = many
    for body, status, code in [({"format": "txt"}, 400, "INVALID_FORMAT"),
                               ({"format": "pdf"}, 501, "FORMAT_NOT_IMPLEMENTED"),
                               ({"format": "csv", "filters": {"colour": "red"}}, 400, "UNKNOWN_PARAMETER"),
                               ({"format": "csv", "options": {"shape": "cubes"}}, 400, "INVALID_PARAMETER"),
                               ({"format": "csv", "filters": {"config": {"a": 1}}}, 400, "INVALID_PARAMETER"),
                               ({"fmt": "csv"}, 400, "UNKNOWN_PARAMETER"), ({}, 400, "INVALID_PARAMETER")]:
        got, _, data = call(f"{server.url}/api/exports", "POST", body)
        assert (got, json.loads(data)["code"]) == (status, code), body
    for path in ("exports/0123456789abcdef0123456789abcdef", "exports/../etc", "exports/x/download"):
        got, _, data = call(f"{server.url}/api/{path}")
        assert got == 404 and json.loads(data)["code"] == "NOT_FOUND"


def test_delete_cancels_a_job_and_then_it_is_gone(many):
    server, runs_dir, _ = many
    _, _, data = call(f"{server.url}/api/exports", "POST", {"format": "xlsx"})
    job = json.loads(data)
    status, _, _ = call(job["status_url"], "DELETE")
    assert status == 204
    assert call(job["status_url"])[0] == 404
    assert call(job["status_url"] + "/download")[0] == 404
    assert call(job["status_url"], "DELETE")[0] == 404
    _, _, listed = call(f"{server.url}/api/exports")
    assert job["id"] not in [j["id"] for j in json.loads(listed)["jobs"]]
    # Its runner (if it had started) stops, and housekeeping removes whatever it wrote meanwhile.
    jobs_dir = runs_dir / ".side" / "jobs"
    deadline = time.monotonic() + 60
    while sorted(p.name for p in jobs_dir.glob(f"{job['id']}.*")) != [f"{job['id']}.deleted"]:
        assert time.monotonic() < deadline, sorted(p.name for p in jobs_dir.glob(f"{job['id']}.*"))
        time.sleep(0.2)


def test_the_file_is_gone_after_the_ttl(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, 5)
    server = LiveServer(runs, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_EXPORT_TTL": "0"})
    try:
        _, _, data = call(f"{server.url}/api/exports", "POST", {"format": "csv", "options": {"bom": True}})
        job = json.loads(data)
        final = wait_for(job["status_url"], states=("expired", "failed"))[-1]
        assert final["state"] == "expired" and final["download_url"] is None
        status, _, data = call(job["status_url"] + "/download")
        assert status == 410 and json.loads(data)["code"] == "EXPORT_EXPIRED"
        assert not (runs / ".side" / "jobs" / f"{job['id']}.file").exists()
    finally:
        server.stop()


def test_researchers_see_only_their_own_jobs(tmp_path):
    runs = tmp_path / "runs"
    alice_runs = write_runs(runs, 4, user="alice")
    write_runs(runs, 3, start=100, user="bob")
    tokens = TokenStore(tmp_path / "tokens.json")
    alice, bob, admin = (tokens.create("alice", "researcher"), tokens.create("bob", "researcher"),
                         tokens.create("root", "admin"))
    server = LiveServer(runs, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TOKENS": str(tokens.path)})
    try:
        assert call(f"{server.url}/api/exports", "POST", {"format": "json"})[0] == 401
        _, _, data = call(f"{server.url}/api/exports", "POST", {"format": "json"}, token=alice)
        job = json.loads(data)
        assert job["runs_total"] == 4 and job["user"] == "alice"
        assert call(job["status_url"], token=bob)[0] == 404
        assert call(job["status_url"], "DELETE", token=bob)[0] == 404
        assert json.loads(call(f"{server.url}/api/exports", token=bob)[2])["jobs"] == []
        assert [j["id"] for j in json.loads(call(f"{server.url}/api/exports", token=admin)[2])["jobs"]] == [job["id"]]
        final = wait_for(job["status_url"], token=alice)[-1]
        assert call(final["download_url"], token=bob)[0] == 404
        status, _, got = call(final["download_url"], token=alice)
        assert status == 200 and sorted(r["execution_id"] for r in json.loads(got)) == sorted(alice_runs)
        wanted = {("export_job", "alice", 202), ("export_download", "alice", 200), ("export_download", "bob", 404)}
        audit = audit_events(tmp_path / "audit.log",
                             until=lambda lines: wanted <= {(e["event"], e["user"], e["status"]) for e in lines})
        events = [(e["event"], e["user"], e["status"]) for e in audit if e["event"].startswith("export_")]
        assert ("export_job", "alice", 202) in events and ("export_download", "alice", 200) in events
        assert ("export_download", "bob", 404) in events
    finally:
        server.stop()


def gunicorn_pids(server: LiveServer) -> list[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return [server.proc.pid, *map(int, children)]


def start_mid_run(server: LiveServer) -> dict:
    """An XLSX job of every run, once it has done some (the server's test delay keeps it running)."""
    _, _, data = call(f"{server.url}/api/exports", "POST", {"format": "xlsx"})
    job = json.loads(data)
    seen = wait_for(job["status_url"], states=("running",))
    while seen[-1]["runs_done"] == 0:
        seen = wait_for(job["status_url"], states=("running",))
    return job


def wait_stored_failed(runs: Path, job_id: str, timeout: float = 60) -> None:
    """Wait until the job's stored state (not an answer computed on reading) says failed."""
    stored = runs / ".side" / "jobs" / f"{job_id}.json"
    deadline = time.monotonic() + timeout
    while json.loads(stored.read_text())["state"] != "failed":
        assert time.monotonic() < deadline, f"the failure was never recorded: {json.loads(stored.read_text())['state']}"
        time.sleep(0.2)


def slow_job_server(runs, log_path):
    """gunicorn whose jobs take 0.1 s a run (the test hook), so one is surely mid-run when killed,
    and whose silent job workers count as dead after STALE_AFTER seconds."""
    return LiveServer(runs, log_path, extra_env={"RUN_HISTORY_TEST_EXPORT_DELAY": "0.1",
                                                 "RUN_HISTORY_EXPORT_STALE_AFTER": STALE_AFTER})


def test_a_job_of_a_killed_server_ends_failed_never_running(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, 300)
    server = slow_job_server(runs, tmp_path / "first.log")
    try:
        job = start_mid_run(server)
        for pid in gunicorn_pids(server):  # arbiter and workers at once: nothing gets to clean up
            os.kill(pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    path = job["status_url"].split("/api/", 1)[1]
    restarted = LiveServer(runs, tmp_path / "second.log", extra_env={"RUN_HISTORY_EXPORT_STALE_AFTER": STALE_AFTER})
    try:
        start = time.monotonic()
        final = wait_for(f"{restarted.url}/api/{path}", states=("failed", "done"), timeout=60)[-1]
        assert time.monotonic() - start < 60
        assert final["state"] == "failed" and f"no heartbeat for {STALE_AFTER} s" in final["error"], final
        # Housekeeping records it too (not only reads): the stored state says failed.
        wait_stored_failed(runs, job["id"])
        status, _, data = call(f"{restarted.url}/api/{path}/download")
        assert status == 409 and json.loads(data)["code"] == "NOT_READY"
    finally:
        restarted.stop()


def test_a_job_whose_workers_are_killed_ends_failed_with_no_request_needed(tmp_path):
    """SIGKILL the workers only: gunicorn starts new ones, whose executors (started after the
    fork, since jobs exist) record the job failed within a minute, before anyone asks."""
    runs = tmp_path / "runs"
    write_runs(runs, 300)
    server = slow_job_server(runs, tmp_path / "gunicorn.log")
    try:
        job = start_mid_run(server)
        workers = gunicorn_pids(server)[1:]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_stored_failed(runs, job["id"])  # no HTTP request meanwhile
        assert not set(workers) & set(gunicorn_pids(server)[1:])  # new workers did it
        final = json.loads(call(job["status_url"])[2])
        assert final["state"] == "failed" and f"no heartbeat for {STALE_AFTER} s" in final["error"], final
    finally:
        server.stop()


def test_a_restarted_server_deletes_expired_files_unasked(tmp_path):
    """Housekeeping deletes a file past its TTL (and records the job expired) without a
    download or status call for it."""
    runs = tmp_path / "runs"
    write_runs(runs, 5)
    server = LiveServer(runs, tmp_path / "first.log")
    try:
        _, _, data = call(f"{server.url}/api/exports", "POST", {"format": "json"})
        job = json.loads(data)
        assert wait_for(job["status_url"])[-1]["state"] == "done"
    finally:
        server.stop()
    file = runs / ".side" / "jobs" / f"{job['id']}.file"
    assert file.exists()
    restarted = LiveServer(runs, tmp_path / "second.log", extra_env={"RUN_HISTORY_EXPORT_TTL": "0"})
    try:
        stored = runs / ".side" / "jobs" / f"{job['id']}.json"
        deadline = time.monotonic() + 30
        # the file goes first, then the state is written (JobStore.expire): wait for both
        while file.exists() or json.loads(stored.read_text())["state"] != "expired":
            assert time.monotonic() < deadline, "the expired file was not deleted, or the job not recorded expired"
            time.sleep(0.2)
        assert not file.exists() and json.loads(stored.read_text())["state"] == "expired"
    finally:
        restarted.stop()


# ---------------------------------------------------------------- on S3: every host answers the same

S3_RUNS = 100


@pytest.fixture
def s3_runs(s3_server, runs_dir):
    """An S3 store (SeaweedFS) holding S3_RUNS runs; their ids in the list's ascending order."""
    from .conftest import store_for

    store = store_for("s3", runs_dir)
    ids = []
    for n in range(S3_RUNS):
        ids.append(store.save(make_record(n)).execution_id)
    return store, sorted(ids)


def s3_host(store, tmp_path: Path, name: str, **extra: str) -> LiveServer:
    """One API host on the bucket: its own index, the shared secret key."""
    from .test_several_hosts import host_env

    return LiveServer(store.url, tmp_path / f"{name}.log", extra_env={**host_env(store, tmp_path, name), **extra})


def test_on_s3_a_job_queued_on_one_host_is_watched_and_downloaded_on_another(s3_runs, tmp_path):
    store, ids = s3_runs
    # 0.02 s a run: two seconds of rows, so the other host sees it running.
    hosts = [s3_host(store, tmp_path, name, RUN_HISTORY_TEST_EXPORT_DELAY="0.02") for name in ("api1", "api2")]
    one, two = hosts
    try:
        query = {"order_by": "timestamp", "order": "asc"}
        status, _, direct = call(f"{one.url}/api/runs/export/xlsx?order_by=timestamp&order=asc")
        assert status == 200
        status, headers, data = call(f"{one.url}/api/exports", "POST", {"format": "xlsx", "filters": query})
        assert status == 202, data
        job = json.loads(data)
        assert job["runs_total"] == S3_RUNS
        path = f"api/exports/{job['id']}"
        assert call(f"{two.url}/{path}/download")[0] == 409  # the other host knows it, not done yet
        seen = wait_for(f"{two.url}/{path}")
        final = seen[-1]
        assert final["state"] == "done", final
        assert any(body["state"] == "running" and 0 < body["percent"] < 100 for body in seen), seen
        percents = [body["percent"] for body in seen]
        assert percents == sorted(percents)
        assert json.loads(call(f"{one.url}/{path}")[2])["size_bytes"] == final["size_bytes"]
        status, _, got = call(f"{two.url}/{path}/download")
        assert status == 200 and len(got) == final["size_bytes"]
        assert workbook_rows(got) == workbook_rows(direct)
        assert [row[0] for row in workbook_rows(got)["Runs"][1:]] == ids
        # The job's state and file are objects under the bucket's side area, nothing local.
        side_keys = store.side.list("jobs")
        assert {f"jobs/{job['id']}.json", f"jobs/{job['id']}.file", f"jobs/{job['id']}.claim"} <= set(side_keys)
        assert [j["id"] for j in json.loads(call(f"{two.url}/api/exports")[2])["jobs"]] == [job["id"]]
        assert call(f"{two.url}/{path}", "DELETE")[0] == 204
        assert call(f"{one.url}/{path}")[0] == 404 and call(f"{one.url}/{path}/download")[0] == 404
    finally:
        for host in hosts:
            host.stop()


def test_on_s3_the_job_of_a_killed_host_ends_failed_on_the_other(s3_runs, tmp_path):
    store, _ = s3_runs
    first = s3_host(store, tmp_path, "api1", RUN_HISTORY_TEST_EXPORT_DELAY="0.2",  # 20 s of rows: surely mid-run
                    RUN_HISTORY_EXPORT_STALE_AFTER=STALE_AFTER)
    try:
        _, _, data = call(f"{first.url}/api/exports", "POST", {"format": "xlsx"})
        job = json.loads(data)
        seen = wait_for(job["status_url"], states=("running",))
        while seen[-1]["runs_done"] == 0:
            seen = wait_for(job["status_url"], states=("running",))
        second = s3_host(store, tmp_path, "api2",  # started after the first host claimed the job
                         RUN_HISTORY_EXPORT_STALE_AFTER=STALE_AFTER)
        for pid in gunicorn_pids(first):
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    try:
        start = time.monotonic()
        final = wait_for(f"{second.url}/api/exports/{job['id']}", states=("failed", "done"), timeout=60)[-1]
        assert time.monotonic() - start < 60
        assert final["state"] == "failed" and f"no heartbeat for {STALE_AFTER} s" in final["error"], final
        deadline = time.monotonic() + 60
        while json.loads(store.side.get(f"jobs/{job['id']}.json"))["state"] != "failed":
            assert time.monotonic() < deadline, "the other host never recorded the failure"
            time.sleep(0.2)
    finally:
        second.stop()
