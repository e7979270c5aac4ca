"""Past one machine, for real: pipelines in their own processes, several gunicorn API hosts, one S3 bucket.

Each "host" has its own index and journal folders; all share the SeaweedFS bucket and the
secret key, as API.md section 7 asks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from execution_history import ExecutionTracker

from .conftest import PROJECT, LiveServer, store_for
from .s3server import BUCKET, SeaweedFS

SECRET = "shared-by-every-host"


def get(url: str, timeout: float = 30) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def runs(server: LiveServer, query: str = "") -> dict:
    status, _, body = get(f"{server.url}/api/runs?limit=100{query}")
    assert status == 200, body[:300]
    return json.loads(body)


def host_env(store, tmp_path: Path, name: str, endpoint: str | None = None) -> dict:
    """One host's settings: its own index and journals, the shared store and key."""
    env = {"RUN_HISTORY_DIR": store.url, "RUN_HISTORY_SECRET_KEY": SECRET,
           "RUN_HISTORY_INDEX_DIR": str(tmp_path / name / "index"),
           "RUN_HISTORY_JOURNAL_DIR": str(tmp_path / name / "journal"), "WEB_CONCURRENCY": "2"}
    if endpoint:
        env["RUN_HISTORY_S3_ENDPOINT_URL"] = endpoint
    return env


PIPELINE = textwrap.dedent("""
    import sys, time
    from execution_history import ExecutionTracker
    run = ExecutionTracker(sys.argv[1], "eco", "kids")
    for n in range(int(sys.argv[2])):
        run.log_user_input_text(f"{sys.argv[1]} Blume {n}")
    print(run.execution_id, flush=True)
    if sys.argv[3] == "hang":
        time.sleep(600)
    run.finalize()
""")


