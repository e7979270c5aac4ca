"""Export jobs' core without Flask: state, claims and takeover, heartbeat failure, expiry, slots, progress.

Each store-using test runs on both side areas: a local folder (claims by ``O_EXCL``) and
S3 (SeaweedFS; claims by a conditional put, ``If-None-Match: *``).
"""
import io
import json

import openpyxl
import pytest

from execution_history.exporters import EXPORTERS
from execution_history.jobs import Claim, JobExecutor, JobStore, Progress
from execution_history.side import LocalSideArea
from execution_history.storage import RunStore

STORE_KINDS = ("local", "s3")


class Clock:
    """A settable clock (epoch seconds)."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def jobs(store, tmp_path, clock):
    """Jobs in the side area of the test's store: a folder, or keys under the bucket."""
    side = LocalSideArea(tmp_path / "side") if isinstance(store, RunStore) else store.side
    return JobStore(side, ttl=3600, stale_after=15, clock=clock)


def executor(jobs, store, tmp_path, workers=1):
    return JobExecutor(jobs, store, workers=workers, slots_dir=tmp_path / "slots")


def queue(jobs, store, fmt="jsonl", user=None):
    ids = store.list_ids()
    return jobs.create(user=user, role="open", fmt=fmt, filters={}, options={}, ids=ids)


def test_a_job_runs_to_a_file_equal_to_the_direct_export(jobs, store, recorded_runs, tmp_path):
    state = queue(jobs, store, fmt="xlsx")
    started = executor(jobs, store, tmp_path).tick(spawn=False)
    assert started == [state["id"]]
    done = jobs.load(state["id"])
    assert done["state"] == "done" and done["runs_done"] == len(recorded_runs) and done["percent"] == 100.0
    job_state, handle = jobs.open_file(state["id"])
    with handle:
        got = openpyxl.load_workbook(io.BytesIO(handle.read()))
    direct = openpyxl.load_workbook(io.BytesIO(b"".join(
        EXPORTERS["xlsx"].write(store.iter_records(store.list_ids()), bulk=True))))
    for sheet in ("Runs", "Items"):
        assert list(got[sheet].iter_rows(values_only=True)) == list(direct[sheet].iter_rows(values_only=True))
    assert job_state["size_bytes"] == jobs.side.size(f"jobs/{state['id']}.file")


def test_only_one_worker_wins_a_claim_and_a_stale_claim_is_taken_over(jobs, store, recorded_runs, clock):
    state = queue(jobs, store)
    first = jobs.try_claim(state["id"], "a")
    assert first == Claim(0, "a", clock.now)
    assert jobs.try_claim(state["id"], "b") is None  # held, and its holder is fresh
    clock.now += 16  # the claimer died before starting the job (still queued)
    second = jobs.try_claim(state["id"], "b")
    assert second is not None and second.generation == 1
    assert not jobs.holds(state["id"], first) and jobs.holds(state["id"], second)
    assert jobs.try_claim(state["id"], "c") is None


def test_racing_claimers_have_exactly_one_winner(jobs, store, recorded_runs, clock):
    """Eight workers claim one queued job at once, then eight take its stale claim over at
    once: the atomic create (O_EXCL / conditional put) lets exactly one win each round."""
    from concurrent.futures import ThreadPoolExecutor

    state = queue(jobs, store)
    for generation in (0, 1):
        keys = jobs.side.list("jobs")  # every contender saw the same listing before racing
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda n: jobs.try_claim(state["id"], f"w{generation}-{n}", keys), range(8)))
        winners = [claim for claim in got if claim is not None]
        assert len(winners) == 1 and winners[0].generation == generation, got
        assert [c.worker for c in jobs.claims(state["id"])][-1] == winners[0].worker
        clock.now += 16  # the winner dies before starting: its claim goes stale


def test_a_job_whose_heartbeat_stopped_reads_failed_and_housekeeping_records_it(
        jobs, store, recorded_runs, clock, tmp_path):
    state = queue(jobs, store)
    claim = jobs.try_claim(state["id"], "dead-worker")
    jobs.save({**state, "state": "running", "claim": claim.generation, "started_at": clock.now,
               "heartbeat_at": clock.now, "runs_done": 3})
    assert jobs.load(state["id"])["state"] == "running"
    clock.now += 16
    seen = jobs.load(state["id"])
    assert seen["state"] == "failed" and "heartbeat" in seen["error"]
    assert jobs.raw(state["id"])["state"] == "running"  # a read writes nothing
    executor(jobs, store, tmp_path).tick(spawn=False)
    stored = jobs.raw(state["id"])
    assert stored["state"] == "failed" and "heartbeat" in stored["error"]
    assert not jobs.holds(state["id"], claim)  # the dead worker, were it to wake, writes nothing


