"""A cold index build through gunicorn: while the summaries are indexed every list, stats, search
and export answers 503 INDEX_BUILDING with Retry-After and the build's progress, and the pages
say "indexing N of M"; once they are in, lists answer and text search waits for the text phase.

The build is slowed deterministically: tests/slow_build_app.py makes each batch wait until the
test opens its gate (a file), so the test sees every step without timing anything.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from execution_history import ExecutionTracker, RunStore
from execution_history.index import BATCH, RunIndex

from .conftest import LiveServer

RUNS = 3 * BATCH
TIMEOUT = 30


def make_runs(folder: Path, count: int) -> list[str]:
    """*count* small record files: one recorded by the real tracker, copied under new ids."""
    store = RunStore(folder)
    with ExecutionTracker("cold", "eco", "kids", store=store) as run:
        run.log_user_input_text("a common word and the needle quokka")
    template = json.loads((folder / f"{run.execution_id}.json").read_bytes())
    (folder / f"{run.execution_id}.json").unlink()
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    ids = []
    for n in range(count):
        when = start + dt.timedelta(minutes=n)
        execution_id = f"exec_{when:%Y%m%d_%H%M%S}_{n:08x}"
        record = {**template, "execution_id": execution_id, "timestamp": when.isoformat(),
                  "config_name": f"c{n % 3}"}
        (folder / f"{execution_id}.json").write_text(json.dumps(record))
        ids.append(execution_id)
    return ids


def get(server: LiveServer, path: str, accept: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(server.url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def building(server: LiveServer, path: str, phase: str) -> dict:
    """The body of a 503 INDEX_BUILDING answer of *phase* (checked: Retry-After, progress)."""
    status, headers, body = get(server, path)
    assert status == 503, body[:300]
    assert headers["Content-Type"].startswith("application/json")
    assert int(headers["Retry-After"]) > 0
    data = json.loads(body)
    assert data["code"] == "INDEX_BUILDING" and data["phase"] == phase, data
    assert data["total"] == RUNS and 0 <= data["indexed"] <= RUNS
    assert data["request_id"] == headers["X-Request-ID"]
    return data


def running(pid: int) -> bool:
    """Whether process *pid* exists and is no zombie."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def until(check, what: str, limit: float = 120.0):
    """Ask *check()* again until it returns something true (a guard against hanging, not a timing)."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


class _PageText(HTMLParser):
    """The visible text of a page, and whether it has inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.text, self.inline_script, self._in_script = [], False, False
        self.refresh = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.inline_script |= "src" not in attrs
        if tag == "meta" and attrs.get("http-equiv") == "refresh":
            self.refresh = attrs.get("content")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.inline_script |= bool(data.strip())
        else:
            self.text.append(data)


def page(server: LiveServer, path: str) -> tuple[int, dict[str, str], _PageText]:
    status, headers, body = get(server, path, accept="text/html")
    parsed = _PageText()
    parsed.feed(body.decode())
    return status, headers, parsed


def progress_in(parsed: _PageText) -> tuple[int, int] | None:
    match = re.search(r"indexing (\d+) of (\d+) runs", " ".join(" ".join(parsed.text).split()))
    return (int(match[1]), int(match[2])) if match else None


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    folder = tmp_path / "gates"
    folder.mkdir()
    return folder


@pytest.fixture
def cold_server(runs_dir: Path, tmp_path: Path, gates: Path):
    make_runs(runs_dir, RUNS)
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TEST_BUILD_GATES": str(gates)},
                        app="tests.slow_build_app:app")
    yield server
    for phase in ("summaries", "text"):  # let a build still waiting finish, so the server stops cleanly
        for n in range(1, 10):
            (gates / f"{phase}-{n}").touch()
    server.stop()


