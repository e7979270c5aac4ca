"""RunIndex: never stale, rebuilt when lost, shared safely by several processes."""
import datetime as dt
import itertools
import multiprocessing
import os
import sqlite3
import time
from dataclasses import replace

import pytest

from execution_history import ExecutionTracker, RunStore
from execution_history.filters import RunFilters, RunQuery
from execution_history.index import RunIndex
from execution_history.index.watch import FolderWatch
from execution_history.records import dump_record

ALL = RunQuery(limit=None)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True, params=["watch", "listing"])
def keeping_in_step(request, monkeypatch):
    """Each test runs with the folder watch and without it (by listing, as where inotify is missing)."""
    if request.param == "listing":
        monkeypatch.setattr(FolderWatch, "open", classmethod(lambda cls, folder: None))
    return request.param


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def index(store, clock):
    return RunIndex(store, rescan_seconds=60, clock=clock)


def ids_of(index, query=ALL):
    return sorted(s["execution_id"] for s in index.query(query)[0])


def record_run(store, config="dada", text="hello"):
    with ExecutionTracker(config, store=store) as run:
        run.log_user_input_text(text)
    return run.execution_id


def copy_as(store, source_id, new_id, **changes):
    record = {**store.load(source_id), "execution_id": new_id, **changes}
    temp = store.root.parent / "outside.json"
    temp.write_bytes(dump_record(record))
    os.replace(temp, store.path_for(new_id))  # a hand copy that arrives whole


def test_index_answers_like_the_files(index, store, recorded_runs):
    assert ids_of(index) == sorted(recorded_runs)
    (store.root / "exec_20250101_000000_0000dead.json").write_text("{")
    (store.root / "exec_not-an-id.json").write_text("{}")
    stats = index.stats()
    assert stats == store.scan_stats() and stats["unreadable_records"] == 2
    assert stats["total_size_bytes"] == sum(p.stat().st_size for p in store.root.glob("exec_*.json"))


def test_file_copied_in_by_hand_shows_up_on_the_next_request(index, store, recorded_runs):
    ids_of(index)
    copy_as(store, recorded_runs[0], "exec_20250101_000000_00000001", config_name="handmade")
    page, total = index.query(RunQuery(RunFilters(config_name="handmade")))
    assert total == 1 and page[0]["execution_id"] == "exec_20250101_000000_00000001"


def test_file_deleted_by_hand_disappears_on_the_next_request(index, store, recorded_runs):
    ids_of(index)
    store.path_for(recorded_runs[1]).unlink()
    assert ids_of(index) == sorted(set(recorded_runs) - {recorded_runs[1]})
    assert index.stats()["total_records"] == len(recorded_runs) - 1


def test_file_replaced_by_rename_shows_its_new_content(index, store, recorded_runs):
    ids_of(index)
    copy_as(store, recorded_runs[0], recorded_runs[0], config_name="replaced")
    assert index.query(RunQuery(RunFilters(config_name="replaced")))[1] == 1


def test_file_replaced_by_garbage_becomes_unreadable(index, store, recorded_runs):
    ids_of(index)
    temp = store.root.parent / "garbage"
    temp.write_text('{"truncated')
    os.replace(temp, store.path_for(recorded_runs[0]))
    assert recorded_runs[0] not in ids_of(index)
    assert index.stats()["unreadable_records"] == 1


def edit_in_place(path, old, new):
    assert len(old) == len(new)
    raw = path.read_bytes()
    with open(path, "r+b") as handle:  # same inode, same size: the folder's mtime does not move
        handle.write(raw.replace(old, new))


def test_file_edited_in_place_shows_up_within_the_rescan_period(index, store, clock, recorded_runs):
    ids_of(index)
    edit_in_place(store.path_for(recorded_runs[0]), b'"stillepost"', b'"stillpost!"')
    clock.now += 61
    assert index.query(RunQuery(RunFilters(config_name="stillpost!")))[1] == 1


