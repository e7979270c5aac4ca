"""Load test: a real gunicorn (shipped config) under concurrent list/get/export requests while
4 writer processes finalize runs; prints requests/s, p50/p99, errors, runs written vs found,
and the CPU in use meanwhile (the machine's busy, iowait and steal shares; cores used by the
server's workers, the writers and this load generator, which share the machine).

    python -m bench.load [--runs 10000] [--clients 50] [--seconds 30] [--writers 4] [--source DIR]
    python -m bench.load --rate 200 --seconds 30   # open loop: a fixed arrival rate
    python -m bench.load --rate 200 --timeline t.txt   # and when each request was due, how long it took
    python -m bench.load --short        # the CI version: small and quick

The runs are the realistic corpus of bench/corpus.py (hard-linked into bench/out/load_<N>
afresh, so the index is built cold before the clock starts), synthetic with --short.
Every request loop is bounded in count and time and targets 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import queue
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from execution_history import ExecutionTracker, RunStore

from . import corpus
from .common import Gunicorn, generate

MIX = [("list", 0.6), ("filtered", 0.15), ("get", 0.15), ("export", 0.10)]


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str, float]] = field(default_factory=list)  # open loop: (due, kind, latency)


def _write_runs(root: str, stop: str, out: str, seed: int) -> None:
    """A pipeline process: record runs until told to stop; list their ids in *out*."""
    rng = random.Random(seed)
    store = RunStore(root)
    with open(out, "w") as ids:
        while not Path(stop).exists():
            with ExecutionTracker("load", user_id=f"w{seed}", store=store) as run:
                for n in range(rng.randint(1, 12)):
                    run.log_interception_iteration(n + 1, f"writer {seed} text {n}")
            ids.write(run.execution_id + "\n")
            ids.flush()
            time.sleep(rng.uniform(0.005, 0.05))


def _client(port: int, deadline: float, max_requests: int, ids: list[str], result: Result, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    kinds, weights = zip(*MIX)
    for _ in range(max_requests):
        if time.monotonic() > deadline:
            break
        kind = rng.choices(kinds, weights)[0]
        path = {"list": f"/api/runs?limit=20&offset={rng.randint(0, 200)}",
                "filtered": "/api/runs?config=dada&status=completed&order_by=items_count",
                "get": f"/api/runs/{rng.choice(ids)}",
                "export": "/api/runs/export/csv?config=stillepost&limit=50&shape=items"}[kind]
        started = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                result.errors.append(f"{response.status} {path}: {body[:200]!r}")
        except (OSError, http.client.HTTPException) as err:
            result.errors.append(f"{type(err).__name__} {path}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        result.latencies[kind].append(time.perf_counter() - started)
    conn.close()


def _path(rng: random.Random, ids: list[str]) -> tuple[str, str]:
    kinds, weights = zip(*MIX)
    kind = rng.choices(kinds, weights)[0]
    return kind, {"list": f"/api/runs?limit=20&offset={rng.randint(0, 200)}",
                  "filtered": "/api/runs?config=dada&status=completed&order_by=items_count",
                  "get": f"/api/runs/{rng.choice(ids)}",
                  "export": "/api/runs/export/csv?config=stillepost&limit=50&shape=items"}[kind]


def _open_loop(port: int, rate: float, seconds: float, ids: list[str], result: Result, senders: int = 64) -> None:
    """Requests at a fixed arrival rate, whatever the server's pace: request k is due at
    start + k / rate, and its latency runs from that scheduled time, so time spent queued
    (no free sender, a slow server) counts, as it does for real users."""
    tasks: queue.Queue = queue.Queue()
    rng = random.Random(7)
    lock = threading.Lock()

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while (task := tasks.get()) is not None:
            due, kind, path = task
            if time.perf_counter() > due + seconds:  # bounded: what waited longer than the run is an error
                with lock:
                    result.errors.append(f"{path}: not sent, queued over {seconds:.0f} s")
                continue
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException) as err:
                ok, body = False, type(err).__name__.encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latency = time.perf_counter() - due
            with lock:
                result.timeline.append((due, kind, latency if ok else float("nan")))
                if ok:
                    result.latencies[kind].append(latency)
                else:
                    result.errors.append(f"{path}: {body[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        due = start + k / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        tasks.put((due, *_path(rng, ids)))
    for _ in threads:
        tasks.put(None)
    for thread in threads:
        thread.join()


def _cpu_now(roles: dict[str, list[int]]) -> tuple[dict[str, int], dict[str, int]]:
    """The machine's CPU ticks (/proc/stat: busy, iowait, steal, total) and each role's ticks
    (its processes' user + system time); empty where /proc is missing."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return {}, {}
    total = sum(ticks[:8])  # user .. steal (guest time is counted in user already)
    machine = {"total": total, "busy": total - ticks[3] - ticks[4] - ticks[7], "iowait": ticks[4], "steal": ticks[7]}
    return machine, {role: sum(map(_process_ticks, pids)) for role, pids in roles.items()}


def _process_ticks(pid: int) -> int:
    """A process's user + system CPU ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _cpu_figures(before: tuple[dict[str, int], dict[str, int]], after: tuple[dict[str, int], dict[str, int]],
                 seconds: float) -> dict[str, float]:
    """CPU over the load: the machine's busy, iowait and steal shares (%; a shared host's
    disk and neighbours show there) and each role's cores in use."""
    total = after[0].get("total", 0) - before[0].get("total", 0)
    if not total:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {**{f"machine_{key}_pct": round(100 * (after[0][key] - before[0][key]) / total, 1)
               for key in ("busy", "iowait", "steal")},
            **{f"{role}_cores": round((after[1][role] - before[1].get(role, 0)) / tick / seconds, 2)
               for role in after[1]}}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def run_load(folder: Path, clients: int, seconds: float, writers: int, max_requests: int = 100_000,
             rate: float | None = None, timeline: Path | None = None) -> dict:
    """Serve *folder*, drive the load (closed loop: *clients* back to back; open loop: *rate*
    requests/s), and return the figures (also printed)."""
    store = RunStore(folder)
    ids = store.list_ids()[:500]
    server = Gunicorn(folder)
    ctx = multiprocessing.get_context("spawn")
    stop = folder.parent / f"stop-{time.time_ns()}"
    outputs = [folder.parent / f"written-{n}-{time.time_ns()}" for n in range(writers)]
    procs = [ctx.Process(target=_write_runs, args=(str(folder), str(stop), str(out), n)) for n, out in enumerate(outputs)]
    result = Result()
    try:
        server.wait_built()  # the index is built (text search too) before the clock starts
        started = time.perf_counter()
        os.sync()  # and on disk: the kernel would write the build's pages back during the load
        print(f"the cold build's writes flushed in {time.perf_counter() - started:.1f} s")
        for proc in procs:
            proc.start()
        roles = {"server": server.worker_pids(), "writers": [proc.pid for proc in procs],
                 "load_generator": [os.getpid()]}
        cpu_before = _cpu_now(roles)
        deadline = time.monotonic() + seconds
        if rate:
            threads = [threading.Thread(target=_open_loop, args=(server.port, rate, seconds, ids, result))]
        else:
            threads = [threading.Thread(target=_client, args=(server.port, deadline, max_requests // clients, ids,
                                                              result, n)) for n in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        cpu = _cpu_figures(cpu_before, _cpu_now(roles), elapsed)
    finally:
        stop.touch()
        for proc in procs:
            proc.join(timeout=60)
    try:
        written = [line for out in outputs for line in out.read_text().split()]
        listed = set()
        offset = 0
        while True:  # every written run must be in the index, read through the API
            page = json.loads(server.get(f"/api/runs?limit=100&offset={offset}&config=load"))
            listed.update(e["execution_id"] for e in page["executions"])
            offset += 100
            if offset >= page["total"]:
                break
        missing = [i for i in written if not store.path_for(i).exists()]
        unlisted = [i for i in written if i not in listed]
    finally:
        server.stop()
        for path in (stop, *outputs):  # the writers' stop signal and their lists of ids
            path.unlink(missing_ok=True)
    total = sum(len(v) for v in result.latencies.values())
    every = [latency for values in result.latencies.values() for latency in values]
    figures = {
        "mode": f"open loop, {rate} req/s" if rate else f"closed loop, {clients} clients", "seconds": round(elapsed, 1), "requests": total, "requests_per_s": round(total / elapsed, 1),
        "errors": len(result.errors), "runs_written": len(written), "runs_lost": len(missing) + len(unlisted),
        "latency_ms": {kind: {"n": len(v), "p50": round(pct(v, 50) * 1000, 1), "p99": round(pct(v, 99) * 1000, 1)}
                       for kind, v in {"all": every, **result.latencies}.items()},
        "first_errors": result.errors[:5],
        # what the machine was doing meanwhile: a tail latency means little without it
        "cpu": cpu,
    }
    print(json.dumps(figures, indent=2))
    if timeline is not None and result.timeline:  # when the slow requests were due: stalls or a steady queue
        first = min(due for due, _, _ in result.timeline)
        timeline.write_text("".join(f"{due - first:.3f} {kind} {latency * 1000:.1f}\n"
                                    for due, kind, latency in sorted(result.timeline)))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus.add_arguments(parser, runs=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: this many requests/s, latency from each one's scheduled send time")
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--timeline", type=Path, help="open loop: write each request's due second, kind and"
                                                      " latency (ms) to this file")
    parser.add_argument("--short", action="store_true", help="CI size: 300 runs, 12 clients, 6 s")
    args = parser.parse_args(argv)
    if args.short:
        args.runs, args.clients, args.seconds = 300, 12, 6
        args.dir = Path(tempfile.mkdtemp(prefix="load-"))
    folder = args.dir / f"load_{args.runs}"
    if args.short:  # synthetic: quick to make, and CI has no ../shared
        generate(folder, args.runs)
    else:  # the realistic corpus, linked afresh (the writers add runs to the folder)
        source = corpus.from_arguments(args)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
    return run_load(folder, args.clients, args.seconds, args.writers, rate=args.rate, timeline=args.timeline)


if __name__ == "__main__":
    main()
