"""Checked records kept per process (execution_history/record_cache.py): a file read again
unchanged is not checked again, and its CSV rows are not made again; a file changed in any way
is read afresh, and what is served is always what an uncached read gives."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from app import create_app
from execution_history import RunStore, records, storage
from execution_history.errors import RunNotFound
from execution_history.record_cache import CheckedRecords

from .conftest import app_config
from .hostile_records import write_hostile_runs

LEGACY = Path(__file__).parent / "legacy"


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The ids whose file the store read and checked (storage.parse_record calls)."""
    calls: list[str] = []
    real = storage.parse_record

    def counted(raw, execution_id=None):
        calls.append(execution_id)
        return real(raw, execution_id)

    monkeypatch.setattr(storage, "parse_record", counted)
    return calls


def _rewrite_in_place(path: Path, old: str, new: str) -> None:
    """Change the file's bytes (same length), same inode, its mtime put back as it was."""
    assert len(old) == len(new)
    st = path.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity: the ctime moves
    text = path.read_text(encoding="utf-8")
    assert old in text
    with open(path, "r+", encoding="utf-8") as f:
        f.write(text.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_a_file_read_again_unchanged_is_checked_once_more_then_kept(runs_dir, parses):
    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    store = RunStore(runs_dir)
    first = store.load(execution_id)
    assert store.load(execution_id) == first  # the second read is checked, then kept
    assert parses == [execution_id, execution_id]
    for _ in range(3):
        assert store.load(execution_id) == first
    assert parses == [execution_id, execution_id]  # not read and checked again
    assert json.dumps(store.load(execution_id)) == json.dumps(first)  # key order and values alike


def test_every_reader_gets_a_record_of_its_own(runs_dir):
    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    store = RunStore(runs_dir)
    expected = store.load(execution_id)
    store.load(execution_id)
    mine = store.load(execution_id)
    mine["items"][0]["content"] = "changed by one caller"
    mine["user_id"] = "someone else"
    assert store.load(execution_id) == expected
    assert dict(store.load(execution_id)) == expected


def test_a_file_changed_in_place_with_its_size_and_mtime_kept_is_read_again(runs_dir, parses):
    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    path = runs_dir / f"{execution_id}.json"
    store = RunStore(runs_dir)
    for _ in range(3):
        assert store.load(execution_id)["execution_mode"] == "eco"
    _rewrite_in_place(path, '"execution_mode": "eco"', '"execution_mode": "ECO"')
    assert store.load(execution_id)["execution_mode"] == "ECO"  # the ctime moved
    assert parses.count(execution_id) == 3


def test_a_file_replaced_deleted_or_turned_into_a_fifo_is_never_served_from_memory(runs_dir):
    ids = write_hostile_runs(runs_dir, 3, long_every=0)
    store = RunStore(runs_dir)
    for execution_id in ids:
        for _ in range(3):
            store.load(execution_id)
    replaced, deleted, fifo = (runs_dir / f"{i}.json" for i in ids)
    data = json.loads(replaced.read_text(encoding="ascii"))
    data["execution_mode"] = "replaced"
    tmp = runs_dir / ".replacement.tmp"
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, replaced)  # a new inode under the same name
    assert store.load(ids[0])["execution_mode"] == "replaced"
    deleted.unlink()
    with pytest.raises(RunNotFound):
        store.load(ids[1])
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(RunNotFound):
        store.load(ids[2])


def test_store_delete_forgets_the_run(runs_dir):
    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    store = RunStore(runs_dir)
    for _ in range(3):
        store.load(execution_id)
    assert store.checked._entries
    assert store.delete(execution_id)
    assert not store.checked._entries
    with pytest.raises(RunNotFound):
        store.load(execution_id)


def test_a_record_read_in_another_naive_time_zone_is_checked_again(runs_dir):
    name = "exec_20251120_080000_deadbeef.json"
    shutil.copy(LEGACY / name, runs_dir / name)
    store = RunStore(runs_dir)
    execution_id = name[:-5]
    try:
        records.set_naive_timezone("UTC")
        for _ in range(3):
            assert store.load(execution_id)["timestamp"] == "2025-11-20T09:00:00+00:00"
        records.set_naive_timezone("Europe/Berlin")
        assert store.load(execution_id)["timestamp"] == "2025-11-20T08:00:00+00:00"
    finally:
        records.set_naive_timezone("UTC")
    assert store.load(execution_id)["timestamp"] == "2025-11-20T09:00:00+00:00"


