"""Export jobs: their state and file in the side area, the claims that decide who runs one, the executor.

Everything a job is lives in the store's side area, so every worker and every host answers
the same (keys under ``jobs/``):

- ``jobs/<id>.json``: the state (``queued``, ``running``, ``done``, ``failed``, ``expired``),
  progress and heartbeat. Written by the request that queues the job, then only by the
  holder of its newest claim.
- ``jobs/<id>.ids``: the selected execution ids, one a line, in the list's order, taken when
  the job was queued (a run recorded later never slips in).
- ``jobs/<id>.file``: the finished export (``put_file``: atomic).
- ``jobs/<id>.claim``, ``jobs/<id>.claim.1``, ``.claim.2`` ...: claims, each taken with
  ``side.create()`` (atomic create-if-absent: ``O_EXCL`` locally, a conditional put on S3).
- ``jobs/<id>.deleted``: a tombstone left by DELETE (the job is 404 from then on).

Claims. A worker with a free slot takes a queued job by creating generation 0. A claim
goes stale when its holder stops showing signs of life: a running job's heartbeat (written
at least every ``HEARTBEAT_SECONDS``) or, for a claimed job still queued, the claim's own
time, older than ``stale_after`` seconds. A stale claim is taken over by creating the next
generation; create-if-absent lets exactly one contender win, and the loser of a claim never
writes. A holder checks before every write that no newer generation exists, so a holder
that was only paused (not dead) stops as soon as it wakes. What the winner does: a job that
was still queued (its claimer died before starting it) is run; a job that was running is
marked ``failed`` with the reason (its partial file is lost with its process). Reads apply
the same rule, so a job whose process died shows ``failed`` even before any housekeeping.

At most ``workers`` jobs run at once per host: each runner holds an ``flock`` on one of
``workers`` slot files in a local folder shared by the host's processes (the kernel drops
the lock when a process dies, so a killed worker never keeps its slot).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import atomic
from .errors import ExecutionHistoryError, ExportExpired, NotReady
from .exporters import EXPORTERS, ExportInfo
from .media import MediaRoot
from .pseudonyms import prepare_export
from .side import SideArea
from .storage import RunStore

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled", "expired")
FINISHED = ("done", "failed", "cancelled", "expired")
JOB_ID = re.compile(r"\A[0-9a-f]{32}\Z")
#: A running job writes its progress this often (the contract: at least once a second; on S3
#: each beat is a few requests, so not much more often).
HEARTBEAT_SECONDS = 0.5
#: A claim whose holder showed no sign of life for this long is stale (well above a heartbeat,
#: so a busy host is not mistaken for a dead one); the app's RUN_HISTORY_EXPORT_STALE_AFTER.
STALE_SECONDS = 15.0
#: How often an executor looks for work and does housekeeping.
POLL_SECONDS = 0.5
#: Formats built whole before their first byte (an XLSX is a zip written at the end): the rows
#: are the first FINISH_AT of the progress, the final step the rest. Streamed formats: all rows.
BUILT_AT_END = {"xlsx"}
FINISH_AT = 0.9
#: The final step of a built-at-end format is estimated at this share of the rows' time
#: (openpyxl's save zips what the rows wrote; measured at about 0.12 on 1,500 runs).
FINISH_RATIO = 0.15
#: A job's file is built in the host's slot folder under this prefix and the builder's pid.
TEMP_PREFIX = ".export-job-"


def is_valid_job_id(job_id: str) -> bool:
    """A job id is 32 lowercase hex digits (a UUID4): anything else is never a side-area key."""
    return bool(JOB_ID.match(job_id))


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def _claim_key(job_id: str, generation: int) -> str:
    return f"jobs/{job_id}.claim" + (f".{generation}" if generation else "")


@dataclass
class Claim:
    """A claim on a job: which generation, held by whom, since when."""

    generation: int
    worker: str
    at: float


class JobStore:
    """Export jobs' state, id snapshots and files in a side area (see the module's docstring)."""

    def __init__(self, side: SideArea, ttl: float = 86400, stale_after: float = STALE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.side = side
        self.ttl = ttl
        self.stale_after = stale_after
        self.clock = clock

    # ------------------------------------------------------------ state

    def create(self, *, user: str | None, role: str, fmt: str, filters: dict[str, Any],
               options: dict[str, Any], ids: list[str]) -> dict[str, Any]:
        """Queue a job for *ids* (already scoped and checked); returns its state."""
        job_id = uuid.uuid4().hex
        self.side.put(f"jobs/{job_id}.ids", "".join(f"{i}\n" for i in ids).encode("ascii"))
        state = {"id": job_id, "state": "queued", "format": fmt, "filters": filters, "options": options,
                 "user": user, "role": role, "runs_total": len(ids), "runs_done": 0, "percent": 0.0,
                 "eta_seconds": None, "created_at": self.clock(), "started_at": None, "finished_at": None,
                 "heartbeat_at": None, "size_bytes": None, "error": None, "claim": None}
        self.save(state)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write a job's state (atomic replace)."""
        self.side.put(f"jobs/{state['id']}.json", json.dumps(state, default=str).encode("utf-8"))

    def raw(self, job_id: str) -> dict[str, Any] | None:
        """The stored state of a job, as written (None: no such job, deleted, or malformed id)."""
        if not is_valid_job_id(job_id) or self.side.size(f"jobs/{job_id}.deleted") is not None:
            return None
        data = self.side.get(f"jobs/{job_id}.json")
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:  # written atomically, so only a hand-edited file gets here
            return None

    def load(self, job_id: str) -> dict[str, Any] | None:
        """A job as clients see it: a dead worker's job failed, an old file expired."""
        state = self.raw(job_id)
        return None if state is None else self.effective(state)

    def effective(self, state: dict[str, Any]) -> dict[str, Any]:
        """*state* with what time alone decides applied (a pure read: nothing is written)."""
        now = self.clock()
        if state["state"] == "running" and now - (state["heartbeat_at"] or 0) > self.stale_after:
            return {**state, "state": "failed", "finished_at": state["heartbeat_at"], "eta_seconds": None,
                    "error": self.dead_reason()}
        if state["state"] == "done" and self.is_expired(state, now):
            return {**state, "state": "expired"}
        return state

    def dead_reason(self) -> str:
        """The error of a job whose worker stopped."""
        return f"The worker running this export stopped (no heartbeat for {self.stale_after:g} s); please start it again"

    def is_expired(self, state: dict[str, Any], now: float | None = None) -> bool:
        """A done job past its TTL (counted from finished_at)."""
        now = self.clock() if now is None else now
        return state["finished_at"] is not None and now >= state["finished_at"] + self.ttl

    def list(self, user_scope: str | None = None, all_users: bool = True) -> list[dict[str, Any]]:
        """Jobs, newest first: every job (*all_users*), else those of *user_scope*."""
        jobs = []
        for key in self.side.list("jobs"):
            name = key.rsplit("/", 1)[1]
            if name.endswith(".json") and (state := self.load(name[:-5])) is not None:
                if all_users or state["user"] == user_scope:
                    jobs.append(state)
        return sorted(jobs, key=lambda s: (s["created_at"], s["id"]), reverse=True)

    def ids(self, job_id: str) -> list[str]:
        """The execution ids a job exports, in order."""
        data = self.side.get(f"jobs/{job_id}.ids") or b""
        return data.decode("ascii").split()

    def delete(self, job_id: str) -> bool:
        """Cancel or delete a job: a tombstone first (the job is gone for every reader at once,
        and its runner stops at its next heartbeat), then its files. False if there was none."""
        if self.raw(job_id) is None:
            return False
        self.side.create(f"jobs/{job_id}.deleted", json.dumps({"at": self.clock()}).encode())
        self.purge(job_id, keep_tombstone=True)
        return True

    def purge(self, job_id: str, keep_tombstone: bool = False) -> None:
        """Remove every key of a job (its tombstone too unless *keep_tombstone*)."""
        for key in self.side.list("jobs"):
            name = key.rsplit("/", 1)[1]
            if name.startswith(f"{job_id}.") and not (keep_tombstone and name == f"{job_id}.deleted"):
                self.side.delete(key)

    # ------------------------------------------------------------ the file

    def open_file(self, job_id: str) -> tuple[dict[str, Any], BinaryIO]:
        """A done job's state and its file, for download.

        :raises NotReady: if the job is not done yet (or failed).
        :raises ExportExpired: past the TTL (the file is deleted now if housekeeping has not yet).
        """
        state = self.load(job_id)
        assert state is not None  # callers check visibility first
        if state["state"] == "expired":
            self.expire(state)
            raise ExportExpired("This export has expired and its file was deleted; please start it again",
                                job_id=job_id, finished_at=_iso(state["finished_at"]))
        if state["state"] != "done":
            raise NotReady("This export is not ready", job_id=job_id, state=state["state"],
                           percent=state["percent"])
        handle = self.side.open(f"jobs/{job_id}.file")
        if handle is None:  # deleted between the two reads: expired meanwhile
            raise ExportExpired("This export has expired and its file was deleted", job_id=job_id)
        return state, handle

    def expire(self, state: dict[str, Any]) -> None:
        """Delete a done job's file past its TTL and record it as expired (idempotent: any host may)."""
        self.side.delete(f"jobs/{state['id']}.file")
        stored = self.raw(state["id"])
        if stored is not None and stored["state"] == "done":
            self.save({**stored, "state": "expired"})

    # ------------------------------------------------------------ claims

    def claims(self, job_id: str, keys: Iterable[str] | None = None) -> list[Claim]:
        """A job's claims, oldest generation first."""
        prefix = f"{job_id}.claim"
        found = []
        for key in self.side.list("jobs") if keys is None else keys:
            name = key.rsplit("/", 1)[1]
            if name == prefix or name.startswith(prefix + "."):
                generation = int(name[len(prefix) + 1:] or 0) if name != prefix else 0
                data = self.side.get(key)
                if data is not None:
                    body = json.loads(data)
                    found.append(Claim(generation, body["worker"], body["at"]))
        return sorted(found, key=lambda c: c.generation)

    def try_claim(self, job_id: str, worker: str, keys: Iterable[str] | None = None) -> Claim | None:
        """Claim a job for *worker*: a free one, or one whose newest claim is stale. None if
        another worker holds it (alive) or won the race."""
        state = self.raw(job_id)
        if state is None or state["state"] not in ("queued", "running"):
            return None
        claims = self.claims(job_id, keys)
        generation = 0
        if claims:
            newest = claims[-1]
            if not self.is_stale(state, newest):
                return None
            generation = newest.generation + 1
        now = self.clock()
        if not self.side.create(_claim_key(job_id, generation), json.dumps({"worker": worker, "at": now}).encode()):
            return None
        return Claim(generation, worker, now)

    def is_stale(self, state: dict[str, Any], claim: Claim) -> bool:
        """Has the holder of *claim* stopped? Judged by the heartbeat once it runs, else the claim's time."""
        alive_at = state["heartbeat_at"] if state["state"] == "running" and state["claim"] == claim.generation \
            else claim.at
        return self.clock() - (alive_at or 0) > self.stale_after

    def holds(self, job_id: str, claim: Claim) -> bool:
        """Is *claim* still the newest one of a job that was not deleted?"""
        return (self.side.size(_claim_key(job_id, claim.generation + 1)) is None
                and self.side.size(f"jobs/{job_id}.deleted") is None)


