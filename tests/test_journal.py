"""Crash safety: journals, recovery, runs in progress, and 200 SIGKILLs."""
import json
import multiprocessing
import os
import random
import signal
import time

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.index import RunIndex
from execution_history.journal import iter_journals, journal_path, recover


def _die_after(root, items, side):
    run = ExecutionTracker("crash", user_id="u1", store=RunStore(root))
    with open(side, "w") as note:
        note.write(run.execution_id + "\n")
        note.flush()
        for n in range(1, items + 1):
            run.log_interception_iteration(n, f"item {n} of {run.execution_id}")
            note.write(f"{n}\n")
            note.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def run_and_kill(root, items, side):
    proc = multiprocessing.get_context("fork").Process(target=_die_after, args=(str(root), items, str(side)))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    return side.read_text().split()[0]


def test_killed_pipeline_is_recovered_as_interrupted_with_every_item(store, tmp_path):
    execution_id = run_and_kill(store.root, 5, tmp_path / "side")
    assert not store.path_for(execution_id).exists() and journal_path(store, execution_id).exists()
    assert recover(store) == [execution_id]
    record = store.load(execution_id)
    assert record["status"] == "interrupted" and [i["stage_iteration"] for i in record["items"]] == [1, 2, 3, 4, 5]
    assert record["finished_at"] == record["items"][-1]["timestamp"]
    assert record["total_execution_time"] >= 0
    assert list(iter_journals(store)) == []
    before = store.path_for(execution_id).read_bytes()
    assert recover(store) == [] and store.path_for(execution_id).read_bytes() == before


def test_torn_last_line_is_dropped_not_the_run(store, tmp_path):
    execution_id = run_and_kill(store.root, 3, tmp_path / "side")
    with open(journal_path(store, execution_id), "ab") as handle:
        handle.write(b'{"item": {"sequence_number": 4, "stage": 2, "item_t')
    recover(store)
    assert len(store.load(execution_id)["items"]) == 3


def test_app_start_recovers_journals(store, runs_dir, tmp_path):
    execution_id = run_and_kill(store.root, 2, tmp_path / "side")
    client = create_app({"RUN_HISTORY_DIR": str(runs_dir)}).test_client()
    assert client.get(f"/api/runs/{execution_id}").get_json()["status"] == "interrupted"


def test_disk_full_at_finalize_keeps_the_journal_and_recovery_finishes_it(store, monkeypatch, caplog):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the record's temp file cannot be made durable
    with ExecutionTracker("full", store=store) as run:
        run.log_user_input_text("one")
        run.log_output_text("two")
    assert "No space left" in caplog.text and journal_path(store, run.execution_id).exists()
    monkeypatch.undo()
    assert recover(store) == [run.execution_id]
    record = store.load(run.execution_id)
    assert record["status"] == "completed" and [i["content"] for i in record["items"]] == ["one", "two"]


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def test_runs_in_progress_are_listed_as_running_then_stale_then_finished(store, runs_dir):
    app = create_app({"RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_STALE_AFTER": 600,
                      "RUN_HISTORY_RUNNING_REFRESH": 0})
    clock = Clock()
    app.extensions["run_history"]["index"]._clock = clock
    client = app.test_client()
    run = ExecutionTracker("live", store=store)
    run.log_user_input_text("first")
    run.log_output_text("second")
    summary = client.get("/api/runs?status=running").get_json()["executions"][0]
    assert summary["execution_id"] == run.execution_id and summary["items_count"] == 2
    assert summary["last_activity_at"] and summary["stale"] is False
    partial = client.get(f"/api/runs/{run.execution_id}").get_json()
    assert partial["status"] == "running" and len(partial["items"]) == 2
    assert client.get("/api/runs/stats").get_json()["total_records"] == 0  # record files only
    clock.now += 601
    assert client.get("/api/runs?status=running").get_json()["executions"][0]["stale"] is True
    run.log_output_text("third")
    assert client.get("/api/runs").get_json()["executions"][0]["items_count"] == 3
    run.finalize()
    body = client.get("/api/runs").get_json()
    assert [(e["status"], e["stale"], e["last_activity_at"]) for e in body["executions"]] == [("completed", False, None)]
    assert client.get("/api/runs?status=running").get_json()["total"] == 0


