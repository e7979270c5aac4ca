"""A gunicorn app for the cold-build tests: the real app, whose cold build waits at each batch
until the test opens that batch's gate (a file), so the test sees every step of the build."""
import os
import time
from pathlib import Path

from app import create_app
from execution_history.index import RunIndex

GATES = Path(os.environ["RUN_HISTORY_TEST_BUILD_GATES"])
_passed = {"summaries": 0, "text": 0}


def _wait_for_gate(phase: str) -> None:
    _passed[phase] += 1
    while not (GATES / f"{phase}-{_passed[phase]}").exists():
        time.sleep(0.01)


_store_batch = RunIndex._store_batch
_store_text = RunIndex._store_text


def _gated_store_batch(self, conn, parsed, progress=False):
    if progress:  # a batch of a cold build's summaries phase
        _wait_for_gate("summaries")
    return _store_batch(self, conn, parsed, progress)


def _gated_store_text(self, conn, texts, *progress):
    _wait_for_gate("text")
    return _store_text(self, conn, texts, *progress)


RunIndex._store_batch = _gated_store_batch
RunIndex._store_text = _gated_store_text
app = create_app()
