"""A gunicorn app for the streaming tests: the real app, whose CSV writer fails after the first byte."""
import dataclasses

from app import create_app
from execution_history.exporters import EXPORTERS


def _fails_midway(records, **options):
    yield b"execution_id\r\n" * 10_000
    raise RuntimeError("simulated failure after the first byte")


EXPORTERS["csv"] = dataclasses.replace(EXPORTERS["csv"], write=_fails_midway, options=())
app = create_app()