def test_exports_hold_finished_runs_only(store, runs_dir):
    client = create_app({"RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_RUNNING_REFRESH": 0}).test_client()
    running = ExecutionTracker("live", store=store)
    running.log_user_input_text("not yet")
    with ExecutionTracker("done", store=store) as done:
        done.log_user_input_text("finished")
    response = client.get("/api/runs/export/jsonl")
    assert response.headers["X-Total-Count"] == "1"
    assert [json.loads(line)["execution_id"] for line in response.get_data().splitlines()] == [done.execution_id]
    assert client.get("/api/runs").get_json()["total"] == 2
    running.finalize()


def _pipeline(root, seed, side):
    rng = random.Random(seed)
    run = ExecutionTracker(f"kill{seed % 3}", store=RunStore(root))
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"start {run.execution_id}\n".encode())
    for n in range(1, rng.randint(1, 30) + 1):
        time.sleep(rng.uniform(0, 0.003))  # a model call; the kill lands anywhere in the run
        run.log_output_text(f"{run.execution_id} item {n} " + "x" * rng.randint(0, 3000), loop_iteration=1)
        os.write(fd, f"flushed {n}\n".encode())
    run.finalize()
    os.write(fd, b"finalized\n")


def test_200_random_sigkills_lose_nothing_that_was_flushed(store, tmp_path):
    """Kill pipeline processes at random points; every run must come back whole or recovered."""
    # Forked from a small fork server, not from pytest: a fork copies the parent's page tables,
    # and late in the suite pytest is big enough that 400 forks of it took longer than the runs.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    rng = random.Random(20261123)
    deadline = time.monotonic() + 90
    kills = 0
    sides = []
    while kills < 200 and time.monotonic() < deadline:
        batch = []
        for _ in range(4):
            side = tmp_path / f"side-{len(sides)}"
            sides.append(side)
            proc = ctx.Process(target=_pipeline, args=(str(store.root), len(sides), str(side)))
            proc.start()
            batch.append(proc)
        time.sleep(rng.uniform(0.0, 0.04))
        for proc in batch:
            time.sleep(rng.uniform(0.0, 0.01))
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished first: a whole run, no kill
                pass
        for proc in batch:
            proc.join(timeout=30)
            kills += proc.exitcode == -signal.SIGKILL
    assert kills >= 200, f"only {kills} kills in the time bound"
    recovered = recover(store)
    assert recover(store) == []  # idempotent
    store.sweep_temp_files()
    stats = store.scan_stats()
    assert stats["unreadable_records"] == 0
    lost = corrupt = 0
    for side in sides:
        lines = side.read_text().splitlines() if side.exists() else []
        if not lines:
            continue  # killed before its tracker existed
        execution_id = lines[0].split()[1]
        flushed = sum(1 for line in lines if line.startswith("flushed"))
        try:
            record = store.load(execution_id)
        except Exception:
            lost += 1
            continue
        items = record["items"]
        if [i["sequence_number"] for i in items] != list(range(1, len(items) + 1)) or any(
                not i["content"].startswith(f"{execution_id} item {i['sequence_number']} ") for i in items):
            corrupt += 1
        if len(items) < flushed:
            lost += 1
        if lines[-1] == "finalized":
            assert record["status"] == "completed"
        elif execution_id in recovered:
            assert record["status"] in ("interrupted", "completed")
    print(f"\nkills: {kills}, runs started: {sum(1 for s in sides if s.exists())}, recovered: {len(recovered)}, "
          f"lost: {lost}, corrupt: {corrupt}")
    assert lost == 0 and corrupt == 0
    assert list(iter_journals(store)) == []
    index = RunIndex(store)
    assert index.stats()["total_records"] == stats["total_records"]


def test_a_journal_that_cannot_be_recovered_is_set_aside_not_retried(store, runs_dir):
    store.ensure_root()
    bad = journal_path(store, "exec_20250101_000000_0000dead")
    bad.write_text('{"header": {"execution_id": "exec_20250101_000000_0000dead"}}\n')  # no timestamp
    headless = journal_path(store, "exec_20250101_000000_0000beef")
    headless.write_text('{"item": {}}\n')
    assert recover(store) == []
    assert not bad.exists() and not headless.exists()
    assert sorted(p.name for p in bad.parent.iterdir()) == [f".bad-{headless.name}", f".bad-{bad.name}"]
    assert create_app({"RUN_HISTORY_DIR": str(runs_dir)}).test_client().get("/api/runs").status_code == 200


def test_a_new_journal_is_never_seen_unlocked(store):
    run = ExecutionTracker("x", store=store)
    assert [p.name for p in journal_path(store, run.execution_id).parent.iterdir()] == \
        [f"{run.execution_id}.jsonl"]
    assert recover(store) == []  # locked by its live tracker
    run.finalize()
