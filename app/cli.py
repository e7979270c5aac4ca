"""`flask runs ...` commands, calling the same core functions as the views."""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import time
from collections.abc import Callable

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from werkzeug.datastructures import MultiDict

from examples.sample_pipeline import iter_sample_runs
from execution_history import importer
from execution_history.errors import ExecutionHistoryError
from execution_history.exporters import export_selection, get_exporter
from execution_history.lifecycle import PruneCriteria, delete_run, prune
from execution_history.pseudonyms import prepare_export
from execution_history.records import FINAL_STATUSES

from .auth import ROLES, TokenStore, tokens
from .downloads import with_media_root
from .extensions import (get_audit, get_index, get_layout, get_media_root, get_media_sources, get_recovered_at_start,
                         get_store, get_thumbnails)
from .recovery import recover_now
from .sessions import end_sessions_of
from .params import (
    COMMON_EXPORT_OPTIONS,
    EXPORT_OPTIONS,
    BulkExportLimitSchema,
    export_params,
    load_params,
    load_query,
)


@with_appcontext
def _wait_for_index_builds() -> None:
    """A command waits for a cold index build (and builds it itself) instead of answering
    INDEX_BUILDING like a request."""
    get_index().build_in_background = False


class _Commands(AppGroup):
    """A group whose commands end on the project's own errors with their JSON body (what the
    API would answer) and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ExecutionHistoryError as err:
            _fail(err)


runs = _Commands("runs", help="Inspect and manage recorded pipeline runs.", callback=_wait_for_index_builds)


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
    _echo_json(get_store().get(execution_id))


@runs.command("sample")
@click.argument("count", type=click.IntRange(min=1, max=100_000), default=12)
@click.option("--if-empty", is_flag=True, help="Only record samples if the store holds no run yet.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the simulated models.")
def sample_command(count: int, if_empty: bool, seed: int) -> None:
    """Record COUNT sample runs through the real tracker (examples/sample_pipeline.py)."""
    store = get_store()
    if if_empty and store.list_files():
        click.echo(f"{store.root} already holds runs; no samples recorded.")
        return
    # the sample media go where the app serves media from
    ids = list(iter_sample_runs(count, store, seed=seed, media_root=get_media_root()))
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
    writer_options = [name for name in EXPORT_OPTIONS if name not in COMMON_EXPORT_OPTIONS]  # those: flags
    for name in reversed([*schema.fields, *writer_options]):
        field = schema.fields.get(name) or EXPORT_OPTIONS[name]
        command = click.option(f"--{name.replace('_', '-')}", name, default=None,
                               help=field.metadata.get("description"))(command)
    return command


@runs.command("export")
@click.argument("execution_id", required=False)
@click.option("--all", "export_all", is_flag=True, help="Export every run the filters select.")
@click.option("--format", "fmt", required=True, help="json, jsonl, csv, xml, xlsx (excel), zip (records and media).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="File to write; - for standard output.")
@click.option("--pseudonymize", flag_value="true", default=None,
              help="Replace user_id and session_id with keyed pseudonyms (content and metadata stay).")
@_filter_options
def export_command(execution_id: str | None, export_all: bool, fmt: str, output: str, **params: str | None) -> None:
    """Export one run (EXECUTION_ID) or, with --all, every run the filters select."""
    if bool(execution_id) == export_all:
        raise click.UsageError("Give either an EXECUTION_ID or --all.")
    args = MultiDict({name: value for name, value in params.items() if value is not None})
    secret = current_app.config["SECRET_KEY"]
    exporter = get_exporter(fmt)
    if export_all:
        query, options = load_query(export_params(exporter, bulk=True), args)
        _, chunks = export_selection(exporter, get_index(), get_store(), query, with_media_root(exporter, options),
                                     secret_key=secret)
    else:
        options = load_params(export_params(exporter, bulk=False), args)
        records, _, options, _ = prepare_export([get_store().get(execution_id)], None, options, secret)
        chunks = exporter.write(records, bulk=False, **with_media_root(exporter, options))
    with click.open_file(output, "wb", atomic=output != "-") as sink:
        for chunk in chunks:
            sink.write(chunk)


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
    """Remove every token of USER, and end the sign-in sessions made with them."""
    store = _token_store()
    hashes = store.hashes_of(user)
    count = store.revoke(user)
    ended = sum(end_sessions_of(current_app, digest) for digest in hashes)
    click.echo(f"Revoked {count} token(s) of {user}; ended {ended} session(s).")


@runs.command("audit")
@click.option("--user", default=None, help="Only this user's lines.")
@click.option("--since", default=None, help="Only lines at or after this date or ISO datetime (UTC if no offset).")
@click.option("--event", default=None, help="Only lines of this event (export, link_created, link_used, delete, prune, ...).")
def audit_command(user: str | None, since: str | None, event: str | None) -> None:
    """Print the audit trail (JSON lines) of exports, link creations, link uses, deletes and prunes."""
    when = None
    if since:
        try:
            when = dt.datetime.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("a date (YYYY-MM-DD) or ISO datetime", param_hint="--since") from None
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    log = get_audit()
    for entry in log.iter_entries(user=user, since=when):
        if event is not None and entry.get("event") != event:
            continue
        click.echo(json.dumps(entry, ensure_ascii=False))


def _older_than(value: str) -> int:
    text = value.strip().lower().removesuffix("d")
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise click.BadParameter("a number of days, e.g. 30d", param_hint="--older-than")
    return int(text)


def _operator() -> str:
    """Who runs a command on the host, for its audit lines."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