def test_file_edited_in_place_shows_up_after_reindex(index, store, recorded_runs):
    ids_of(index)
    edit_in_place(store.path_for(recorded_runs[0]), b'"stillepost"', b'"stillpost!"')
    index.rebuild()
    assert index.query(RunQuery(RunFilters(config_name="stillpost!")))[1] == 1


def test_deleted_index_is_rebuilt_and_loses_nothing(index, store, recorded_runs):
    before = index.query(ALL)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{index.path}{suffix}"):
            os.unlink(f"{index.path}{suffix}")
    assert index.query(ALL) == before
    assert index.path.exists()


def test_corrupt_index_is_rebuilt(store, clock, recorded_runs):
    index = RunIndex(store, clock=clock)
    index.folder.mkdir()
    index.path.write_bytes(b"this is not a database" * 100)
    assert ids_of(index) == sorted(recorded_runs)


def test_run_finalized_by_the_tracker_is_found_by_one_cheap_listing(index, store, monkeypatch, keeping_in_step):
    # The tracker publishes through the store only (no index lock): the next request lists
    # the folder once, names and inodes, and no file is stat-ed; with the folder watch, it
    # indexes the one file the watch names and lists nothing.
    ids_of(index)
    listings = []
    for name in ("list_inodes", "list_files"):
        real = getattr(RunStore, name)
        monkeypatch.setattr(RunStore, name, lambda self, *a, _r=real, _n=name: listings.append(_n) or _r(self, *a))
    new_id = record_run(store, "written-through")
    assert new_id in ids_of(index)
    assert listings == ([] if keeping_in_step == "watch" else ["list_inodes"])


def test_a_change_right_after_a_listing_is_found_by_the_next_request(index, store, recorded_runs):
    for n in range(20):  # no waiting in between: changes land within the same clock tick
        ids_of(index)
        copy_as(store, recorded_runs[0], f"exec_20250101_000000_{n:08x}", config_name="quick")
    assert index.query(RunQuery(RunFilters(config_name="quick")))[1] == 20


def _write_runs(root, count, config):
    store = RunStore(root)
    for n in range(count):
        with ExecutionTracker(config, store=store) as run:
            run.log_user_input_text(f"run {n} of {config}")


def _read_until(root, stop_file, results):
    index = RunIndex(RunStore(root), rescan_seconds=0.5)
    errors, reads = [], 0
    while not os.path.exists(stop_file):
        try:
            index.query(RunQuery(RunFilters(q="run"), limit=5))
            index.stats()
            reads += 1
        except Exception as err:  # noqa: BLE001 - collected and reported by the test
            errors.append(f"{err!r} {getattr(err, 'context', '')}")
    results.put((reads, errors))