def test_a_queued_job_of_a_dead_worker_is_run_by_another(jobs, store, recorded_runs, clock, tmp_path):
    state = queue(jobs, store)
    assert jobs.try_claim(state["id"], "died-before-starting") is not None
    other = executor(jobs, store, tmp_path)
    assert other.tick(spawn=False) == []  # the claim is fresh: its holder may yet start
    clock.now += 16
    assert other.tick(spawn=False) == [state["id"]]
    assert jobs.load(state["id"])["state"] == "done"


def test_expired_files_are_deleted_by_housekeeping(jobs, store, recorded_runs, clock, tmp_path):
    state = queue(jobs, store)
    runner = executor(jobs, store, tmp_path)
    runner.tick(spawn=False)
    assert jobs.side.size(f"jobs/{state['id']}.file")
    clock.now += 3599
    runner.tick(spawn=False)
    assert jobs.load(state["id"])["state"] == "done"
    clock.now += 1
    assert jobs.load(state["id"])["state"] == "expired"
    runner.tick(spawn=False)
    assert jobs.side.size(f"jobs/{state['id']}.file") is None and jobs.raw(state["id"])["state"] == "expired"


def test_deleting_a_job_removes_it_everywhere(jobs, store, recorded_runs, clock, tmp_path):
    state = queue(jobs, store)
    runner = executor(jobs, store, tmp_path)
    assert jobs.delete(state["id"])
    assert jobs.load(state["id"]) is None and jobs.list() == []
    assert runner.tick(spawn=False) == []  # a deleted job never runs
    clock.now += 31
    runner.tick(spawn=False)
    assert jobs.side.list("jobs") == []


def test_slots_limit_jobs_per_host(jobs, store, recorded_runs, tmp_path):
    queue(jobs, store)
    queue(jobs, store)
    one, two = executor(jobs, store, tmp_path), executor(jobs, store, tmp_path)
    slot = one._take_slot()
    assert slot is not None and two._take_slot() is None  # workers=1: the host's one slot is taken
    assert two.tick(spawn=False) == []
    slot.close()
    assert len(executor(jobs, store, tmp_path, workers=2).tick(spawn=False)) == 2


def test_a_researcher_lists_only_their_jobs(jobs, store, recorded_runs, clock):
    mine = queue(jobs, store, user="alice")
    clock.now += 1
    newer = queue(jobs, store, user="alice")
    queue(jobs, store, user="bob")
    assert [j["id"] for j in jobs.list("alice", all_users=False)] == [newer["id"], mine["id"]]
    assert len(jobs.list()) == 3


def test_progress_of_xlsx_keeps_room_for_the_save():
    ticks = iter(range(100))
    progress = Progress(4, "xlsx", clock=lambda: next(ticks))
    counted = progress.count(["a", "b", "c", "d"])
    seen = []
    for _ in counted:
        seen.append(progress.snapshot()[1])
    seen.append(progress.snapshot()[1])
    assert seen == sorted(seen) and seen[-1] < 100
    assert 89 <= seen[-1] <= 99  # the rows are done: what is left is the workbook's save
    assert json.dumps(progress.snapshot())


def test_half_built_files_of_dead_processes_are_swept(jobs, store, tmp_path):
    import os

    runner = executor(jobs, store, tmp_path)
    runner.slots_dir.mkdir()
    dead = runner.slots_dir / ".export-job-999999999-abc.xlsx"
    mine = runner.slots_dir / f".export-job-{os.getpid()}-abc.xlsx"
    dead.write_bytes(b"partial")
    mine.write_bytes(b"in progress")
    assert runner.sweep_temp_files() == 1
    assert not dead.exists() and mine.exists()


def test_the_apps_stale_period_is_its_setting_and_never_below_four_heartbeats(runs_dir):
    from app import create_app
    from app.extensions import get_jobs

    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir)})
    with app.app_context():
        assert get_jobs().stale_after == 15  # the default
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_EXPORT_STALE_AFTER": "4"})
    with app.app_context():
        assert get_jobs().stale_after == 4 and "no heartbeat for 4 s" in get_jobs().dead_reason()
    with pytest.raises(ValueError, match="RUN_HISTORY_EXPORT_STALE_AFTER must be at least 2 seconds"):
        create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_EXPORT_STALE_AFTER": 1})