def test_the_cache_keeps_to_its_bound_and_skips_huge_records(runs_dir):
    ids = write_hostile_runs(runs_dir, 40, long_every=7)  # every 7th holds a 40,000-character text
    store = RunStore(runs_dir, record_cache_bytes=64 * 1024)
    expected = {}
    for execution_id in ids:
        for _ in range(3):
            expected[execution_id] = store.load(execution_id)
        assert store.checked._bytes <= store.checked.max_bytes
    kept = set(store.checked._entries)
    assert kept and len(kept) < len(ids)  # the least recently used went
    assert not kept & set(ids[::7])  # none of the huge ones
    assert ids[-1] in kept
    for execution_id in ids:  # dropped or kept, each reads as before
        assert store.load(execution_id) == expected[execution_id]
    assert store.checked._bytes == sum(e.size for e in store.checked._entries.values())


def test_off_keeps_nothing(runs_dir, parses):
    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    store = RunStore(runs_dir, record_cache_bytes=0)
    for _ in range(3):
        store.load(execution_id)
    assert parses == [execution_id] * 3 and not store.checked._entries


def _csv(client, query: str) -> bytes:
    response = client.get(f"/api/runs/export/csv?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_data()


def test_csv_rows_made_from_memory_are_the_bytes_an_uncached_export_gives(runs_dir, monkeypatch):
    from execution_history.exporters import csv_writer

    write_hostile_runs(runs_dir, 30)
    made = []
    real = csv_writer._item_lines
    monkeypatch.setattr(csv_writer, "_item_lines", lambda record, raw: made.append(raw) or real(record, raw))
    queries = ["shape=items", "shape=items&raw=1", "shape=items&bom=1&config=stillepost"]
    uncached = create_app({**app_config(RunStore(runs_dir)), "RUN_HISTORY_RECORD_CACHE_MB": 0}).test_client()
    expected = {query: _csv(uncached, query) for query in queries}
    made.clear()
    cached = create_app(app_config(RunStore(runs_dir))).test_client()
    for _ in range(4):  # read, read and kept, then rows made once per option and reused
        for query in queries:  # interleaved: rows with formulas neutralized and raw ones never mix
            assert _csv(cached, query) == expected[query]
    # the first export reads each file once (rows made, nothing kept); the second keeps the
    # records and makes their raw rows; from then on each file's rows are made once per option
    assert made.count(True) == 30 and made.count(False) == 30 + 30
    for query in queries:
        rows = list(csv.reader(io.StringIO(expected[query].decode("utf-8-sig"), newline="")))
        assert len(rows) > 1 and all(len(row) == len(rows[0]) for row in rows)
    assert expected["shape=items"] != expected["shape=items&raw=1"]  # the corpus holds formula text


def test_a_pseudonymized_export_never_reuses_the_rows_of_a_plain_one(runs_dir):
    write_hostile_runs(runs_dir, 10, long_every=0)
    client = create_app(app_config(RunStore(runs_dir))).test_client()
    plain = [_csv(client, "shape=items") for _ in range(3)][-1]
    hidden = _csv(client, "shape=items&pseudonymize=1")
    users = {row["user_id"] for row in csv.DictReader(io.StringIO(plain.decode("utf-8"), newline=""))}
    pseudonyms = {row["user_id"] for row in csv.DictReader(io.StringIO(hidden.decode("utf-8"), newline=""))}
    assert users and pseudonyms and not users & pseudonyms


def test_a_run_edited_after_its_rows_were_made_exports_its_new_rows(runs_dir):
    ids = write_hostile_runs(runs_dir, 5, long_every=0)
    client = create_app(app_config(RunStore(runs_dir))).test_client()
    for _ in range(3):
        before = _csv(client, "shape=items")
    _rewrite_in_place(runs_dir / f"{ids[2]}.json", '"execution_mode": "eco"', '"execution_mode": "ECO"')
    rows = list(csv.DictReader(io.StringIO(_csv(client, "shape=items").decode("utf-8"), newline="")))
    modes = {row["execution_id"]: row["execution_mode"] for row in rows}
    assert modes[ids[2]] == "ECO" and {modes[i] for i in ids if i != ids[2]} == {"eco"}
    assert _csv(client, "shape=items") != before


def test_the_setting_is_read_and_checked(runs_dir, monkeypatch):
    config = app_config(RunStore(runs_dir))
    from app.extensions import state

    assert state(create_app({**config, "RUN_HISTORY_RECORD_CACHE_MB": 0}))["store"].checked.max_bytes == 0
    assert state(create_app(config))["store"].checked.max_bytes == 4 * 1024 * 1024
    monkeypatch.setenv("RUN_HISTORY_RECORD_CACHE_MB", "16")

    assert state(create_app(config))["store"].checked.max_bytes == 16 * 1024 * 1024
    monkeypatch.setenv("RUN_HISTORY_RECORD_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="RUN_HISTORY_RECORD_CACHE_MB"):
        create_app(config)


def test_threads_reading_the_same_runs_each_get_whole_records(runs_dir):
    ids = write_hostile_runs(runs_dir, 40, long_every=0)
    store = RunStore(runs_dir, record_cache_bytes=96 * 1024)  # small: entries come and go meanwhile
    expected = {i: RunStore(runs_dir, record_cache_bytes=0).load(i) for i in ids}
    failures: list[str] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch all the time: unlocked updates would interleave

    def reader(seed: int) -> None:
        for n in range(1500):
            execution_id = ids[(seed * 7 + n * 3) % len(ids)]
            try:
                if store.load(execution_id) != expected[execution_id]:
                    failures.append(execution_id)
            except Exception as err:  # noqa: BLE001 - a race shows as any error: each is a failure
                failures.append(repr(err))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures
    assert store.checked._bytes == sum(e.size for e in store.checked._entries.values()) <= store.checked.max_bytes
    assert isinstance(store.checked, CheckedRecords)


def test_a_kept_record_pickles_and_copies_as_a_plain_dict(runs_dir):
    import copy
    import pickle

    execution_id = write_hostile_runs(runs_dir, 1, long_every=0)[0]
    store = RunStore(runs_dir)
    for _ in range(3):
        record = store.load(execution_id)
    assert type(record) is not dict  # kept: the store's LoadedRecord
    for twin in (pickle.loads(pickle.dumps(record)), copy.copy(record), copy.deepcopy(record)):
        assert type(twin) is dict and twin == record


def test_what_is_kept_is_counted_as_memory_rows_included(runs_dir):
    import tracemalloc

    from execution_history.record_cache import derived

    ids = write_hostile_runs(runs_dir, 300, long_every=0)
    store = RunStore(runs_dir, record_cache_bytes=256 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for execution_id in ids:
            for _ in range(3):
                record = store.load(execution_id)
            derived(record, "rows", lambda: "ζ" * 2000)  # 2 bytes a character
        held = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    cache_file = sys.modules[CheckedRecords.__module__].__file__
    kept = sum(stat.size_diff for stat in held if stat.traceback[0].filename == cache_file)
    assert 0 < kept <= 1.25 * store.checked.max_bytes  # what the process holds, not just what it counts
    entries = store.checked._entries.values()
    assert all(len(e.derived) == 1 for e in entries)
    assert store.checked._bytes == sum(e.size for e in entries) <= store.checked.max_bytes
    assert all(e.size >= sys.getsizeof(e.blob) + sys.getsizeof("ζ" * 2000) for e in entries)


def test_a_time_zone_changed_during_a_check_is_not_taken_for_the_new_one(runs_dir, monkeypatch):
    name = "exec_20251120_080000_deadbeef.json"
    shutil.copy(LEGACY / name, runs_dir / name)
    execution_id = name[:-5]
    store = RunStore(runs_dir)
    real = storage.parse_record

    def zone_changes_meanwhile(raw, eid=None):
        record = real(raw, eid)  # checked in UTC
        records.set_naive_timezone("Europe/Berlin")
        return record

    try:
        records.set_naive_timezone("UTC")
        store.load(execution_id)
        monkeypatch.setattr(storage, "parse_record", zone_changes_meanwhile)
        store.load(execution_id)  # the second read, kept: for UTC, the zone it was read in
        monkeypatch.setattr(storage, "parse_record", real)
        assert store.load(execution_id)["timestamp"] == "2025-11-20T08:00:00+00:00"  # Berlin now
    finally:
        records.set_naive_timezone("UTC")


def test_a_record_file_that_is_a_symlink_retargeted_is_read_from_its_new_target(runs_dir):
    ids = write_hostile_runs(runs_dir, 2, long_every=0)
    targets = runs_dir.parent / "targets"
    targets.mkdir()
    for execution_id in ids:
        (runs_dir / f"{execution_id}.json").rename(targets / f"{execution_id}.json")
    first, second = (targets / f"{i}.json" for i in ids)
    data = json.loads(second.read_text(encoding="ascii"))
    data["execution_id"] = ids[0]  # the other file, as the first run
    data["execution_mode"] = "retargeted"
    second.write_text(json.dumps(data), encoding="utf-8")
    link = runs_dir / f"{ids[0]}.json"
    link.symlink_to(first)
    store = RunStore(runs_dir)
    for _ in range(3):
        assert store.load(ids[0])["execution_mode"] == "eco"
    link.unlink()
    link.symlink_to(second)
    assert store.load(ids[0])["execution_mode"] == "retargeted"
