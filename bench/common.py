"""What the benchmarks share: a fast generator of realistic record files, timing, a gunicorn."""
from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from execution_history.records import dump_record
from execution_history.taxonomy import TAXONOMY

PROJECT = Path(__file__).resolve().parent.parent
CONFIGS = ["stillepost", "dada", "bauhaus", "image_gen", "translation", "jugendstil", "haiku", "klimt"]
WORDS = ("Blume Wiese Wind Mond Meer Stadt Traum Licht Schatten Vogel flower meadow wind moon sea city dream "
         "light shadow bird fleur prairie vent lune mer ville rêve lumière ombre oiseau").split()
#: The shape of a Stille Post run: about 17 items.
SHAPE = ["pipeline_start", "user_input_text", "translation_result", "stage1_safety_check",
         *["interception_iteration"] * 8, "interception_final", "stage3_safety_check", "output_image",
         "output_text", "pipeline_complete"]


def make_record(n: int, seed: int = 0) -> dict:
    """A realistic record (about 12 KB, 17 items) for run number *n*."""
    rng = random.Random(seed * 1_000_003 + n)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=n * 317 + rng.randint(0, 300))
    items = []
    for seq, item_type in enumerate(SHAPE, start=1):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(34, 94)))
        items.append({
            "sequence_number": seq, "stage": TAXONOMY[item_type].stage,
            "stage_iteration": seq - 4 if item_type == "interception_iteration" else None,
            "loop_iteration": 1 if TAXONOMY[item_type].stage >= 3 and item_type != "pipeline_complete" else None,
            "item_type": item_type, "timestamp": (start + dt.timedelta(seconds=seq)).isoformat(),
            "content": None if item_type == "output_image" else f"{n} {text}",
            "file_path": f"exports/media/{n}.png" if item_type == "output_image" else None,
            "model_used": rng.choice(["gpt-oss:20b", "llama3.1:8b", "mistral:7b"]),
            "backend_used": "ollama", "execution_time": round(rng.uniform(0.1, 3), 3),
            "metadata": {"temperature": 0.9, "seed": rng.randint(1, 10**9)},
        })
    return {
        "execution_id": f"exec_{start:%Y%m%d_%H%M%S}_{n:08x}", "config_name": CONFIGS[n % len(CONFIGS)],
        "timestamp": start.isoformat(), "finished_at": (start + dt.timedelta(seconds=20)).isoformat(),
        "status": rng.choice(["completed"] * 8 + ["blocked", "failed"]), "execution_mode": rng.choice(["eco", "fast"]),
        "safety_level": rng.choice(["kids", "youth", "adult"]), "user_id": f"u{n % 50}",
        "session_id": f"s{n % 500}", "total_execution_time": round(rng.uniform(5, 60), 3),
        "taxonomy_version": "1.0", "items": items,
    }


def _write_range(args: tuple[str, int, int]) -> int:
    folder, start, stop = args
    size = 0
    for n in range(start, stop):
        record = make_record(n)
        data = dump_record(record)
        (Path(folder) / f"{record['execution_id']}.json").write_bytes(data)
        size += len(data)
    return size


def generate(folder: Path, count: int) -> int:
    """Write *count* record files into *folder* (if it does not hold them yet); returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = list(folder.glob("exec_*.json"))
    if len(existing) == count:
        return sum(p.stat().st_size for p in existing)
    for path in existing:
        path.unlink()
    step = 2000
    with ProcessPoolExecutor(2) as pool:
        return sum(pool.map(_write_range, [(str(folder), s, min(s + step, count)) for s in range(0, count, step)]))


def timed(fn: Callable[[], object], repeat: int = 1) -> list[float]:
    """Wall-clock seconds of each of *repeat* calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def p50(times: list[float]) -> float:
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


class Gunicorn:
    """The shipped gunicorn config on a free loopback port, serving *folder*."""

    def __init__(self, folder: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RUN_HISTORY_DIR": str(folder), "WEB_CONCURRENCY": str(workers), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
             "--access-logfile", "/dev/null", "wsgi:app"],
            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/openapi.json", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gunicorn did not start")

    def get(self, path: str) -> bytes:
        """The body of GET *path*; while a cold index build answers 503 INDEX_BUILDING, asked again."""
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=600) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                if err.code != 503 or b"INDEX_BUILDING" not in err.read():
                    raise
            time.sleep(0.1)

    def wait_built(self) -> None:
        """Until the index is wholly built: lists answer, and so does text search (its phase ends)."""
        self.get("/api/runs?limit=1")
        while b'"build"' in self.get("/api/health"):
            time.sleep(0.5)

    def worker_pids(self) -> list[int]:
        """The worker processes (the arbiter's children)."""
        return [int(pid) for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each worker process."""
        sizes = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):  # peak resident set size
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def through_curl(server: Gunicorn, url: str) -> tuple[float, float, int, int]:
    """(time to first byte, total, bytes, HTTP status) with curl."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} "
                          "%{size_download} %{http_code}", server.url + url], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])



def run_sizes(bench_size: Callable[[int, Path], None], doc: str | None) -> None:
    """The command line of the size-driven benchmarks: ``--sizes N ... --dir DIR``."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    for count in args.sizes:
        bench_size(count, args.dir)
