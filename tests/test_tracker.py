"""ExecutionTracker: round trips, context manager, fail-safety, threads and processes."""
import datetime as dt
import json
import logging
import multiprocessing
import os
import threading

import pytest

from execution_history import ExecutionTracker, RunStore
from execution_history.records import RunRecordSchema
from execution_history.taxonomy import TAXONOMY

from .conftest import HOSTILE, StepClock, record_every_type

START = dt.datetime(2025, 11, 3, 20, 52, 39, tzinfo=dt.timezone.utc)


def strict_load_file(path):
    def reject(name):
        raise ValueError(name)
    return json.loads(path.read_bytes().decode("utf-8"), parse_constant=reject)


def test_every_type_round_trips_unchanged(store):
    execution_id = record_every_type(store)
    record = store.load(execution_id)
    assert strict_load_file(store.path_for(execution_id)) == record
    assert RunRecordSchema().validate(record) == {}
    by_type = {item["item_type"]: item for item in record["items"]}
    assert set(TAXONOMY) <= set(by_type)
    hostile = list(HOSTILE.values())
    for position, entry in enumerate(TAXONOMY.values()):
        item = record["items"][position]
        assert item["item_type"] == entry.name and item["stage"] == entry.stage
        assert item["content"] == hostile[(2 * position) % len(hostile)]
        assert item["metadata"] == {"k": hostile[(2 * position + 1) % len(hostile)]}
        assert item["stage_iteration"] == (1 if entry.iteration == "stage" else None)
        assert item["loop_iteration"] == (2 if entry.iteration == "loop" else None)
        assert (item["model_used"], item["backend_used"], item["execution_time"], item["file_path"]) == \
            ("gpt-oss:20b", "ollama", 0.25, "out/ü.png")
    tail = record["items"][len(TAXONOMY):]
    assert [item["content"] for item in tail] == hostile
    assert [item["sequence_number"] for item in record["items"]] == list(range(1, len(record["items"]) + 1))


def test_record_header_and_timing(store):
    with ExecutionTracker("dada", "eco", "kids", user_id="u7", session_id="s1", store=store,
                          clock=StepClock(START)) as run:
        assert run.execution_id.startswith("exec_20251103_205239_")
        run.log_user_input_text("Eine Blume")
    record = store.load(run.execution_id)
    assert {k: record[k] for k in ("config_name", "status", "execution_mode", "safety_level",
                                   "user_id", "session_id", "taxonomy_version")} == \
        {"config_name": "dada", "status": "completed", "execution_mode": "eco", "safety_level": "kids",
         "user_id": "u7", "session_id": "s1", "taxonomy_version": "1.1"}
    assert record["timestamp"] == "2025-11-03T20:52:39+00:00"
    assert record["items"][0]["timestamp"] == "2025-11-03T20:52:40+00:00"
    assert record["finished_at"] == "2025-11-03T20:52:41+00:00"
    assert record["total_execution_time"] == 2.0


def test_defaults_for_user_and_session(store):
    run = ExecutionTracker("dada", store=store)
    run.finalize()
    record = store.load(run.execution_id)
    assert (record["user_id"], record["session_id"]) == ("anonymous", "default")


def test_exception_fails_the_run_and_propagates_unchanged(store):
    class PipelineBroke(Exception):
        pass

    with pytest.raises(PipelineBroke) as caught:
        with ExecutionTracker("dada", store=store) as run:
            run.log_user_input_text("x")
            raise PipelineBroke("model exploded")
    assert str(caught.value) == "model exploded"
    record = store.load(run.execution_id)
    assert record["status"] == "failed"
    last = record["items"][-1]
    assert last["item_type"] == "pipeline_error"
    assert last["metadata"]["exception_type"] == "PipelineBroke"
    assert "model exploded" in last["metadata"]["error"]


def test_finalize_twice_returns_the_id_and_changes_nothing(store):
    run = ExecutionTracker("dada", store=store)
    run.log_user_input_text("x")
    assert run.finalize("blocked") == run.execution_id
    before = store.path_for(run.execution_id).read_bytes()
    assert run.finalize("completed") == run.execution_id
    assert run.log_output_text("late") is None
    assert store.path_for(run.execution_id).read_bytes() == before
    assert store.load(run.execution_id)["status"] == "blocked"
    assert len(store.list_files()) == 1


def test_context_exit_after_explicit_finalize_keeps_status(store):
    with ExecutionTracker("dada", store=store) as run:
        run.log_stage1_blocked("no")
        run.finalize(status="blocked")
    assert store.load(run.execution_id)["status"] == "blocked"


def test_unknown_status_is_stored_as_failed(store, caplog):
    run = ExecutionTracker("dada", store=store)
    assert run.finalize("weird") == run.execution_id
    assert store.load(run.execution_id)["status"] == "failed"
    assert "weird" in caplog.text


