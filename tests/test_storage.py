"""RunStore: atomic publishing, no overwrite, orphan sweeping, unreadable files, stats."""
import json
import multiprocessing
import os
import signal
import stat
import time

import pytest

from execution_history import ExecutionTracker, RunStore, atomic
from execution_history.errors import InvalidRecord, RunAlreadyExists, RunNotFound
from execution_history.storage import TEMP_PREFIX

from .test_records import minimal_record


def test_save_publishes_a_readable_file_and_never_overwrites(store):
    record = minimal_record()
    path = store.save(record).path
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.load(record["execution_id"])["config_name"] == "dada"
    with pytest.raises(RunAlreadyExists):
        store.save(minimal_record(config_name="intruder"))
    assert store.load(record["execution_id"])["config_name"] == "dada"
    assert [p.name for p in store.root.iterdir() if p.is_file()] == [path.name]


def test_save_is_readable_under_a_restrictive_umask(store):
    old = os.umask(0o077)
    try:
        path = store.save(minimal_record()).path
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _killed_writer(root):
    store = RunStore(root)
    atomic.link_new = lambda temp, path: os.kill(os.getpid(), signal.SIGKILL)  # in the forked child only
    store.save(minimal_record())


def test_writer_killed_before_publishing_leaves_nothing_visible(store):
    proc = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(str(store.root),))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    leftovers = [p.name for p in store.root.iterdir() if p.is_file()]
    assert len(leftovers) == 1 and leftovers[0].startswith(TEMP_PREFIX)
    assert store.list_files() == [] and store.scan_stats()["unreadable_records"] == 0
    assert store.sweep_temp_files() == 1
    assert [p for p in store.root.iterdir() if p.is_file()] == []


def test_sweep_keeps_a_live_writers_fresh_temp_file_and_removes_old_ones(store):
    live = store.root / f"{TEMP_PREFIX}exec_20251103_205239_896e054c.{os.getpid()}.abcd1234.tmp"
    live.write_text("{")
    assert store.sweep_temp_files() == 0
    assert store.sweep_temp_files(now=time.time() + 7200) == 1
    assert not live.exists()


def test_ids_are_validated_before_any_path_is_built(store):
    for bad in ["../../etc/passwd", "exec_../x", "exec_20251103_205239_896e054c/../../x", "", "x" * 5000]:
        with pytest.raises(RunNotFound):
            store.path_for(bad)


def test_list_is_newest_first_and_ignores_foreign_files(store):
    ids = []
    for stamp in ["20250101_000000", "20250301_000000", "20250201_000000"]:
        record = minimal_record(execution_id=f"exec_{stamp}_0000abcd")
        store.save(record)
        ids.append(record["execution_id"])
    (store.root / "notes.json").write_text("{}")
    (store.root / "exec_20250101_000000_0000abcd.json.bak").write_text("{}")
    assert store.list_ids() == sorted(ids, reverse=True)


def test_truncated_and_foreign_records_are_skipped_and_counted(store):
    with ExecutionTracker("dada", store=store) as run:
        run.log_user_input_text("fine")
    good = store.path_for(run.execution_id)
    (store.root / "exec_20250101_000000_0000dead.json").write_bytes(good.read_bytes()[:40])
    (store.root / "exec_20250101_000000_0000beef.json").write_text(json.dumps({"hello": "world"}))
    (store.root / "exec_20250101_000000_0000f00d.json").write_bytes(b"\xff\xfe not utf-8")
    (store.root / "other.json").write_text("not even json")
    (store.root / "exec_backup.json").write_text("{}")  # named like a run, but no id: unreadable too
    (store.root / "exec_20250101_000000_0000ABCD.json").write_text("{}")
    with pytest.raises(InvalidRecord):
        store.load("exec_20250101_000000_0000dead")
    stats = store.scan_stats()
    assert stats["total_records"] == 1 and stats["unreadable_records"] == 5
    assert stats["total_size_bytes"] == sum(p.stat().st_size for p in store.root.glob("exec_*.json"))
    assert [r["execution_id"] for r in store.iter_records(store.list_ids())] == [run.execution_id]


def test_stats_of_sample_runs(store, recorded_runs):
    stats = store.scan_stats()
    records = [store.load(i) for i in recorded_runs]
    assert stats["total_records"] == len(records)
    assert sum(stats["by_config"].values()) == sum(stats["by_status"].values()) == len(records)
    assert stats["by_status"]["failed"] == 2 and stats["by_status"]["blocked"] == 2
    assert stats["first_timestamp"] == min(r["timestamp"] for r in records)
    assert stats["last_timestamp"] == max(r["timestamp"] for r in records)
    assert stats["total_size_mb"] == round(stats["total_size_bytes"] / 2**20, 2)
