"""The folder watch: the index keeps in step through inotify, listing the folder only when it must.

tests/test_index.py runs its keeping-in-step tests both with the watch and without it (the
listing path, as where inotify is missing); here is what the watch adds: no listing while
pipelines publish, every kind of change found by the next request all the same, and a
listing again whenever the watch cannot be trusted.
"""
import logging
import os
import sqlite3
import threading
import time

import pytest

from execution_history import ExecutionTracker, RunStore
from execution_history.errors import StorageError
from execution_history.filters import RunQuery
from execution_history.index import RunIndex
from execution_history.index import watch as watch_module
from execution_history.index.watch import FolderWatch
from execution_history.records import dump_record

ALL = RunQuery(limit=None)


def ids_of(index):
    return sorted(s["execution_id"] for s in index.query(ALL)[0])


def summaries(index):
    return {s["execution_id"]: s for s in index.query(ALL)[0]}


def record_run(store, config="dada", text="hello"):
    with ExecutionTracker(config, store=store) as run:
        run.log_user_input_text(text)
    return run.execution_id


@pytest.fixture
def listings(monkeypatch):
    """Every listing of the folder (names and inodes, or with a stat per file)."""
    seen = []
    for name in ("list_inodes", "list_files"):
        real = getattr(RunStore, name)
        monkeypatch.setattr(RunStore, name, lambda self, *a, _real=real, _name=name: seen.append(_name)
                            or _real(self, *a))
    return seen


@pytest.fixture
def index(store):
    index = RunIndex(store)
    ids_of(index)  # built, and the watch primed by that first listing
    assert index._watch is not None and index._watch.usable
    return index


def test_runs_published_while_serving_need_no_listing(index, store, recorded_runs, listings):
    for n in range(5):
        new_id = record_run(store, f"pipeline-{n}")
        assert new_id in ids_of(index)  # the next request has it
    assert listings == []


def test_every_kind_of_hand_change_is_found_by_the_next_request_without_a_listing(
        index, store, recorded_runs, listings, tmp_path):
    first, second, third = recorded_runs[:3]
    # copied in whole (a rename into the folder)
    record = {**store.load(first), "execution_id": "exec_20250101_000000_0000c0de", "config_name": "copied"}
    outside = tmp_path / "outside.json"
    outside.write_bytes(dump_record(record))
    os.replace(outside, store.path_for(record["execution_id"]))
    assert record["execution_id"] in ids_of(index)
    # deleted by hand
    store.path_for(second).unlink()
    assert second not in ids_of(index)
    # renamed over another run's file
    outside.write_bytes(dump_record({**store.load(third), "config_name": "replaced"}))
    os.replace(outside, store.path_for(third))
    assert summaries(index)[third]["config_name"] == "replaced"
    # edited in place (same inode): the watch sees the write, no rescan needed
    path = store.path_for(first)
    edited = dump_record({**store.load(first), "config_name": "edited-in-place"})
    with open(path, "r+b") as f:
        f.write(edited)
        f.truncate()
    assert summaries(index)[first]["config_name"] == "edited-in-place"
    assert listings == []


def test_a_file_written_in_steps_ends_indexed_as_it_ends(index, store, recorded_runs):
    # A copy that creates the file, then writes it in pieces: read half-written, it is unreadable,
    # and the later writes are seen.
    new_id = "exec_20250101_000000_0000beef"
    data = dump_record({**store.load(recorded_runs[0]), "execution_id": new_id, "config_name": "in-steps"})
    with open(store.path_for(new_id), "wb") as f:
        f.write(data[:100])
        f.flush()
        assert index.stats()["unreadable_records"] == 1 and new_id not in ids_of(index)
        f.write(data[100:])
    assert summaries(index)[new_id]["config_name"] == "in-steps"
    assert index.stats()["unreadable_records"] == 0


def test_a_badly_named_record_file_is_counted_by_a_listing(index, store, recorded_runs, listings):
    (store.root / "exec_not-an-id.json").write_text("{}")
    assert index.stats()["unreadable_records"] == 1  # a name that is no id: only a listing counts it
    assert listings == ["list_inodes"]


def test_a_lost_watch_means_a_listing_and_a_new_watch(index, store, recorded_runs, listings, monkeypatch):
    old = index._watch
    monkeypatch.setattr(FolderWatch, "read", lambda self: None)  # events dropped (IN_Q_OVERFLOW)
    new_id = record_run(store, "after-overflow")
    assert new_id in ids_of(index)
    assert listings == ["list_inodes"]  # found by listing the folder
    monkeypatch.undo()
    old.close()
    index._watch_tried_at = float("-inf")
    ids_of(index)
    assert index._watch is not old and index._watch.usable
    listings.clear()
    record_run(store, "watched-again")
    assert ids_of(index).count(new_id) == 1 and len(ids_of(index)) == len(recorded_runs) + 2


