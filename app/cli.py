"""`flask runs ...` commands, calling the same core functions as the views."""
from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable

import click
from flask import current_app
from flask.cli import AppGroup
from werkzeug.datastructures import MultiDict

from execution_history.errors import ExecutionHistoryError
from execution_history.exporters import export_selection, get_exporter

from . import get_index, get_store
from .auth import ROLES, TokenStore, tokens
from .params import (
    EXPORT_OPTIONS,
    BulkExportLimitSchema,
    export_params,
    load_params,
    load_query,
)

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
        _echo_json(get_store().get(execution_id))
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


def _filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """One --option per bulk-export parameter (list filters, limit, offset, order, writer options)."""
    schema = BulkExportLimitSchema()
    for name in reversed([*schema.fields, *EXPORT_OPTIONS]):
        field = schema.fields.get(name) or EXPORT_OPTIONS[name]
        command = click.option(f"--{name.replace('_', '-')}", name, default=None,
                               help=field.metadata.get("description"))(command)
    return command


@runs.command("export")
@click.argument("execution_id", required=False)
@click.option("--all", "export_all", is_flag=True, help="Export every run the filters select.")
@click.option("--format", "fmt", required=True, help="json, jsonl, csv, xml, xlsx (excel).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="File to write; - for standard output.")
@_filter_options
def export_command(execution_id: str | None, export_all: bool, fmt: str, output: str, **params: str | None) -> None:
    """Export one run (EXECUTION_ID) or, with --all, every run the filters select."""
    if bool(execution_id) == export_all:
        raise click.UsageError("Give either an EXECUTION_ID or --all.")
    args = MultiDict({name: value for name, value in params.items() if value is not None})
    try:
        exporter = get_exporter(fmt)
        if export_all:
            query, options = load_query(export_params(exporter, bulk=True), args)
            _, chunks = export_selection(exporter, get_index(), get_store(), query, options)
        else:
            options = load_params(export_params(exporter, bulk=False), args)
            chunks = exporter.write([get_store().get(execution_id)], bulk=False, **options)
        with click.open_file(output, "wb", atomic=output != "-") as sink:
            for chunk in chunks:
                sink.write(chunk)
    except ExecutionHistoryError as err:
        _fail(err)


token = AppGroup("token", help="Access tokens (RUN_HISTORY_TOKENS must name the tokens file).")
runs.add_command(token)


def _token_store() -> TokenStore:
    store = tokens()
    if store is None:
        raise click.ClickException("Set RUN_HISTORY_TOKENS to the tokens file first (e.g. exports/tokens.json).")
    return store


@token.command("create")
@click.argument("user")
@click.option("--role", type=click.Choice(ROLES), required=True, help="admin sees every run; researcher only theirs.")
def token_create_command(user: str, role: str) -> None:
    """Add a token for USER and print it, once, alone on the last line (only its hash is kept)."""
    store = _token_store()
    created = store.create(user, role)
    click.echo(f"Token for {user} ({role}) added to {store.path}. It is shown only now:", err=True)
    click.echo(created)


@token.command("list")
def token_list_command() -> None:
    """Users and roles that hold tokens (never the tokens)."""
    _echo_json(_token_store().users())


@token.command("revoke")
@click.argument("user")
def token_revoke_command(user: str) -> None:
    """Remove every token of USER."""
    click.echo(f"Revoked {_token_store().revoke(user)} token(s) of {user}.")


@runs.command("audit")
@click.option("--user", default=None, help="Only this user's lines.")
@click.option("--since", default=None, help="Only lines at or after this date or ISO datetime (UTC if no offset).")
def audit_command(user: str | None, since: str | None) -> None:
    """Print the audit trail (JSON lines) of exports, link creations and link uses."""
    when = None
    if since:
        try:
            when = dt.datetime.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("a date (YYYY-MM-DD) or ISO datetime", param_hint="--since") from None
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    log = current_app.extensions["run_history"]["audit"]
    for entry in log.iter_entries(user=user, since=when):
        click.echo(json.dumps(entry, ensure_ascii=False))


@runs.command("recover")
def recover_command() -> None:
    """Publish what dead pipelines left: records the tracker could not publish, then journals
    of pipeline processes that died (status interrupted)."""
    from .recovery import recover_now

    recovered = current_app.extensions["run_history"]["recovered_at_start"] + recover_now(current_app)
    click.echo(f"Recovered {len(recovered)} run(s)." + "".join(f"\n{i}" for i in recovered))