def test_two_writers_and_two_readers_at_once(store, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    stop = tmp_path / "stop"
    results = ctx.Queue()
    readers = [ctx.Process(target=_read_until, args=(str(store.root), str(stop), results)) for _ in range(2)]
    writers = [ctx.Process(target=_write_runs, args=(str(store.root), 60, f"w{n}")) for n in range(2)]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0
    stop.touch()
    outcomes = [results.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(timeout=60)
    assert all(errors == [] for _, errors in outcomes), outcomes
    assert all(reads > 0 for reads, _ in outcomes)
    index = RunIndex(store)
    assert index.count(RunQuery(RunFilters(q="run"))) == 120
    assert index.stats()["by_config"] == {"w0": 60, "w1": 60}


def test_large_scans_parse_in_worker_processes(store, recorded_runs, monkeypatch, caplog):
    import execution_history.index as index_module

    (store.root / "exec_20250101_000000_0000dead.json").write_text("{")
    monkeypatch.setattr(index_module.sync, "PARALLEL_MIN", 2)
    monkeypatch.setattr(index_module.sync, "CHUNK", 3)
    ids = sorted(store.list_inodes())
    chunks = list(index_module.iter_parsed(store, ids))
    assert [i for chunk in chunks for i, _ in chunk] == ids
    assert "worker processes failed" not in caplog.text  # the pool did the parsing, not the fallback
    index = RunIndex(store)
    assert ids_of(index) == sorted(recorded_runs)
    assert index.stats() == store.scan_stats()


def test_workers_that_break_mid_scan_leave_no_id_unparsed_or_parsed_twice(store, recorded_runs, monkeypatch, caplog):
    """The ids may come as a stream (a cold build's text phase reads them a slab at a time): when
    the pool breaks after some chunks, this process parses the chunks in flight and the rest."""
    import execution_history.index as index_module

    sync_module = index_module.sync
    monkeypatch.setattr(sync_module, "PARALLEL_MIN", 2)
    monkeypatch.setattr(sync_module, "CHUNK", 2)
    ids = sorted(store.list_inodes())
    real_pool = sync_module.ProcessPoolExecutor

    class BreaksAfterTwo(real_pool):
        submitted = 0

        def submit(self, *args, **kwargs):
            BreaksAfterTwo.submitted += 1
            if BreaksAfterTwo.submitted > 2:
                raise sync_module.BrokenProcessPool("a worker died")
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(sync_module, "ProcessPoolExecutor", BreaksAfterTwo)
    chunks = list(index_module.iter_parsed(store, (i for i in ids), total=len(ids)))
    assert [i for chunk in chunks for i, _ in chunk] == ids
    assert "worker processes failed" in caplog.text


def test_a_cold_builds_text_phase_reads_the_runs_a_slab_at_a_time(runs_dir, monkeypatch):
    import execution_history.index.sync as sync_module

    monkeypatch.setattr(sync_module, "TEXT_SLAB", 3)
    monkeypatch.setattr(sync_module, "TEXT_BATCH_BYTES", 50)  # a transaction every run or so
    monkeypatch.setattr(sync_module, "BATCH", 4)  # more files than a batch: a cold build in phases
    store = RunStore(runs_dir)
    monkeypatch.setattr(sync_module, "CHUNK", 2)
    ids = [record_run(store, config=f"c{n}", text=f"quokka{n} wombat") for n in range(11)]
    slabs = []
    original = sync_module.IndexSync._text_ids

    def counted(conn, after, upto, listed):
        for execution_id in original(conn, after, upto, listed):
            slabs.append(len(listed))
            yield execution_id

    monkeypatch.setattr(sync_module.IndexSync, "_text_ids", staticmethod(counted))
    index = RunIndex(store)
    assert index.count(RunQuery(RunFilters(q="wombat"))) == 11
    assert all(index.count(RunQuery(RunFilters(q=f"quokka{n}"))) == 1 for n in range(11))
    assert slabs and max(slabs) <= 3 * 2 + 3  # ids in flight: a few chunks, never every run
    assert sorted(ids) == sorted(ids_of(index))


def test_requests_waiting_for_a_scan_share_the_next_one_under_a_stream_of_new_runs(runs_dir, monkeypatch,
                                                                                    keeping_in_step):
    """Requests that queue for the scan lock while pipelines keep publishing are answered by
    one scan that listed the folder after they arrived, not by one scan each in turn; and
    each of them sees every run published before it arrived. With the folder watch they do
    not queue at all: another process's scan holds none of them up."""
    import fcntl
    import threading

    import execution_history.index.sync as sync_module

    store = RunStore(runs_dir)
    index = RunIndex(store)
    record_run(store)
    index.sync()
    scans, arrived = [], []
    original_scan, original_lock = sync_module.IndexSync._scan, type(index)._scan_lock

    def scan(self, conn, full):
        original_scan(self, conn, full)
        scans.append(1)
        record_run(store, config="during")  # a pipeline publishes while every scan runs

    def scan_lock(self):
        arrived.append(threading.get_ident())
        return original_lock(self)

    monkeypatch.setattr(sync_module.IndexSync, "_scan", scan)
    monkeypatch.setattr(type(index), "_scan_lock", scan_lock)
    before = record_run(store, config="before")  # published before any of the requests below
    seen = {}
    holder = os.open(index.lock_path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a scan of another process is under way

    def request(n):  # a list request: query() brings the index in step first
        seen[n] = {s["execution_id"] for s in index.query(ALL)[0]}

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    if keeping_in_step == "watch":
        for thread in threads:
            thread.join(timeout=60)
        os.close(holder)
        assert len(seen) == len(threads) and all(before in ids for ids in seen.values())
        assert arrived == [] and scans == []
        return
    while len(arrived) < len(threads):
        threading.Event().wait(0.01)
    os.close(holder)  # that scan ends (it listed the folder before the requests arrived)
    for thread in threads:
        thread.join(timeout=60)
    assert len(seen) == len(threads) and all(before in ids for ids in seen.values())
    assert len(scans) == 1, f"{len(scans)} scans for {len(threads)} waiting requests"


def fts_count(index, word):
    return index._connection().execute("SELECT COUNT(*) FROM run_text WHERE run_text MATCH ?", (word,)).fetchone()[0]


def pending(index):
    return index._connection().execute("SELECT COUNT(*) FROM text_pending").fetchone()[0]


def test_a_run_published_is_searched_at_once_and_lists_leave_the_search_index_alone(index, store, recorded_runs):
    # Neither lists nor searches pay a write to the large search index (its segment merges
    # are slow): a run indexed alone is searched in the small recent_text.
    ids_of(index)
    waiting = pending(index)  # the sample runs too: fewer than TEXT_PENDING_MAX
    new_id = record_run(store, text="numbat in the tree")
    assert new_id in ids_of(index)
    assert pending(index) == waiting + 1 and fts_count(index, "numbat") == 0
    found = index.query(RunQuery(RunFilters(q="numbat"), limit=None))[0]  # searched in recent_text
    assert [s["execution_id"] for s in found] == [new_id]
    assert pending(index) == waiting + 1 and fts_count(index, "numbat") == 0
    assert index.count(RunQuery(RunFilters(q='"numbat in the tree"'))) == 1  # phrases too


def test_the_pending_text_of_a_run_deleted_is_never_found(index, store, recorded_runs):
    ids_of(index)
    waiting = pending(index)
    gone = record_run(store, text="bilby")
    kept = record_run(store, text="bilby too")
    ids_of(index)
    store.path_for(gone).unlink()
    assert gone not in ids_of(index) and pending(index) == waiting + 1
    assert index.count(RunQuery(RunFilters(q="bilby"))) == 1
    assert fts_count(index, "bilby") == 0  # neither reached the large search index
    assert [s["execution_id"] for s in index.query(RunQuery(RunFilters(q="bilby"), limit=None))[0]] == [kept]


def test_pending_text_is_moved_once_a_batch_waits(index, store, recorded_runs, monkeypatch):
    import execution_history.index.sync as sync_module

    ids_of(index)
    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", pending(index) + 3)
    for n in range(3):
        record_run(store, text=f"potoroo{n}")
        ids_of(index)
    assert pending(index) == 0 and fts_count(index, "potoroo0") == 1 and fts_count(index, "potoroo2") == 1
    recent = index._connection().execute("SELECT COUNT(*) FROM recent_text WHERE recent_text MATCH 'potoroo0'")
    assert recent.fetchone()[0] == 0  # emptied of what moved
    assert index.count(RunQuery(RunFilters(q="potoroo1"))) == 1  # found once, not twice


def search_ids(index, word):
    query = RunQuery(RunFilters(q=word), limit=None)
    page, total = index.query(query)
    joined = index.count(RunQuery(RunFilters(q=word, date_from=dt.date(1970, 1, 1))))  # counted by a join
    assert total == len(page) == joined
    return sorted(s["execution_id"] for s in page)


def test_a_long_write_to_the_search_database_holds_up_no_new_run(store, clock, recorded_runs, monkeypatch):
    """The large search index is a database file of its own: while a write to it goes on (a
    move of pending text merging segments: held here), a run is indexed, listed, found by a
    text search and dropped again, and nothing waits for that write."""
    import sqlite3

    import execution_history.index.connection as connection_module

    monkeypatch.setattr(connection_module, "BUSY_TIMEOUT_MS", 2000)  # a wrong lock fails in seconds
    index = RunIndex(store, clock=clock)
    ids_of(index)
    holder = sqlite3.connect(index.search_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO meta VALUES ('held', 1)")
    try:
        new_id = record_run(store, text="quokka on the path")
        assert new_id in ids_of(index)
        assert search_ids(index, "quokka") == [new_id]
        assert index.stats()["total_records"] == len(recorded_runs) + 1
        store.path_for(new_id).unlink()
        assert new_id not in ids_of(index) and search_ids(index, "quokka") == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_move_cut_short_after_its_search_write_finds_each_run_once(index, store, recorded_runs, monkeypatch):
    """A move writes run_text first, then drops the pending rows: cut short between the two
    (a killed process), every run is found once, deletes meanwhile count, and the next move
    finishes it."""
    ids_of(index)
    dunnarts = [record_run(store, text=f"dunnart {n}") for n in range(3)]
    ids_of(index)

    def killed(conn):
        raise RuntimeError("killed")

    monkeypatch.setattr(RunIndex, "_drop_moved", staticmethod(killed))
    fd = index._try_text_lock()
    try:
        with pytest.raises(RuntimeError):
            index._move_pending_text()
    finally:
        os.close(fd)
    assert fts_count(index, "dunnart") == 3 and pending(index) >= 3  # in both tables
    assert search_ids(index, "dunnart") == sorted(dunnarts)
    store.path_for(dunnarts[0]).unlink()
    assert search_ids(index, "dunnart") == sorted(dunnarts[1:])
    monkeypatch.undo()
    fd = index._try_text_lock()
    try:
        assert index._move_pending_text() == 0  # nothing left to write: only the rows to drop
    finally:
        os.close(fd)
    assert pending(index) == 0 and fts_count(index, "dunnart") == 3
    assert search_ids(index, "dunnart") == sorted(dunnarts[1:])
    fresh = record_run(store, text="dunnart fresh")
    assert search_ids(index, "dunnart") == sorted([*dunnarts[1:], fresh])


def test_a_move_writes_the_search_index_without_the_index_write_lock(index, store, recorded_runs):
    """While another process holds the index's write lock, a move writes the search database
    all the same (the long part: segment merges); only its last step waits for the lock."""
    import fcntl
    import threading

    ids_of(index)
    moving = [record_run(store, text=f"quoll {n}") for n in range(3)]
    ids_of(index)
    holder = os.open(index.folder / "write.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    text_lock = index._try_text_lock()
    mover = threading.Thread(target=index._move_pending_text)
    try:
        mover.start()
        deadline = time.monotonic() + 20
        while fts_count(index, "quoll") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fts_count(index, "quoll") == 3 and mover.is_alive()  # written, and waiting for the last step
        assert search_ids(index, "quoll") == sorted(moving)  # found once meanwhile
    finally:
        os.close(holder)
        mover.join(timeout=20)
        os.close(text_lock)
    assert not mover.is_alive() and pending(index) == 0 and search_ids(index, "quoll") == sorted(moving)


@pytest.mark.parametrize("loss", ["deleted", "damaged"])
def test_the_search_database_lost_is_made_again_with_every_runs_text(index, store, clock, recorded_runs, monkeypatch,
                                                                    loss):
    """search.sqlite3 deleted or damaged (the index intact): it is made again, and the text of
    every run, moved or pending, indexed again; no run is found twice."""
    import execution_history.index.sync as sync_module

    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", 1)
    moved = [record_run(store, text=f"bettong {n}") for n in range(2)]
    ids_of(index)  # indexed and moved into run_text
    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", 500)
    waiting = record_run(store, text="bettong waiting")
    ids_of(index)
    assert pending(index) == 1 and fts_count(index, "bettong") == 2
    words = ("bettong", "hello", '"bettong waiting"')
    before = [search_ids(index, word) for word in words]
    assert before[0] == sorted([*moved, waiting])
    if loss == "deleted":
        os.unlink(index.search_path)
    else:
        with open(index.search_path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(100)
            handle.write(os.urandom(size - 100))
    index = RunIndex(store, clock=clock)  # a fresh process: nothing cached from before
    assert [search_ids(index, word) for word in words] == before
    assert fts_count(index, "bettong") == 3
    new_id = record_run(store, text="bettong new")
    assert search_ids(index, "bettong") == sorted([*moved, waiting, new_id])


def test_two_processes_that_find_the_same_damage_repair_it_once(index, store, clock, recorded_runs, monkeypatch,
                                                                caplog):
    """Two workers open a damaged search database together: the one that finds, when it comes
    to repair it, that the other has made it again already opens that file; it throws away
    neither the new search database nor the index (which would mean a rebuild)."""
    expected = [record_run(store, text="bilby here")]
    assert search_ids(index, "bilby") == expected
    index._connection().close()
    index.search_path.write_bytes(os.urandom(8192))  # not a database at all
    index_inode = os.stat(index.path).st_ino
    first, second = RunIndex(store, clock=clock), RunIndex(store, clock=clock)  # two fresh processes
    real, repaired = RunIndex._open_checked, []

    def the_other_repairs_first(self):
        try:
            return real(self)
        except sqlite3.DatabaseError:
            if self is first and not repaired:  # between its failure and its repair
                second._connection()
                repaired.append(os.stat(second.search_path).st_ino)
            raise

    monkeypatch.setattr(RunIndex, "_open_checked", the_other_repairs_first)
    caplog.clear()
    first._connection()
    assert repaired and os.stat(first.search_path).st_ino == repaired[0]
    assert os.stat(first.path).st_ino == index_inode
    # by the log too (a file made again may get the inode number of the one removed)
    assert caplog.text.count("unusable") == 1 and "rebuilding it from the record files" not in caplog.text
    monkeypatch.undo()
    assert search_ids(first, "bilby") == expected


def test_a_damaged_file_that_changes_at_each_failed_open_is_still_repaired(index, store, clock, recorded_runs,
                                                                         monkeypatch, caplog):
    """A damaged search database that a failed open writes to (its ctime moves, as if another
    process had made it again) is taken for a replacement once, then repaired: never an index
    that fails every open."""
    expected = [record_run(store, text="quoll here")]
    assert search_ids(index, "quoll") == expected
    index._connection().close()
    fresh = RunIndex(store, clock=clock)
    real, failed = RunIndex._open_checked, []

    def damaged_and_written(self):
        if not failed or self.search_path.exists() and os.stat(self.search_path).st_ino == failed[0]:
            failed.append(os.stat(self.search_path).st_ino)
            time.sleep(0.01)
            os.utime(self.search_path)  # written to: a new ctime
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(self)

    monkeypatch.setattr(RunIndex, "_open_checked", damaged_and_written)
    fresh._connection()
    assert len(failed) == 2  # once taken for another's repair, then repaired
    assert "rebuilding it from the record files" in caplog.text  # (the file was fine: the index judged)
    monkeypatch.undo()
    assert search_ids(fresh, "quoll") == expected


def test_an_index_of_the_earlier_schema_with_its_search_index_inside_is_rebuilt(store, clock, recorded_runs):
    """An index of schema 14 kept run_text in runs.sqlite3: opened now, it is rebuilt, the old
    search tables go, and searches answer from search.sqlite3."""
    import sqlite3

    index = RunIndex(store, clock=clock)
    expected = [record_run(store, text="echidna here")]
    assert search_ids(index, "echidna") == expected
    index._connection().close()
    os.unlink(index.search_path)
    with sqlite3.connect(index.path) as old:
        old.execute("CREATE VIRTUAL TABLE run_text USING fts5(content, content='')")
        old.execute("INSERT INTO run_text (rowid, content) VALUES (1, 'echidna stale')")
        old.execute("UPDATE meta SET value = '14' WHERE key = 'schema_version'")
    index = RunIndex(store, clock=clock)
    assert search_ids(index, "echidna") == expected and search_ids(index, "stale") == []
    with sqlite3.connect(index.path) as upgraded:
        names = {row[0] for row in upgraded.execute("SELECT name FROM sqlite_master")}
    assert not any(name.startswith("run_text") for name in names)


@pytest.mark.parametrize("odd", ["cut\x00here", "日本語 🌸", 'quote " and \\u0000 spelled out'])
def test_item_types_and_models_are_indexed_whole(index, store, odd):
    """Item types and models reach the index through SQLite's JSON functions (one statement
    per batch), which would cut a value at U+0000: such a batch goes row by row instead."""
    source = record_run(store, config="plain")
    record = store.load(source)
    items = [{**item, "item_type": odd, "model_used": odd + "-model"} for item in record["items"]]
    copy_as(store, source, "exec_20250101_000000_0000abcd", items=items, config_name="odd")
    assert ids_of(index, RunQuery(RunFilters(item_type=odd))) == ["exec_20250101_000000_0000abcd"]
    assert ids_of(index, RunQuery(RunFilters(model=odd + "-model"))) == ["exec_20250101_000000_0000abcd"]
    assert ids_of(index, RunQuery(RunFilters(item_type=odd.split("\x00")[0]))) == ([] if "\x00" in odd else
                                                                                   ["exec_20250101_000000_0000abcd"])


def test_a_text_search_matching_many_runs_pages_as_one_matching_few(index, store, recorded_runs, monkeypatch):
    """Past TEXT_SCAN_ABOVE matches a page walks the sort's index instead of fetching every
    match by id: the same pages, in every order, filtered or not, at any offset; runs gone
    (their text still in the search index) are never on a page."""
    import execution_history.index.queries as queries_module

    for n in range(12):
        record_run(store, config=("dada", "stille_post")[n % 2], text=f"wombat number {n}")
    gone = record_run(store, text="wombat gone")
    ids_of(index)
    store.path_for(gone).unlink()
    queries = [RunQuery(RunFilters(q="wombat", **filters), order_by=order_by, order=order, limit=limit, offset=offset)
               for filters in ({}, {"config_name": "dada"}, {"status": "completed"})
               for order_by in ("timestamp", "config_name", "total_execution_time", "items_count")
               for order in ("asc", "desc") for limit, offset in ((5, 0), (5, 4), (None, 0))]

    def pages() -> list[tuple[list[str], int]]:
        return [([s["execution_id"] for s in page], total) for page, total in map(index.query, queries)]

    monkeypatch.setattr(queries_module, "TEXT_SCAN_ABOVE", 10**9)
    by_id = pages()
    monkeypatch.setattr(queries_module, "TEXT_SCAN_ABOVE", 0)
    assert pages() == by_id
    assert by_id[0][1] == 12 and all(gone not in ids for ids, _ in by_id)
    assert len(by_id[2][0]) == 12 and [len(ids) for ids, _ in by_id[:2]] == [5, 5]


def test_a_text_searchs_total_from_the_search_index_counts_the_runs_it_lists(index, store, recorded_runs, monkeypatch):
    """A text search alone is counted in the search index, less the terms of runs deleted or
    replaced since (orphans: in run_text for good, in recent_text until its rebuild): the total
    is always the number of runs listed, and what a filtered search (counted by joining the
    runs) says, through deletes, edits, new runs, a run in progress and a move of pending text."""
    import execution_history.index.sync as sync_module

    from execution_history.index.queries import TEXT_MATCHES
    from execution_history.filters import fts_query

    for n in range(6):
        record_run(store, text=f"wombat {n}")
    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", 1)
    ids_of(index)  # indexed, and moved into run_text (with the sample runs)
    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", 500)
    assert index._connection().execute("SELECT COUNT(*) FROM run_text WHERE run_text MATCH 'wombat'").fetchone()[0] == 6

    def check() -> int:
        query = RunQuery(RunFilters(q="wombat"), limit=None)
        page, total = index.query(query)
        joined = index._connection().execute(f"SELECT COUNT(*) FROM runs r WHERE r.id IN ({TEXT_MATCHES})",
                                             [fts_query("wombat")] * 2).fetchone()[0]
        filtered = index.count(RunQuery(RunFilters(q="wombat", date_from=dt.date(1970, 1, 1))))  # counted by a join
        assert total == len(page) == joined == filtered == index.count(query)
        return total

    assert check() == 6
    wombats = [s["execution_id"] for s in index.query(RunQuery(RunFilters(q="wombat"), limit=None))[0]]
    store.path_for(wombats[0]).unlink()  # deleted: its terms stay in the search index
    assert check() == 5
    copy_as(store, wombats[1], wombats[1], config_name="stille_post")  # replaced: a new row, a new id
    assert check() == 5
    fresh = record_run(store, text="wombat fresh")  # indexed alone: pending, searched in recent_text
    assert check() == 6
    store.path_for(fresh).unlink()  # an orphan of recent_text
    record_run(store, text="wombat again")
    assert check() == 6
    live = ExecutionTracker("dada", store=store)
    live.log_user_input_text("wombat in progress")
    check()
    live.finalize()
    assert check() == 7
    monkeypatch.setattr(sync_module, "TEXT_PENDING_MAX", 1)
    record_run(store, text="wombat moved")  # the pending text moves: recent_text rebuilt
    assert check() == 8
    recent = index._connection().execute("SELECT COUNT(*) FROM text_orphans WHERE recent = 1").fetchone()[0]
    assert recent == 0 and index._connection().execute("SELECT COUNT(*) FROM text_orphans").fetchone()[0] >= 2


def test_a_search_for_the_item_separator_word_alone_matches_nothing(index, store, recorded_runs):
    from execution_history.filters import _SEPARATOR_WORD

    assert index.query(RunQuery(RunFilters(q=_SEPARATOR_WORD)))[1] == 0
    assert index.count(RunQuery(RunFilters(q=_SEPARATOR_WORD, config_name="dada"))) == 0


def test_totals_by_config_status_and_owner_come_from_the_counts_and_are_the_runs_listed(store, recorded_runs, clock):
    """A total with no filter but config, status and owner (and a researcher's scope) is summed
    from run_counts plus the runs in progress: it is always the number of runs listed and what
    counting the rows says (a date filter makes the index count them), through new runs, runs
    in progress, deletes, edits in place of the status, and unreadable files."""
    index = RunIndex(store, rescan_seconds=60, clock=clock, running_refresh=0)

    def check() -> None:
        conn = index._connection()
        configs = [None, "nope", *sorted({row[0] for row in conn.execute("SELECT config_name FROM runs")})]
        statuses = [None, *sorted({row[0] for row in conn.execute("SELECT status FROM runs")})]
        for config, status, user, scope in itertools.product(configs, statuses, (None, "u0", "u1", "nobody"),
                                                             (None, "u0")):
            filters = RunFilters(config_name=config, status=status, user_id=user)
            page, total = index.query(RunQuery(filters, limit=None), user_scope=scope)
            joined = index.count(RunQuery(replace(filters, date_from=dt.date(1970, 1, 1))), user_scope=scope)
            assert total == len(page) == joined, (config, status, user, scope)

    check()
    for n in range(6):
        with ExecutionTracker(f"cfg{n % 2}", store=store, user_id=f"u{n % 2}") as run:
            run.log_user_input_text(f"run {n}")
    live = ExecutionTracker("cfg0", store=store, user_id="u0")
    live.log_user_input_text("in progress")
    index.sync()
    assert index._connection().execute("SELECT COUNT(*) FROM runs WHERE source = 'journal'").fetchone()[0] == 1
    check()
    store.path_for(recorded_runs[0]).unlink()
    copy_as(store, recorded_runs[1], recorded_runs[1], status="failed", user_id="u1")  # edited in place
    store.path_for(recorded_runs[2]).write_text("{")
    index.sync(full=True)
    check()
    live.finalize()
    index.sync()
    check()
    # three finished before, and the one in progress, finished last
    assert index.query(RunQuery(RunFilters(config_name="cfg0", user_id="u0"), limit=None))[1] == 4