def test_names_whose_indexing_failed_are_indexed_by_the_next_request(index, store, recorded_runs, listings,
                                                                      monkeypatch):
    """A write that fails (disk full, a read-only remount) loses no name the watch read: the
    next request indexes the run, without a listing (not only the check of every file later)."""
    real = type(index)._write

    def full(self, conn, work):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(type(index), "_write", full)
    new_id = record_run(store, "while-full")
    with pytest.raises(StorageError):
        ids_of(index)
    monkeypatch.setattr(type(index), "_write", real)
    assert new_id in ids_of(index)
    assert listings == []  # from the names put back, not a listing


def test_the_folder_moved_away_and_made_again(store, recorded_runs, tmp_path):
    index = RunIndex(store, folder=tmp_path / "index")
    assert ids_of(index) == sorted(recorded_runs)
    # the folder itself replaced: its watch reports IN_MOVE_SELF and is dropped, and the new
    # folder is listed (and watched from then on)
    os.rename(store.root, tmp_path / "old-runs")
    store.root.mkdir()
    new_id = record_run(store, "new-folder")
    index._watch_tried_at = float("-inf")
    assert ids_of(index) == [new_id]
    newer_id = record_run(store, "new-folder")
    assert ids_of(index) == sorted([new_id, newer_id])


def test_two_processes_worth_of_indexes_share_one_index_and_parse_once(store, recorded_runs, monkeypatch, listings):
    # Two workers' RunIndex objects on one index: each has its own watch; a run published is
    # seen by both, and parsed by the first only (the second finds its identity indexed).
    first, second = RunIndex(store), RunIndex(store)
    ids_of(first), ids_of(second)  # the second primed by the folder unchanged since the first listed it
    listings.clear()
    parsed = []
    real = RunStore.path_for
    new_id = record_run(store, "shared")
    monkeypatch.setattr(RunStore, "path_for", lambda self, i: parsed.append(i) or real(self, i))
    assert new_id in ids_of(first) and new_id in ids_of(second)
    assert parsed.count(new_id) == 3  # first: identity + read; second: identity only
    assert listings == []
    assert first._watch is not second._watch


def test_a_watch_made_in_another_process_is_not_used(index, store, recorded_runs, listings):
    index._watch.pid = -1  # as a forked child sees its parent's watch
    new_id = record_run(store, "after-fork")
    assert new_id in ids_of(index)
    assert index._watch.pid == os.getpid()  # a watch of its own
    assert listings == ["list_inodes"]  # and a listing that began after it


def test_without_inotify_the_folder_is_listed(store, recorded_runs, listings, monkeypatch, caplog):
    class Refusing:  # inotify_init1 fails as with max_user_instances used up
        @staticmethod
        def inotify_init1(flags):
            return -1

    monkeypatch.setattr(watch_module, "_LIBC", Refusing)
    monkeypatch.setattr(watch_module, "_logged", set())
    caplog.set_level(logging.INFO, "execution_history.index")
    index = RunIndex(store)
    ids_of(index)
    new_id = record_run(store, "listed")
    assert new_id in ids_of(index)
    assert index._watch is None and "list_inodes" in listings
    assert any("keeping in step by listing the folder" in r.getMessage() for r in caplog.records)


