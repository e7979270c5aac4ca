"""A slice of the realistic corpus (``../shared/corpus``) through every format, through gunicorn.

The team's checkout has ``../shared/corpus`` beside the project; a user's clone does not, and
then this test is skipped (the suite's own hostile generator, tests/test_hostile_exports.py,
covers the same kinds of breakage in every format either way). The whole corpus (20 000
runs) goes through the same code: ``python -m bench.corpus_exports DIR --gunicorn`` (README,
Benchmarks).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench import corpus_exports
from bench.corpus import CORPUS_TOOLS

RUNS = 300  # enough that some runs hold U+FFFE/U+FFFF, controls, long outputs and drift


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    if not (CORPUS_TOOLS / "gen_runs.py").exists():
        pytest.skip(f"{CORPUS_TOOLS} is not beside the project (a user's clone)")
    root = tmp_path_factory.mktemp("corpus")
    for script, args in (("gen_runs.py", [root / "raw", RUNS, "--seed", 42]), ("to_contract.py", [root / "raw", root / "runs"])):
        subprocess.run([sys.executable, str(CORPUS_TOOLS / script), *map(str, args)], check=True, capture_output=True,
                       timeout=300)
    return root / "runs"


def test_the_slice_holds_the_breakage_it_should(realistic):
    texts = [path.read_bytes() for path in realistic.glob("exec_*.json")]
    assert len(texts) == RUNS
    assert any("\ufffe".encode() in text or "\uffff".encode() in text for text in texts)  # noncharacters
    assert any(b"\\u000b" in text or b"\\u0000" in text for text in texts)  # XML-illegal controls


def test_every_format_single_and_bulk_through_gunicorn(realistic, capsys):
    source = corpus_exports.ThroughGunicorn(realistic)
    try:
        failures = corpus_exports.run(source, sorted(corpus_exports.COUNTERS), single=40)
    finally:
        source.close()
    assert failures == 0, capsys.readouterr().out
