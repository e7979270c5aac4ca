"""Shared fixtures: a data folder, runs recorded by the real tracker (one hostile), the app."""
from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.taxonomy import TAXONOMY

#: Strings every format must carry unharmed.
HOSTILE = {
    "control": "nul\x00 bell\x07 vt\x0b esc\x1b del\x7f c1\x85 end",
    "formula": "=cmd|' /C calc'!A0",
    "formula_plus": "+1+2",
    "formula_minus": "-2+3",
    "formula_at": "@SUM(A1:A2)",
    "formula_tab": "\t=1",
    "formula_cr": "\r=1",
    "quotes": 'she said "hi", then left;\r\nnext line\nand\rmore',
    "emoji": "🌸🤖 👩‍🔬 family: 👨‍👩‍👧",
    "rtl": "مرحبا بالعالم \u202e evil \u202c שלום",
    "xss": "<script>alert(1)</script>",
    "long": ("Stille Post 🌸 " * 7000)[:100_000],
}


class StepClock:
    """A clock that moves on one second per reading from *start*."""

    def __init__(self, start: dt.datetime) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=next(self._ticks))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """An empty data folder."""
    path = tmp_path / "pipeline_runs"
    path.mkdir()
    return path


# ---------------------------------------------------------------- the stores: local folder and S3

@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory):
    """The per-user state folder goes to a temp folder, never the real home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback, with the bucket ``runs``; AWS variables set."""
    from .s3server import BUCKET, SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        yield server
    server.stop()


def pytest_generate_tests(metafunc):
    """Modules that set ``STORE_KINDS`` run their store-using tests on each kind of store."""
    kinds = getattr(metafunc.module, "STORE_KINDS", None)
    if kinds and "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", kinds, indirect=True)


@pytest.fixture(scope="session")
def store_kind(request) -> str:
    """``local`` (the default) or ``s3`` (then the S3 server is started)."""
    kind = getattr(request, "param", "local")
    if kind == "s3":
        request.getfixturevalue("s3_server")
    return kind


def store_for(kind: str, runs_dir: Path):
    """The store of one test's data: the folder *runs_dir*, or an S3 prefix made from its name."""
    if kind == "local":
        return RunStore(runs_dir)
    import hashlib

    from execution_history.s3store import S3Store

    from .s3server import BUCKET

    prefix = "t-" + hashlib.sha1(str(runs_dir).encode()).hexdigest()[:12]
    return S3Store(f"s3://{BUCKET}/{prefix}")


def write_raw(store, name: str, data: bytes) -> None:
    """Put a file named *name* into the store as it is (broken and foreign files)."""
    if isinstance(store, RunStore):
        (store.root / name).write_bytes(data)
    else:
        store.put_raw(name, data)


def app_config(store, media_dir: Path | None = None) -> dict:
    """create_app's config for a test app on *store*."""
    config = {"TESTING": True, "RUN_HISTORY_DIR": str(store.root)}
    if media_dir is not None:  # never the project folder
        config["RUN_HISTORY_MEDIA_DIR"] = str(media_dir)
    if not isinstance(store, RunStore):
        config["RUN_HISTORY_SECRET_KEY"] = "test-secret-shared-by-every-host"
        config["RUN_HISTORY_S3_ENDPOINT_URL"] = store.endpoint_url
    return config


@pytest.fixture
def store(runs_dir: Path, store_kind: str):
    return store_for(store_kind, runs_dir)


def record_every_type(store: RunStore, config_name: str = "hostile", **header) -> str:
    """One run with one item of every taxonomy type, each carrying a hostile string."""
    clock = StepClock(dt.datetime(2025, 11, 3, 20, 52, 39, tzinfo=dt.timezone.utc))
    texts = itertools.cycle(HOSTILE.values())
    with ExecutionTracker(config_name, "eco", "kids", store=store, clock=clock, **header) as run:
        for entry in TAXONOMY.values():
            iteration = {"stage_iteration": 1} if entry.iteration == "stage" else {}
            if entry.iteration == "loop":
                iteration = {"loop_iteration": 2}
            run.log(entry.name, next(texts), model_used="gpt-oss:20b", backend_used="ollama",
                    execution_time=0.25, file_path="out/ü.png", metadata={"k": next(texts)}, **iteration)
        for name, text in HOSTILE.items():
            run.log_output_text(text, metadata={"case": name, name: text})
    return run.execution_id


@pytest.fixture
def recorded_runs(store: RunStore) -> list[str]:
    """Sample runs (all four scenarios) plus one hostile run, written by the real tracker."""
    from examples.sample_pipeline import iter_sample_runs

    ids = list(iter_sample_runs(8, store, now=dt.datetime(2025, 11, 20, tzinfo=dt.timezone.utc)))
    ids.append(record_every_type(store))
    return ids


@pytest.fixture
def app(runs_dir: Path, store_kind: str):
    return create_app(app_config(store_for(store_kind, runs_dir), runs_dir.parent / "media"))


@pytest.fixture
def client(app):
    return app.test_client()


def assert_error(response, status: int, code: str) -> dict:
    """Check the JSON error shape of the contract and return the body."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# ---------------------------------------------------------------- a real gunicorn

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """gunicorn with the shipped config, on a free loopback port, serving *runs_dir*."""

    def __init__(self, runs_dir: Path, log_path: Path, extra_env: dict | None = None,
                 extra_args: tuple = (), app: str = "wsgi:app") -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RUN_HISTORY_DIR": str(runs_dir), **(extra_env or {})}
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(PROJECT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{self.port}", *extra_args, app],
            cwd=PROJECT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/runs/stats", timeout=2):
                    return
            except urllib.error.HTTPError:  # answering (401 with access control on) is ready
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready: {self.log_path.read_text()[-2000:]}")

    def wait_for_index(self, timeout: float = 120.0) -> None:
        """Until a cold index build (more than 1000 runs: 503 INDEX_BUILDING meanwhile) is done."""
        import json
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/api/health", timeout=10) as response:
                state = json.loads(response.read())
            if state["index"] == "ready" and "build" not in state:
                return
            time.sleep(0.05)
        raise RuntimeError("index build not done")

    def wait_watching(self, workers: int = 2, timeout: float = 30.0) -> None:
        """Until *workers* gunicorn workers each hold an inotify descriptor: booted, with the
        folder watch begun (``post_worker_init``), so each sees every change from now on."""
        import os
        import time

        def watching(pid: str) -> bool:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                return False
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                        return True
                except OSError:
                    continue
            return False

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
                    children = handle.read().split()
            except OSError:
                children = []
            if sum(map(watching, children)) >= workers:
                return
            time.sleep(0.05)
        raise RuntimeError(f"not {workers} workers watching the folder")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self._log.close()


def audit_events(path: Path, until=lambda events: True, timeout: float = 10.0) -> list[dict]:
    """The audit log's lines, read again until *until(lines)* holds (or *timeout* passes).

    A server writes a download's line when its body ends, which a client that reads
    Content-Length bytes may see only after its read returned: poll, never sleep.
    """
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture
def live_server(runs_dir: Path, tmp_path: Path):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log")
    yield server
    server.stop()
