"""A gunicorn app for the streaming tests: the real app, whose XLSX writer fails while it builds
the workbook, before its first byte (as an unclean string once made lxml fail)."""
import dataclasses

from app import create_app
from execution_history.exporters import EXPORTERS


def _fails_while_building(records, **options):
    for _ in records:
        pass
    raise ValueError("simulated failure before the first byte")
    yield b""  # a generator, like the real writer


EXPORTERS["xlsx"] = dataclasses.replace(EXPORTERS["xlsx"], write=_fails_while_building)
app = create_app()