def test_the_periodic_check_of_every_file_runs_beside_the_requests(store, recorded_runs, monkeypatch):
    # Every rescan_seconds one process stats every file (edits in place on other hosts). In
    # the app it runs in a thread: the request that finds it due does not wait for it.
    clock = [1_000_000.0]
    index = RunIndex(store, rescan_seconds=60, clock=lambda: clock[0], build_in_background=True)
    ids_of(index)
    started, release = threading.Event(), threading.Event()
    real = RunStore.list_files

    def slow_list_files(self, *a):
        started.set()
        release.wait(10)
        return real(self, *a)

    monkeypatch.setattr(RunStore, "list_files", slow_list_files)
    clock[0] += 61
    before = time.monotonic()
    assert len(ids_of(index)) == len(recorded_runs)
    assert started.wait(5) and time.monotonic() - before < 5
    assert len(ids_of(index)) == len(recorded_runs)  # served while the check is under way
    release.set()
    deadline = time.monotonic() + 10
    while float(index._meta(index._connection())["full_check_at"]) != clock[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert float(index._meta(index._connection())["full_check_at"]) == clock[0]


def test_on_a_network_file_system_the_folder_is_listed(store, recorded_runs, listings, monkeypatch):
    # NFS, SMB, FUSE...: other hosts write there unseen by this kernel's inotify
    here = watch_module.fs_type(store.root)
    assert here is not None
    assert FolderWatch.open(store.root) is not None
    monkeypatch.setattr(watch_module, "_SHARED_FILE_SYSTEMS", {here})
    assert FolderWatch.open(store.root) is None
    index = RunIndex(store)
    ids_of(index)
    new_id = record_run(store, "on-nfs")
    assert new_id in ids_of(index) and index._watch is None and "list_inodes" in listings


def test_a_run_another_worker_indexed_meanwhile_is_not_written_twice(store, recorded_runs, monkeypatch):
    import execution_history.index.sync as sync_module

    first, second = RunIndex(store), RunIndex(store)
    ids_of(first), ids_of(second)
    new_id = record_run(store, "raced")
    real_iter_parsed = sync_module.iter_parsed

    def parse_while_the_other_worker_indexes(*args, **kwargs):
        if not raced:
            raced.append(1)
            ids_of(first)  # the first worker indexes the run while the second is parsing it
        return real_iter_parsed(*args, **kwargs)

    raced = []

    monkeypatch.setattr(sync_module, "iter_parsed", parse_while_the_other_worker_indexes)
    row = "SELECT id FROM runs WHERE execution_id = ?"
    written = []
    real_store_batch = RunIndex._store_batch
    monkeypatch.setattr(RunIndex, "_store_batch", lambda self, c, parsed, **kw: written.append(parsed)
                        or real_store_batch(self, c, parsed, **kw))
    assert new_id in ids_of(second)
    monkeypatch.undo()
    assert raced
    # the first worker wrote the run; the second, finding it indexed within its transaction, did not
    assert [[i for i, _ in batch] for batch in written] == [[new_id], []]
    rows = first._connection().execute(row, (new_id,)).fetchall()
    assert len(rows) == 1


def test_a_special_file_appearing_while_watched_is_counted_unreadable_and_never_blocks(index, store, recorded_runs,
                                                                                        listings):
    fifo = store.root / "exec_20250101_000000_0000f1f0.json"
    os.mkfifo(fifo)  # opening it to read would block without a writer
    stats = index.stats()
    assert stats["unreadable_records"] == 1 and listings == []  # found through the watch, not a listing
    fifo.unlink()
    assert index.stats()["unreadable_records"] == 0


def test_requests_waiting_for_the_watch_share_one_read_and_each_sees_what_came_before_it(
        index, store, recorded_runs, monkeypatch):
    """Requests that queue behind a thread applying the watch's names take no read of their own
    when that read began after they arrived; the rest do one more. Whatever the order, each
    request finds every run published before it arrived, while pipelines keep publishing."""
    reads = []
    real_read = FolderWatch.read
    real_index_changed = RunIndex._index_changed

    def slow_index_changed(self, conn, ids):
        time.sleep(0.05)  # a write that takes a while: requests pile up behind it
        return real_index_changed(self, conn, ids)

    monkeypatch.setattr(FolderWatch, "read", lambda self: reads.append(1) or real_read(self))
    monkeypatch.setattr(RunIndex, "_index_changed", slow_index_changed)
    stop = threading.Event()
    published: list[str] = []

    def publish() -> None:
        while not stop.is_set():
            published.append(record_run(store, "stream"))
            time.sleep(0.005)

    failures: list[str] = []

    def request() -> None:
        before = list(published)  # published before this request arrived
        listed = set(ids_of(index))
        failures.extend(i for i in before if i not in listed)

    writer = threading.Thread(target=publish)
    writer.start()
    try:
        time.sleep(0.05)
        for _ in range(3):
            threads = [threading.Thread(target=request) for _ in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        stop.set()
        writer.join()
    assert failures == []
    assert len(reads) <= 3 * 6, len(reads)  # 36 requests, at most a read per two of them
    request()
    assert failures == []


def test_the_periodic_check_finds_an_edit_the_watch_missed_without_holding_the_write_lock(
        store, recorded_runs, monkeypatch):
    """An edit in place the watch did not report (made before it began: here its events are
    read and dropped) is found by the check of every file, which looks at the files without
    the index's write lock (another process may index runs meanwhile), then indexes what differs;
    a file deleted unreported goes too."""
    import fcntl

    clock = [1_000_000.0]
    index = RunIndex(store, rescan_seconds=60, clock=lambda: clock[0])
    ids_of(index)
    first, second = recorded_runs[:2]
    path = store.path_for(first)
    with open(path, "r+b") as f:
        f.write(dump_record({**store.load(first), "config_name": "edited-unseen"}))
        f.truncate()
    store.path_for(second).unlink()
    assert index._watch.read()  # the events are gone: the watch will not name these files
    assert summaries(index)[first]["config_name"] != "edited-unseen" and second in ids_of(index)
    lock_free = []
    real = RunStore.list_files

    def list_files(self, *a):
        fd = os.open(index.folder / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the write lock is held
            lock_free.append(True)
        finally:
            os.close(fd)
        return real(self, *a)

    monkeypatch.setattr(RunStore, "list_files", list_files)
    clock[0] += 61
    index.sync()  # the check is due: here and now (no background threads outside the app)
    assert lock_free == [True]
    assert summaries(index)[first]["config_name"] == "edited-unseen" and second not in ids_of(index)
    assert float(index._meta(index._connection())["full_check_at"]) == clock[0]
