"""`flask runs ...` commands, calling the same core functions as the views."""
from __future__ import annotations

import json
import time

import click
from flask.cli import AppGroup

from execution_history.errors import ExecutionHistoryError

from . import get_index, get_store

runs = AppGroup("runs", help="Inspect and manage recorded pipeline runs.")


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def _fail(err: ExecutionHistoryError) -> None:
    raise click.ClickException(json.dumps(err.to_dict(), ensure_ascii=False))


@runs.command("stats")
def stats_command() -> None:
    """Print the stats (the same body as GET /api/runs/stats)."""
    _echo_json(get_index().stats())


@runs.command("show")
@click.argument("execution_id")
def show_command(execution_id: str) -> None:
    """Print one whole record as JSON."""
    try:
        _echo_json(get_store().load(execution_id))
    except ExecutionHistoryError as err:
        _fail(err)


@runs.command("sample")
@click.argument("count", type=click.IntRange(min=1, max=100_000), default=12)
@click.option("--if-empty", is_flag=True, help="Only record samples if the store holds no run yet.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the simulated models.")
def sample_command(count: int, if_empty: bool, seed: int) -> None:
    """Record COUNT sample runs through the real tracker (examples/sample_pipeline.py)."""
    from examples.sample_pipeline import iter_sample_runs

    store = get_store()
    if if_empty and store.list_files():
        click.echo(f"{store.root} already holds runs; no samples recorded.")
        return
    ids = list(iter_sample_runs(count, store, seed=seed))
    click.echo(f"Recorded {len(ids)} sample runs in {store.root}.")


@runs.command("reindex")
def reindex_command() -> None:
    """Rebuild the SQLite index from the record files (also catches files edited in place)."""
    started = time.monotonic()
    index = get_index()
    index.rebuild()
    stats = index.stats()
    click.echo(f"Indexed {stats['total_records']} runs ({stats['unreadable_records']} unreadable files) "
               f"in {time.monotonic() - started:.1f} s.")