def pipeline(env: dict, config: str, items: int = 3, hang: bool = False) -> subprocess.Popen:
    """A pipeline in its own process (its own host: its own journal folder)."""
    return subprocess.Popen([sys.executable, "-c", PIPELINE, config, str(items), "hang" if hang else "finish"],
                            cwd=PROJECT, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


def run_pipeline(env: dict, config: str, items: int = 3) -> str:
    """A pipeline run to its end in its own process; its execution id."""
    result = subprocess.run([sys.executable, "-c", PIPELINE, config, str(items), "finish"], cwd=PROJECT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_listed(servers: list[LiveServer], execution_id: str, within: float, query: str = "") -> float:
    """Seconds until every server lists *execution_id* (fails past *within*)."""
    started = time.monotonic()
    pending = list(servers)
    while pending:
        pending = [s for s in pending
                   if execution_id not in {e["execution_id"] for e in runs(s, query)["executions"]}]
        elapsed = time.monotonic() - started
        assert elapsed < within, f"{execution_id} not listed by {[s.url for s in pending]} within {within} s"
        if pending:
            time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def s3(s3_server, runs_dir):
    return store_for("s3", runs_dir)


@pytest.fixture
def two_hosts(s3, tmp_path):
    servers = [LiveServer(s3.url, tmp_path / f"api{n}.log", extra_env=host_env(s3, tmp_path, f"api{n}"))
               for n in (1, 2)]
    yield servers
    for server in servers:
        server.stop()


def test_pipelines_on_several_hosts_and_two_api_hosts_list_every_run_within_2s(s3, two_hosts, tmp_path):
    for server in two_hosts:
        assert runs(server)["total"] == 0
    ids = []
    for n in range(3):
        ids.append(run_pipeline(host_env(s3, tmp_path, f"gpu{n}"), f"gpu{n}"))
        # each run is listed by both API hosts within 2 s of its publication
        wait_listed(two_hosts, ids[-1], within=2.0, query="&status=completed")
    for n in range(3):
        assert list((tmp_path / f"gpu{n}" / "journal").iterdir()) == []  # published, journal gone
    for server in two_hosts:
        body = runs(server)
        assert sorted(e["execution_id"] for e in body["executions"]) == sorted(ids)
        status, _, raw = get(f"{server.url}/api/runs?q=Blume+2")
        assert json.loads(raw)["total"] == 3
        status, headers, raw = get(f"{server.url}/api/runs/export/jsonl")
        assert status == 200 and headers["X-Total-Count"] == "3"
        assert sorted(json.loads(line)["execution_id"] for line in raw.splitlines()) == sorted(ids)


def test_an_index_deleted_under_a_live_host_is_rebuilt_from_the_bucket(s3, two_hosts, tmp_path):
    ids = []
    for n in range(4):
        ids.append(run_pipeline(host_env(s3, tmp_path, "gpu"), f"r{n}"))
    wait_listed(two_hosts, ids[-1], within=5.0)
    before = runs(two_hosts[0])
    shutil.rmtree(tmp_path / "api1" / "index")
    assert runs(two_hosts[0]) == before
    assert (tmp_path / "api1" / "index").is_dir()
    status, _, body = get(f"{two_hosts[0].url}/api/runs/stats")
    assert json.loads(body)["total_records"] == 4 and json.loads(body)["storage_dir"] == s3.url


def test_a_pipeline_killed_is_recovered_into_the_bucket_and_listed(s3, two_hosts, tmp_path):
    env = host_env(s3, tmp_path, "gpu")
    proc = pipeline(env, "killed", items=5, hang=True)
    execution_id = proc.stdout.readline().strip()
    # its host's API lists it as running (hosts that share its journal folder), the other does not
    local_api = LiveServer(s3.url, tmp_path / "gpu-api.log", extra_env={**env, "RUN_HISTORY_INDEX_DIR":
                                                                         str(tmp_path / "gpu" / "api-index")})
    try:
        assert runs(local_api, "&status=running")["total"] == 1
        assert runs(two_hosts[0], "&status=running")["total"] == 0
    finally:
        local_api.stop()  # else its background recovery would publish the run before `runs recover`
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "runs", "recover"], cwd=PROJECT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert execution_id in result.stdout
    record = s3.load(execution_id)
    assert record["status"] == "interrupted" and len(record["items"]) == 5
    wait_listed(two_hosts, execution_id, within=2.0, query="&status=interrupted")


def test_a_store_that_refuses_at_finalize_keeps_the_record_and_recover_publishes_it(s3, tmp_path, caplog):
    from execution_history import ExecutionTracker, StorageError, stores

    class Refusing(type(s3)):
        def save(self, record):
            raise StorageError("Run could not be saved", reason="endpoint down")

    refusing = Refusing(s3.url)
    with ExecutionTracker("refused", store=refusing, journal_dir=tmp_path / "j") as run:
        run.log_user_input_text("kept")
    assert "run not saved (endpoint down); kept in its journal" in caplog.text
    pending = stores.state_dir(s3) / "pending" / f"{run.execution_id}.json"
    assert pending.exists() and str(pending) in caplog.text
    assert stores.recover(s3, tmp_path / "j") == [run.execution_id]
    assert s3.load(run.execution_id)["status"] == "completed"
    assert not pending.exists() and list((tmp_path / "j").iterdir()) == []


@pytest.fixture
def own_server(tmp_path):
    """A SeaweedFS of this test's own, which the test pauses (the session's keeps serving others)."""
    server = SeaweedFS(tmp_path / "weed")
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def test_endpoint_stopped_mid_request_is_json_503_then_recovers_and_nothing_is_lost(own_server, tmp_path,
                                                                                   monkeypatch):
    from execution_history.s3store import S3Store

    for name, value in own_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{BUCKET}/outage", endpoint_url=own_server.endpoint)
    # The API host and the pipeline give up on the stopped endpoint after 1 s, twice (the
    # defaults are 5 s, twice): the same 503s and kept records, minutes sooner.
    quick = {"RUN_HISTORY_S3_CONNECT_TIMEOUT": "1", "RUN_HISTORY_S3_READ_TIMEOUT": "1", "AWS_MAX_ATTEMPTS": "2"}
    env = {**host_env(store, tmp_path, "api", endpoint=own_server.endpoint), **quick}
    gpu = {**host_env(store, tmp_path, "gpu", endpoint=own_server.endpoint), **quick}
    ids = []
    for n in range(80):  # more than S3Store reads ahead, so the export is still reading when the endpoint stops
        with ExecutionTracker(f"before{n % 3}", store=store, journal_dir=tmp_path / "gpu" / "journal") as run:
            run.log_user_input_text("x" * 2000)
        ids.append(run.execution_id)
    server = LiveServer(store.url, tmp_path / "api.log", extra_env=env)
    try:
        try:
            assert runs(server)["total"] == 80
            # a bulk export on its way when the endpoint stops: cut, never a short file that looks whole
            request = urllib.request.urlopen(f"{server.url}/api/runs/export/jsonl", timeout=60)
            first = request.read(100)
            own_server.pause()
            with pytest.raises(Exception):  # IncompleteRead / connection reset: the download is incomplete
                first += request.read()
                raise AssertionError(f"export completed with {len(first.splitlines())} runs")
            for path in ("/api/runs", "/api/runs/stats", f"/api/runs/{ids[0]}", "/api/runs/export/csv"):
                started = time.monotonic()
                status, headers, body = get(f"{server.url}{path}")
                assert status == 503, (path, body[:300])
                assert json.loads(body)["code"] == "STORE_UNAVAILABLE" and int(headers["Retry-After"]) > 0
                assert time.monotonic() - started < 10  # the configured timeouts, not a hang
            # a pipeline finishing meanwhile keeps its run
            late_id = run_pipeline(gpu, "during", items=2)
        finally:
            own_server.resume()
        deadline = time.monotonic() + 30
        while get(f"{server.url}/api/runs")[0] != 200:
            assert time.monotonic() < deadline, "the API did not recover when the endpoint came back"
            time.sleep(0.2)
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "runs", "recover"], cwd=PROJECT,
                                env={**os.environ, **gpu}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        # published by `runs recover`, or already by the API host's background recovery (same
        # machine, same per-user state folder): either way it is in the bucket and listed
        assert store.load(late_id)["status"] == "completed"
        wait_listed([server], late_id, within=2.0)
        body = runs(server)
        assert body["total"] == 81
        status, headers, raw = get(f"{server.url}/api/runs/export/jsonl")
        assert status == 200 and len(raw.splitlines()) == 81
    finally:
        server.stop()