@runs.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="<N>d",
              help="Delete finished runs that started more than N days ago (e.g. 90d).")
@click.option("--config", default=None, help="Only runs of this config_name.")
@click.option("--status", type=click.Choice(FINAL_STATUSES), default=None, help="Only runs with this status.")
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
def prune_command(older_than: str, config: str | None, status: str | None, dry_run: bool) -> None:
    """Delete finished runs older than N days (runs in progress never); prints each id, then the count."""
    criteria = PruneCriteria(_older_than(older_than), config=config, status=status)
    done = prune(get_store(), get_index(), criteria, dry_run=dry_run, audit=get_audit(),
                 journals=get_layout().journal, who=(_operator(), "cli"),
                 on_run=click.echo)
    click.echo(f"{'Would delete' if dry_run else 'Deleted'} {len(done)} run(s).")


@runs.command("delete")
@click.argument("execution_id")
@click.option("--media", is_flag=True, help="Also delete the media files that only this run names.")
def delete_command(execution_id: str, media: bool) -> None:
    """Delete one finished run for good (what DELETE /api/runs/<id> does for an admin)."""
    root = get_media_sources() if media else None  # the local media dir and/or the bucket's
    deleted = delete_run(get_store(), get_index(), execution_id, media_root=root,
                         journals=get_layout().journal, thumbnails=get_thumbnails())
    get_audit().append(
        "delete", user=_operator(), role="cli", execution_id=execution_id, config=deleted.config_name,
        media_deleted=len(deleted.media_files) if media else None)
    click.echo(f"Deleted {execution_id}" + (f" and {len(deleted.media_files)} media file(s)." if media else "."))


@runs.command("recover")
def recover_command() -> None:
    """Publish what dead pipelines left: records the tracker could not publish, then journals
    of pipeline processes that died (status interrupted)."""
    recovered = get_recovered_at_start() + recover_now(current_app)
    click.echo(f"Recovered {len(recovered)} run(s)." + "".join(f"\n{i}" for i in recovered))


def _printable(name: str) -> str:
    """A file name safe to print on one line (control characters and undecodable bytes escaped)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in name)


@runs.command("import")
@click.argument("source", type=click.Path(exists=True, file_okay=False, readable=True))
def import_command(source: str) -> None:
    """Copy the record files of SOURCE (e.g. an old exports/executions/) into the store.

    Each file is validated, then stored byte for byte, never over an existing run; one
    line per file says copied, already there or unreadable (with the reason), the last
    line the counts. Exit code 1 if any file was unreadable (the others are still copied).
    """
    store = get_store()
    counts = dict.fromkeys((importer.COPIED, importer.ALREADY_THERE, importer.UNREADABLE), 0)
    try:
        for result in importer.iter_import(store, source):
            counts[result.outcome] += 1
            click.echo(f"{result.outcome}: {_printable(result.name)}"
                       + (f" ({_printable(result.reason)})" if result.reason else ""))
    except OSError as err:
        raise click.ClickException(f"{source} cannot be read: {err.strerror or err}") from None
    click.echo(f"{sum(counts.values())} file(s) from {_printable(source)}: {counts[importer.COPIED]} copied, "
               f"{counts[importer.ALREADY_THERE]} already there, {counts[importer.UNREADABLE]} unreadable.")
    if counts[importer.UNREADABLE]:
        raise SystemExit(1)