class Cancelled(Exception):
    """The runner's job was deleted or taken over: stop without writing."""


class Progress:
    """Counts a job's runs on their way to the writer and turns them into percent and ETA."""

    def __init__(self, total: int, fmt: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.rows_share = FINISH_AT if fmt in BUILT_AT_END else 0.99
        self.started = clock()
        self.done = 0
        self.rows_finished_at: float | None = None
        self.percent = 0.0
        self.stop = threading.Event()

    def count(self, ids: Iterable[str]) -> Iterator[str]:
        """Pass *ids* on, counting them; stop (Cancelled) once told to."""
        for execution_id in ids:
            if self.stop.is_set():
                raise Cancelled
            yield execution_id
            self.done += 1
        self.rows_finished_at = self.clock()

    def snapshot(self) -> tuple[int, float, float | None]:
        """(runs done, percent, seconds left or None): percent never goes back."""
        now = self.clock()
        elapsed = now - self.started
        fraction = self.done / self.total * self.rows_share if self.total else self.rows_share
        if self.rows_finished_at is not None:
            rows_time = self.rows_finished_at - self.started
            finish_estimate = max(rows_time * FINISH_RATIO, 0.05) if self.rows_share < 0.99 else 0.05
            finishing = min((now - self.rows_finished_at) / finish_estimate, 1.0)
            fraction = self.rows_share + (0.99 - self.rows_share) * finishing
        self.percent = max(self.percent, round(fraction * 100, 1))
        eta = None
        if self.percent > 0:
            eta = max(round(elapsed / (self.percent / 100) - elapsed, 1), 0.0)
        return self.done, self.percent, eta


class JobExecutor:
    """Runs export jobs in daemon threads of this process (started lazily, after a fork)."""

    def __init__(self, jobs: JobStore, store: RunStore, workers: int = 1, slots_dir: str | os.PathLike[str] | None = None,
                 run_delay: float = 0.0, secret_key: str | None = None, media_root: MediaRoot | None = None) -> None:
        """*slots_dir*: a local folder every process of this host shares (the per-host limit);
        *run_delay*: seconds added per run (a test hook that makes a job slow enough to watch);
        *secret_key*: keys the pseudonyms of a ``pseudonymize`` job (as for a direct export);
        *media_root*: where a zip job finds media files (the app's media sources)."""
        self.jobs, self.store, self.workers, self.run_delay = jobs, store, max(workers, 1), run_delay
        self.secret_key, self.media_root = secret_key, media_root
        self.slots_dir = Path(slots_dir or tempfile.gettempdir())
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running: dict[str, threading.Thread] = {}

    # ------------------------------------------------------------ the threads

    def ensure_started(self) -> None:
        """Start the dispatcher in this process if it has none (gunicorn forks after the app is built)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._running = {}
            self.sweep_temp_files()
            threading.Thread(target=self._loop, name="export-jobs", daemon=True).start()

    def sweep_temp_files(self) -> int:
        """Remove half-built files of runners whose process is gone (killed mid-job); returns how many."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.slots_dir):
                pid = entry.name[len(TEMP_PREFIX):].split("-", 1)[0]
                if entry.name.startswith(TEMP_PREFIX) and pid.isdigit() and not atomic.is_writer_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def wake(self) -> None:
        """Look for work now (a job was just queued)."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the dispatcher must outlive a bad tick (a store hiccup)
                log.exception("export jobs: housekeeping failed; trying again")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def tick(self, spawn: bool = True) -> list[str]:
        """One round: housekeeping over every job, then start queued ones while slots are free.
        Returns the ids started (with *spawn* False they run in this thread, one after the other)."""
        keys = self.jobs.side.list("jobs")
        by_job: dict[str, list[str]] = {}
        for key in keys:
            by_job.setdefault(key.rsplit("/", 1)[1].split(".", 1)[0], []).append(key)
        queued = []
        for job_id, job_keys in by_job.items():
            if not is_valid_job_id(job_id):
                continue
            if f"jobs/{job_id}.deleted" in job_keys:
                self._sweep_deleted(job_id, job_keys)
                continue
            state = self.jobs.raw(job_id)
            if state is None:
                continue
            if state["state"] == "done" and self.jobs.is_expired(state):
                self.jobs.expire(state)
            elif state["state"] == "running" and job_id not in self._running:
                self._fail_if_dead(state, job_keys)
            elif state["state"] == "queued" and job_id not in self._running:
                queued.append(state)
        started = []
        for state in sorted(queued, key=lambda s: (s["created_at"], s["id"])):
            slot = self._take_slot()
            if slot is None:
                break
            claim = self.jobs.try_claim(state["id"], self.worker, by_job[state["id"]])
            if claim is None:
                slot.close()
                continue
            started.append(state["id"])
            if spawn:
                thread = threading.Thread(target=self._run_in_slot, args=(state["id"], claim, slot),
                                          name=f"export-job-{state['id'][:8]}", daemon=True)
                self._running[state["id"]] = thread
                thread.start()
            else:
                self._run_in_slot(state["id"], claim, slot)
        return started

    def _sweep_deleted(self, job_id: str, job_keys: list[str]) -> None:
        """Finish a DELETE: remove what a runner may have written since; drop the tombstone once
        nothing else is left and every runner has surely noticed it."""
        others = [k for k in job_keys if not k.endswith(".deleted")]
        if others:
            self.jobs.purge(job_id, keep_tombstone=True)
            return
        data = self.jobs.side.get(f"jobs/{job_id}.deleted")
        at = json.loads(data)["at"] if data else 0
        if self.jobs.clock() - at > 2 * self.jobs.stale_after:
            self.jobs.side.delete(f"jobs/{job_id}.deleted")

    def _fail_if_dead(self, state: dict[str, Any], job_keys: list[str]) -> None:
        """A running job whose heartbeat stopped: take its claim over and record it failed."""
        if self.jobs.effective(state)["state"] != "failed":
            return
        claim = self.jobs.try_claim(state["id"], self.worker, job_keys)
        if claim is None:
            return
        self.jobs.save({**state, "state": "failed", "claim": claim.generation, "finished_at": state["heartbeat_at"],
                        "eta_seconds": None, "error": self.jobs.dead_reason()})
        log.warning("export job %s: its worker stopped; marked failed", state["id"])

    def _take_slot(self) -> BinaryIO | None:
        """One of this host's slots (an flock held while a job runs), or None if all are busy."""
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        for n in range(self.workers):
            handle = open(self.slots_dir / f"slot-{n}.lock", "ab")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                handle.close()
        return None

    def _run_in_slot(self, job_id: str, claim: Claim, slot: BinaryIO) -> None:
        try:
            self.run(job_id, claim)
        except Exception:  # noqa: BLE001 - a runner thread must never die noisily; run() records failures
            log.exception("export job %s: runner failed", job_id)
        finally:
            slot.close()  # releases the flock
            self._running.pop(job_id, None)

    # ------------------------------------------------------------ one job

    def run(self, job_id: str, claim: Claim) -> None:
        """Run a claimed job to done or failed, writing a heartbeat with its progress meanwhile."""
        state = self.jobs.raw(job_id)
        if state is None or not self.jobs.holds(job_id, claim):
            return
        if state["state"] == "running":  # claimed over a dead runner: nothing to resume
            return
        ids = self.jobs.ids(job_id)
        progress = Progress(len(ids), state["format"])
        now = self.jobs.clock()
        state = {**state, "state": "running", "claim": claim.generation, "started_at": now, "heartbeat_at": now}
        self.jobs.save(state)
        beat = threading.Thread(target=self._heartbeat, args=(state, claim, progress), daemon=True,
                                name=f"export-heartbeat-{job_id[:8]}")
        beat.start()
        result: dict[str, Any] = {}
        try:
            size = self._build(state, ids, progress)
            result = {"state": "done", "size_bytes": size}
        except Cancelled:
            return
        except Exception as err:  # noqa: BLE001 - any failure becomes the job's error, for the client to see
            log.exception("export job %s failed", job_id)
            message = err.message if isinstance(err, ExecutionHistoryError) else f"Export failed ({type(err).__name__})"
            result = {"state": "failed", "error": message}
        finally:
            progress.stop.set()
            beat.join()
        if not self.jobs.holds(job_id, claim):
            return
        runs_done, percent, _ = progress.snapshot()
        self.jobs.save({**state, **result, "runs_done": runs_done, "heartbeat_at": self.jobs.clock(),
                        "percent": 100.0 if result["state"] == "done" else percent, "eta_seconds": None,
                        "finished_at": self.jobs.clock()})

    def _build(self, state: dict[str, Any], ids: list[str], progress: Progress) -> int:
        """Write the export to a local temp file, then store it; returns its size."""
        exporter = EXPORTERS[state["format"]]
        info = ExportInfo(count=len(ids), filters=state["filters"],
                          exported_at=dt.datetime.fromtimestamp(state["started_at"], dt.timezone.utc))
        records = self.store.iter_records(self._paced(progress.count(ids)))
        # the direct export's preparation: pseudonyms if asked for, the media of a zip
        records, info, options, _ = prepare_export(records, info, state["options"], self.secret_key)
        if exporter.media:
            options = {**options, "media_root": self.media_root}
        fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=exporter.extension,
                                    dir=self.slots_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in exporter.write(records, bulk=True, info=info, **options):
                    if progress.stop.is_set():
                        raise Cancelled
                    out.write(chunk)
            if progress.stop.is_set():
                raise Cancelled
            self.jobs.side.put_file(f"jobs/{state['id']}.file", temp)
            return os.path.getsize(temp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def _paced(self, ids: Iterator[str]) -> Iterator[str]:
        for execution_id in ids:
            if self.run_delay:
                time.sleep(self.run_delay)  # the test hook (RUN_HISTORY_TEST_EXPORT_DELAY): a job slow enough to watch
            yield execution_id

    def _heartbeat(self, state: dict[str, Any], claim: Claim, progress: Progress) -> None:
        """Write progress every HEARTBEAT_SECONDS; stop the job if it was deleted or taken over."""
        while not progress.stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.jobs.holds(state["id"], claim):
                    progress.stop.set()  # deleted, or a newer claim: never write again
                    return
                runs_done, percent, eta = progress.snapshot()
                self.jobs.save({**state, "runs_done": runs_done, "percent": percent, "eta_seconds": eta,
                                "heartbeat_at": self.jobs.clock()})
            except Exception:  # noqa: BLE001 - a missed beat is retried; too many and the job reads failed
                log.exception("export job %s: heartbeat not written", state["id"])
