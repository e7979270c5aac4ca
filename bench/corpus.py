"""The realistic corpus the benchmarks run on, made on first use and cached in ``bench/out/``.

``../shared/corpus/`` (beside the project, in the team's checkout) holds two stdlib scripts:
``gen_runs.py`` writes raw pipeline runs (16 languages, emoji, control characters, formula
prefixes, long outputs, schema drift) and ``to_contract.py`` turns them into record files
of API.md section 1. :func:`realistic` runs both once per (count, seed) into
``bench/out/corpus_<count>_s<seed>/`` and reuses that folder afterwards. A converted set
that already exists (``--source DIR``) is hard-linked instead
(copied across file systems); the source itself is never written to, since the
benchmarks build an index beside the records and write new runs into the folder.

Without ``../shared/corpus/`` (a user's clone), the synthetic records of
:func:`bench.common.generate` are used, with a printed warning: those are cleaner and
shorter, so the figures are not comparable with the realistic ones.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CORPUS_TOOLS = PROJECT.parent / "shared" / "corpus"
OUT = PROJECT / "bench" / "out"
SEED = 42


def realistic(count: int, seed: int = SEED, source: Path | None = None, out: Path = OUT) -> Path:
    """A folder of *count* realistic record files for *seed*, made once and then reused.

    :param source: a converted corpus to take the first *count* files (by name) from,
        instead of generating; ignored if it is missing or holds fewer files.
    """
    names = sorted(p.name for p in source.glob("exec_*.json")) if source is not None and source.is_dir() else []
    # a linked subset is another set of runs than a generated one: cached under its own name
    folder = out / (f"corpus_{count}_from_{source.name}" if len(names) >= count else f"corpus_{count}_s{seed}")
    done = folder.with_name(folder.name + ".done")
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if len(names) >= count:
        print(f"corpus: {count} runs linked from {source}", file=sys.stderr)
        for name in names[:count]:
            _link(source / name, folder / name)
    elif (CORPUS_TOOLS / "gen_runs.py").exists():
        raw = out / f"corpus_{count}_s{seed}.raw"
        shutil.rmtree(raw, ignore_errors=True)
        print(f"corpus: generating {count} realistic runs (seed {seed}) into {folder}", file=sys.stderr)
        subprocess.run([sys.executable, str(CORPUS_TOOLS / "gen_runs.py"), str(raw), str(count),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, str(CORPUS_TOOLS / "to_contract.py"), str(raw), str(folder)],
                       check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(raw, ignore_errors=True)
    else:
        from .common import generate

        print(f"WARNING: {CORPUS_TOOLS} not found: synthetic records instead of the realistic corpus "
              "(cleaner and shorter; figures not comparable)", file=sys.stderr)
        generate(folder, count)
    done.touch()
    return folder


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def add_arguments(parser, runs: int = 20_000) -> None:
    """``--runs``, ``--seed`` and ``--source`` for a benchmark's command line."""
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--source", type=Path, default=None,
                        help="a converted corpus to link the runs from (default: generate)")


def from_arguments(args) -> Path:
    """The corpus folder the parsed ``add_arguments`` options name."""
    return realistic(args.runs, args.seed, args.source)