def test_a_cold_build_answers_503_with_progress_then_lists_then_searches(cold_server, gates, runs_dir):
    server = cold_server
    some_id = min(path.stem for path in runs_dir.glob("exec_*.json"))
    # the summaries phase: nothing indexed yet, every worker answers at once instead of waiting
    for path in ("/api/runs", "/api/runs/stats", "/api/runs?q=quokka", "/api/runs/export/csv?config=c1",
                 "/api/runs?order_by=total_execution_time&offset=10"):
        assert building(server, path, "summaries")["indexed"] == 0
    status, headers, parsed = page(server, "/")
    assert status == 503 and int(headers["Retry-After"]) > 0 and headers["Content-Type"].startswith("text/html")
    assert progress_in(parsed) == (0, RUNS) and not parsed.inline_script and parsed.refresh
    status, _, body = get(server, f"/api/runs/{some_id}")  # one record needs no index
    assert status == 200 and json.loads(body)["execution_id"] == some_id
    assert page(server, f"/runs/{some_id}")[0] == 200
    status, _, body = get(server, "/api/health")
    assert status == 200 and json.loads(body)["index"] == "building"
    assert json.loads(body)["build"] == {"phase": "summaries", "indexed": 0, "total": RUNS}

    seen = [0]
    for step in (1, 2):
        (gates / f"summaries-{step}").touch()
        indexed = until(lambda: (building(server, "/api/runs", "summaries")["indexed"] == step * BATCH), "progress")
        assert indexed
        seen.append(step * BATCH)
        status, _, parsed = page(server, "/stats")
        assert status == 503 and progress_in(parsed) == (step * BATCH, RUNS)
        assert json.loads(get(server, "/api/health")[2])["build"]["indexed"] == step * BATCH
    assert seen == sorted(seen)  # the progress only grows

    # the summaries are in: lists, filters, sorts, stats and exports answer; text search waits
    (gates / "summaries-3").touch()
    status, headers, body = until(lambda: (lambda r: r[0] == 200 and r)(get(server, "/api/runs?config=c1&limit=5")),
                                  "the list answers")
    assert headers["X-Total-Count"] == str(RUNS // 3) and len(json.loads(body)["executions"]) == 5
    assert json.loads(get(server, "/api/runs/stats")[2])["total_records"] == RUNS
    status, _, body = get(server, "/api/runs?order_by=items_count&order=asc&offset=2990&limit=100")
    assert status == 200 and len(json.loads(body)["executions"]) == 10
    text = building(server, "/api/runs?q=quokka", "text")
    assert text["indexed"] == 0
    status, _, parsed = page(server, "/?q=quokka")
    assert status == 503 and progress_in(parsed) == (0, RUNS)
    assert json.loads(get(server, "/api/health")[2])["build"] == {"phase": "text", "indexed": 0, "total": RUNS}
    assert json.loads(get(server, "/api/health")[2])["index"] == "ready"

    (gates / "text-1").touch()
    until(lambda: building(server, "/api/runs?q=quokka", "text")["indexed"] == BATCH, "text progress")
    for step in (2, 3, 4):
        (gates / f"text-{step}").touch()
    status, headers, body = until(lambda: (lambda r: r[0] == 200 and r)(get(server, "/api/runs?q=quokka&limit=1")),
                                  "text search answers")
    assert headers["X-Total-Count"] == str(RUNS)
    status, headers, _ = get(server, "/api/runs?q=needle+-nothing")
    assert status == 200
    assert get(server, "/?q=quokka", accept="text/html")[0] == 200
    health = json.loads(get(server, "/api/health")[2])
    assert health["index"] == "ready" and "build" not in health


def test_a_build_in_one_call_without_background_indexes_text_too(runs_dir):
    """Scripts and the CLI (no build_in_background) wait for both phases in the one call."""
    make_runs(runs_dir, BATCH + 5)
    index = RunIndex(RunStore(runs_dir))
    from execution_history.filters import RunFilters, RunQuery

    _, total = index.query(RunQuery(filters=RunFilters(q="quokka")))
    assert total == BATCH + 5 and "build" not in index.state()


def test_a_text_phase_cut_short_resumes_where_its_search_writes_got(runs_dir, monkeypatch):
    """The text phase's progress is written with its terms (one transaction of the search
    database): killed after a batch, the next process indexes the rest, none twice."""
    import execution_history.index.sync as sync_module
    from execution_history.filters import RunFilters, RunQuery

    monkeypatch.setattr(sync_module, "BATCH", 5)
    monkeypatch.setattr(sync_module, "CHUNK", 5)  # parsed 5 at a time: a batch each
    make_runs(runs_dir, 23)
    real, calls = RunIndex._store_text, []

    def killed_after_one(self, *args):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        return real(self, *args)

    monkeypatch.setattr(RunIndex, "_store_text", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        RunIndex(RunStore(runs_dir)).sync()
    stored = []

    def counted(self, conn, texts, *args):
        stored.extend(run_id for run_id, _ in texts)
        return real(self, conn, texts, *args)

    monkeypatch.setattr(RunIndex, "_store_text", counted)
    index = RunIndex(RunStore(runs_dir))
    assert index.state()["build"]["indexed"] == 5  # the first batch stayed
    page, total = index.query(RunQuery(filters=RunFilters(q="quokka"), limit=None))
    assert total == len(page) == 23 and "build" not in index.state()
    assert len(stored) == len(set(stored)) == 18  # the rest, none of the first batch again


def test_lists_answer_before_the_text_phase_makes_the_other_sort_indexes(runs_dir, monkeypatch):
    """The summaries phase makes one secondary index again (the default order's); the others,
    and the table statistics, are the text phase's first work. In between every list answers
    right (from the table), and a text phase killed before making them leaves them to the next."""
    import sqlite3

    import execution_history.index.sync as sync_module
    from execution_history.filters import RunFilters, RunQuery
    from execution_history.index.schema import FIRST_INDEXES, SECONDARY_INDEXES

    monkeypatch.setattr(sync_module, "BATCH", 5)
    monkeypatch.setattr(sync_module, "CHUNK", 5)
    ids = make_runs(runs_dir, 23)
    real = RunIndex._make_indexes

    def killed_in_text_phase(self, conn, names=None):
        if names is None:  # the text phase's call: every index
            raise KeyboardInterrupt("killed")
        return real(self, conn, names)

    monkeypatch.setattr(RunIndex, "_make_indexes", killed_in_text_phase)
    with pytest.raises(KeyboardInterrupt):
        RunIndex(RunStore(runs_dir)).sync()
    db = runs_dir / ".index" / "runs.sqlite3"

    def indexes() -> set[str]:
        with sqlite3.connect(db) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}

    secondary = {name for name, _ in SECONDARY_INDEXES}
    assert indexes() & secondary == set(FIRST_INDEXES)
    monkeypatch.setattr(RunIndex, "_make_indexes", real)
    index = RunIndex(RunStore(runs_dir), build_in_background=True)  # lists answer; no text phase started yet
    monkeypatch.setattr(RunIndex, "_start_text_phase", lambda self: None)
    newest = [s["execution_id"] for s in index.query(RunQuery(limit=5))[0]]
    assert newest == sorted(ids, reverse=True)[:5]
    c1 = index.query(RunQuery(filters=RunFilters(config_name="c1"), order_by="items_count", order="asc", limit=None))[0]
    assert sorted(s["execution_id"] for s in c1) == sorted(i for n, i in enumerate(ids) if n % 3 == 1)
    assert indexes() & secondary == set(FIRST_INDEXES)
    monkeypatch.undo()
    index = RunIndex(RunStore(runs_dir))
    _, total = index.query(RunQuery(filters=RunFilters(q="quokka")))  # the text phase, to its end
    assert total == 23 and "build" not in index.state()
    assert secondary <= indexes()
    with sqlite3.connect(db) as conn:  # ANALYZE ran once they were made
        analyzed = {row[0] for row in conn.execute("SELECT idx FROM sqlite_stat1")}
    assert secondary - {"run_models_value"} <= analyzed  # (no model in these runs: no row to analyze)


def test_a_cold_build_that_finds_no_run_still_makes_every_index(runs_dir, monkeypatch):
    """No run indexed means no text phase: the first phase makes every index itself."""
    import sqlite3

    import execution_history.index.sync as sync_module
    from execution_history.index.schema import SECONDARY_INDEXES

    monkeypatch.setattr(sync_module, "BATCH", 5)
    for n in range(12):  # record files, none readable
        (runs_dir / f"exec_20250101_000000_{n:08x}.json").write_text("{")
    index = RunIndex(RunStore(runs_dir))
    assert index.stats()["unreadable_records"] == 12 and "build" not in index.state()
    with sqlite3.connect(runs_dir / ".index" / "runs.sqlite3") as conn:
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {name for name, _ in SECONDARY_INDEXES} <= present


def test_a_server_killed_mid_build_leaves_an_index_the_next_one_completes(runs_dir, tmp_path, gates):
    """SIGKILL every gunicorn process after the first batch of a cold build: the next server
    goes on from what was indexed (the scan lock dies with its holder) and ends with every run
    listed once, counted once and searchable."""
    import os
    import signal

    make_runs(runs_dir, RUNS)
    first = LiveServer(runs_dir, tmp_path / "first.log", extra_env={"RUN_HISTORY_TEST_BUILD_GATES": str(gates)},
                       app="tests.slow_build_app:app")
    try:
        assert building(first, "/api/runs", "summaries")["indexed"] == 0
        (gates / "summaries-1").touch()
        until(lambda: building(first, "/api/runs", "summaries")["indexed"] == BATCH, "the first batch")
        children = Path(f"/proc/{first.proc.pid}/task/{first.proc.pid}/children").read_text().split()
        parsers = [int(pid) for child in children  # the build's parse workers, spawned by a gunicorn worker's thread
                   for task in Path(f"/proc/{child}/task").iterdir() for pid in (task / "children").read_text().split()]
        assert parsers
        for pid in (first.proc.pid, *map(int, children)):
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(timeout=TIMEOUT)
        # they die with their worker (no orphan parsing on; a resource tracker exits once they are gone)
        until(lambda: not any(map(running, parsers)), "the parse workers end")
    finally:
        first.stop()
    second = LiveServer(runs_dir, tmp_path / "second.log")
    try:
        status, headers, _ = until(lambda: (lambda r: r[0] == 200 and r)(get(second, "/api/runs?limit=1")),
                                   "the list answers")
        assert headers["X-Total-Count"] == str(RUNS)
        assert json.loads(get(second, "/api/runs/stats")[2])["total_records"] == RUNS
        status, headers, _ = until(lambda: (lambda r: r[0] == 200 and r)(get(second, "/api/runs?q=quokka&limit=1")),
                                   "text search answers")
        assert headers["X-Total-Count"] == str(RUNS)
        status, _, body = get(second, "/api/runs?limit=100&offset=2950&order=asc")
        ids = [e["execution_id"] for e in json.loads(body)["executions"]]
        assert ids == sorted(path.stem for path in runs_dir.glob("exec_*.json"))[2950:]
    finally:
        second.stop()


def test_a_search_database_replaced_during_the_text_phase_loses_no_text(runs_dir, monkeypatch):
    """Another process throws the search database away (found damaged) and makes it afresh
    while this one's text phase writes: the phase stops at its next write instead of going
    on into the new file (whose progress starts again at the first run), and the text phase
    that follows indexes every run's text, once."""
    import sqlite3

    import execution_history.index.sync as sync_module
    from execution_history.filters import RunFilters, RunQuery

    monkeypatch.setattr(sync_module, "BATCH", 5)
    monkeypatch.setattr(sync_module, "CHUNK", 5)
    make_runs(runs_dir, 23)
    real, calls = RunIndex._store_text, []

    def replaced_after_two(self, *args):
        calls.append(1)
        if len(calls) == 3:  # the other process: the file removed, then made again empty
            self._remove_files(self.search_path)
            RunIndex(RunStore(runs_dir))._connection()
        return real(self, *args)

    monkeypatch.setattr(RunIndex, "_store_text", replaced_after_two)
    index = RunIndex(RunStore(runs_dir))
    page, total = index.query(RunQuery(filters=RunFilters(q="quokka"), limit=None))
    assert len(calls) > 3  # the replacement happened mid-phase, and a phase ran again
    assert total == len(page) == 23 and "build" not in index.state()
    with sqlite3.connect(runs_dir / ".index" / "search.sqlite3") as conn:
        terms = conn.execute("SELECT COUNT(*) FROM run_text WHERE run_text MATCH 'quokka'").fetchone()[0]
    assert terms == 23  # each run's text indexed once in the file in place


def test_a_search_database_replaced_during_a_move_of_pending_text_loses_and_doubles_no_text(runs_dir,
                                                                                          monkeypatch):
    """A move of pending text that finds the search database replaced stops there: the new
    file's text phase indexes every run (the pending text among them) once."""
    import sqlite3

    import execution_history.index.sync as sync_module
    from execution_history.filters import RunFilters, RunQuery

    monkeypatch.setattr(sync_module, "TEXT_MOVE_BATCH", 5)
    make_runs(runs_dir, 12)
    index = RunIndex(RunStore(runs_dir))
    index.sync()  # a small folder: the text waits in text_pending
    real, calls = RunIndex._store_moved, []

    def replaced_at_the_second(search, rows):
        calls.append(len(rows))
        if len(calls) == 2:  # another process: the file removed, then made again empty
            index._remove_files(index.search_path)
            RunIndex(RunStore(runs_dir))._connection()
        return real(search, rows)

    monkeypatch.setattr(RunIndex, "_store_moved", staticmethod(replaced_at_the_second))
    assert index._move_pending_text() == 5  # SQLite refused the second batch's write to the file removed
    assert calls == [5, 5]  # and the third was not tried
    page, total = index.query(RunQuery(filters=RunFilters(q="quokka"), limit=None))
    assert total == len(page) == 12 and "build" not in index.state()
    with sqlite3.connect(runs_dir / ".index" / "search.sqlite3") as conn:
        terms = conn.execute("SELECT COUNT(*) FROM run_text WHERE run_text MATCH 'quokka'").fetchone()[0]
    assert terms == 12