def test_a_run_deleted_on_one_api_host_leaves_every_host_within_2s(s3, tmp_path):
    from app.auth import TokenStore

    tokens = TokenStore(tmp_path / "tokens.json")
    admin = tokens.create("root", "admin")
    servers = [LiveServer(s3.url, tmp_path / f"api{n}.log", extra_env={
        **host_env(s3, tmp_path, f"api{n}"), "RUN_HISTORY_TOKENS": str(tokens.path)}) for n in (1, 2)]
    try:
        gone, kept = run_pipeline(host_env(s3, tmp_path, "gpu1"), "dada"), run_pipeline(host_env(s3, tmp_path, "gpu1"),
                                                                                           "dada")

        def listed(server):
            request = urllib.request.Request(f"{server.url}/api/runs?limit=100",
                                             headers={"Authorization": f"Bearer {admin}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return {e["execution_id"] for e in json.loads(response.read())["executions"]}

        deadline = time.monotonic() + 10
        while not all({gone, kept} <= listed(s) for s in servers):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        request = urllib.request.Request(f"{servers[0].url}/api/runs/{gone}", method="DELETE",
                                         headers={"Authorization": f"Bearer {admin}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 204
        assert gone not in listed(servers[0])  # the host that deleted: at once
        started = time.monotonic()
        while gone in listed(servers[1]):
            assert time.monotonic() - started < 2, "the other host still lists the deleted run"
            time.sleep(0.05)
        assert kept in listed(servers[1]) and gone not in s3.list_ids()
    finally:
        for server in servers:
            server.stop()