def test_values_json_cannot_carry_become_documented_safe_values(store):
    class Opaque:
        def __repr__(self):
            return "Opaque()"

    cyclic = {}
    cyclic["self"] = cyclic
    with ExecutionTracker("bad\ud800values", store=store) as run:
        run.log_translation_result("broken \udc00 llm", metadata={
            "nan": float("nan"), "inf": float("-inf"), "bytes": b"\x89PNG", "when": START,
            "tags": {"b", "a"}, "obj": Opaque(), "cyclic": cyclic})
        run.log_output_text(b"raw bytes", execution_time=float("nan"), metadata=[1, 2])
        run.log_output_text({"not": "text"}, stage_iteration="two")
    path = store.path_for(run.execution_id)
    record = strict_load_file(path)
    assert record["config_name"] == "bad\ufffdvalues"
    first, second, third = record["items"]
    assert first["content"] == "broken \ufffd llm"
    assert first["metadata"] == {"nan": None, "inf": None, "bytes": "base64:iVBORw==",
                                 "when": "2025-11-03T20:52:39+00:00", "tags": ["a", "b"],
                                 "obj": "Opaque()", "cyclic": {"self": "<recursion>"}}
    assert second["content"] == "raw bytes" and second["execution_time"] is None
    assert second["metadata"] == {"value": [1, 2]}
    assert third["content"] == '{"not": "text"}' and third["stage_iteration"] is None


def test_unwritable_folder_does_not_raise(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.ERROR):
        with ExecutionTracker("dada", data_dir=blocker / "runs") as run:
            run.log_user_input_text("x")
        assert run.finalize() == run.execution_id
    assert "run not saved" in caplog.text


def test_disk_full_does_not_raise_and_leaves_no_temp_file(store, monkeypatch, caplog):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with ExecutionTracker("dada", store=store) as run:
        run.log_user_input_text("x")
    monkeypatch.undo()
    assert "No space left" in caplog.text
    assert [name for name in os.listdir(store.root) if not name.startswith(".journal")] == []


def test_broken_clock_and_bad_arguments_do_not_raise(store):
    def clock():
        raise RuntimeError("clock broke")

    run = ExecutionTracker(object(), store=store, clock=clock)
    assert run.log("not_in_taxonomy", "x", stage=42) == 1
    assert run.log_interception_iteration("nine", "x") == 2
    run.finalize()
    item = store.load(run.execution_id)["items"][0]
    assert (item["item_type"], item["stage"]) == ("not_in_taxonomy", 0)


def test_threads_logging_into_one_run(store):
    run = ExecutionTracker("threads", store=store)
    barrier = threading.Barrier(8)

    def work(n):
        barrier.wait()
        for i in range(100):
            run.log_output_text(f"{n}-{i}", loop_iteration=n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.finalize()
    items = store.load(run.execution_id)["items"]
    assert sorted(item["sequence_number"] for item in items) == list(range(1, 801))
    assert {item["content"] for item in items} == {f"{n}-{i}" for n in range(8) for i in range(100)}


def _fixed_clock():
    return START


def test_runs_from_eight_threads_in_the_same_second(store):
    ids = []
    lock = threading.Lock()

    def work():
        for _ in range(25):
            with ExecutionTracker("threads", store=store, clock=_fixed_clock) as run:
                run.log_user_input_text("same second")
            with lock:
                ids.append(run.execution_id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200
    assert sorted(f.execution_id for f in store.list_files()) == sorted(ids)


def _record_in_process(root, count, queue):
    ids = []
    for _ in range(count):
        with ExecutionTracker("procs", store=RunStore(root), clock=_fixed_clock) as run:
            run.log_user_input_text(f"pid {os.getpid()}")
        ids.append(run.execution_id)
    queue.put(ids)


def test_runs_from_four_processes_in_the_same_second(store):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_record_in_process, args=(str(store.root), 50, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    ids = [i for _ in procs for i in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(ids) == len(set(ids)) == 200
    assert all(i.startswith("exec_20251103_205239_") for i in ids)
    assert sorted(f.execution_id for f in store.list_files()) == sorted(ids)
    assert all(store.load(i)["items"][0]["content"].startswith("pid ") for i in ids)


def test_id_collision_draws_a_new_id_instead_of_overwriting(store, monkeypatch):
    first = ExecutionTracker("a", store=store, clock=_fixed_clock)
    first.finalize()
    second = ExecutionTracker("b", store=store, clock=_fixed_clock)
    second.execution_id = first.execution_id  # force the 1-in-4-billion case
    new_id = second.finalize()
    assert new_id != first.execution_id
    assert store.load(first.execution_id)["config_name"] == "a"
    assert store.load(new_id)["config_name"] == "b"
