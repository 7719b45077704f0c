"""``flask cnerium init | purge | stats | show``: look after the idempotency store."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
import peewee
from flask import current_app
from flask.cli import with_appcontext

from .config import Settings
from .errors import StoreError
from .store import IN_PROGRESS, TABLE, Store, redact_url

log = logging.getLogger("flask_cnerium")


@click.group("cnerium")
def cnerium_cli() -> None:
    """Manage the flask-cnerium idempotency store."""


# -- commands --------------------------------------------------------------------------


@cnerium_cli.command("init")
@with_appcontext
def init_command() -> None:
    """Create the idempotency table if it does not exist, and say where the store is."""
    store = _open_store()
    with _store_errors():
        store.create_tables()
    click.echo(f"Cnerium store ready: table {TABLE} in {_describe(store)}.")


@cnerium_cli.command("purge")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Records deleted per transaction.")
@with_appcontext
def purge_command(batch_size: int) -> None:
    """Delete expired records in short batches that never hold the write lock for long."""
    store = _open_store()
    started = time.perf_counter()
    if _is_terminal():
        removed, batches = _purge_with_bar(store, batch_size)
    else:
        removed, batches = _purge(store, batch_size, lambda n: None)
    elapsed = time.perf_counter() - started
    click.echo(f"purged {removed} expired {_plural(removed, 'record')} in {batches} "
               f"{_plural(batches, 'batch', 'batches')} ({elapsed:.1f} s)")


@cnerium_cli.command("stats")
@with_appcontext
def stats_command() -> None:
    """Records by operation and state, the oldest and newest, and the store's size."""
    store = _open_store()
    with _store_errors(), store.connection():
        rows = _counts(store)
        oldest, newest = _created_span(store)
        size = _size(store)
    click.echo(f"store: {_describe(store)}")
    click.echo(_table(["operation", "state", "records", "expired"], rows))
    click.echo(f"oldest: {_when(oldest)}")
    click.echo(f"newest: {_when(newest)}")
    click.echo(f"size:   {size}")


@cnerium_cli.command("show")
@click.argument("key")
@click.option("--scope", default="", help="The key scope (default: the global scope).")
@with_appcontext
def show_command(key: str, scope: str) -> None:
    """Print one record and its stored response; exit 1 when there is none."""
    store = _open_store()
    model = store.model
    with _store_errors(), store.connection():
        record = model.get_or_none((model.scope == scope) & (model.key == key))
    if record is None:
        raise click.ClickException(f"No record for key {key!r} in {_scope_name(scope)}.")
    for line in _record_lines(record):
        click.echo(line)


# -- opening the store -----------------------------------------------------------------


def _open_store() -> Store:
    """The current app's started store, or a clear error (exit 1) saying why there is none."""
    app = current_app._get_current_object()
    state = app.extensions.get("cnerium")
    if state is None:
        raise click.ClickException("Cnerium is not registered on this app: call Cnerium(app) "
                                   "or cnerium.init_app(app) in the app factory.")
    if not state.start(app):
        where = "the app's own database" if state.database is not None else \
            redact_url(Settings.from_app(app).database_url)
        raise click.ClickException(f"Could not open the Cnerium store ({where}). Check "
                                   "CNERIUM_DATABASE / CNERIUM_DATA_DIR and that the database "
                                   "is reachable.")
    return state.store


@contextmanager
def _store_errors() -> Iterator[None]:
    """Turn database failures into a one-line error and exit status 1, never a traceback."""
    try:
        yield
    except (StoreError, peewee.PeeweeException, OSError) as exc:
        log.debug("Cnerium store command failed.", exc_info=True)
        raise click.ClickException(f"The Cnerium store failed: {exc}") from None


def _describe(store: Store) -> str:
    """Where the store lives, without any password."""
    if not store.shared:
        return redact_url(current_app.extensions["cnerium"].settings.database_url)
    database = store.database
    kind = type(database).__name__
    where = f"{kind} {database.database}" if database.database else kind
    return f"the app's own database ({where})"


# -- purge -----------------------------------------------------------------------------


def _is_terminal() -> bool:
    """Whether standard output is a terminal (then purge draws a progress bar)."""
    return sys.stdout.isatty()


def _purge(store: Store, batch_size: int, advance: Callable[[int], object]
           ) -> tuple[int, int]:
    """Run :meth:`Store.purge`; the records removed and the number of batches."""
    removed = batches = 0
    try:
        for count in store.purge(batch_size):
            removed += count
            batches += 1
            advance(count)
    except StoreError as exc:
        raise click.ClickException(f"Purge stopped after removing {removed} records: "
                                   f"{exc}") from None
    return removed, batches


def _purge_with_bar(store: Store, batch_size: int) -> tuple[int, int]:
    """:func:`_purge` behind a progress bar sized by a count of the purgeable records."""
    with _store_errors():
        total = store.count_purgeable()
    with click.progressbar(length=total, label="Purging expired records") as bar:
        return _purge(store, batch_size, bar.update)



# -- stats -----------------------------------------------------------------------------


def _counts(store: Store) -> list[list[str]]:
    """Per operation and state, then in total: the number of records and of expired ones."""
    model = store.model
    expired = peewee.Case(None, [(model.expires_at <= time.time(), 1)], 0)
    query = (model.select(model.operation, model.state, peewee.fn.COUNT(model.id),
                          peewee.fn.SUM(expired))
             .group_by(model.operation, model.state)
             .order_by(model.operation, model.state).tuples())
    rows = [[op, state, int(n), int(x or 0)] for op, state, n, x in query]
    totals = ["total", "", sum(r[2] for r in rows), sum(r[3] for r in rows)]
    return [[str(cell) for cell in row] for row in [*rows, totals]]


def _created_span(store: Store) -> tuple[float | None, float | None]:
    """The creation times of the oldest and the newest record."""
    model = store.model
    query = model.select(peewee.fn.MIN(model.created_at), peewee.fn.MAX(model.created_at))
    return query.scalar(as_tuple=True)


def _size(store: Store) -> str:
    """The store's size on disk: the SQLite file (and its WAL), or the PostgreSQL table."""
    database = store.database
    if store.is_sqlite:
        path = database.database
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        shared = ", shared with the app's tables" if store.shared else ""
        return f"{_bytes(size)} (SQLite file {path} with its WAL{shared})"
    if isinstance(database, peewee.PostgresqlDatabase):
        cursor = database.execute_sql("SELECT pg_total_relation_size(%s)", (TABLE,))
        return f"{_bytes(cursor.fetchone()[0])} (pg_total_relation_size of {TABLE})"
    return f"unknown for {type(database).__name__}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: text columns left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if i >= 2 else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


# -- show ------------------------------------------------------------------------------


def _record_lines(record: peewee.Model) -> list[str]:
    """The lines ``show`` prints for one record."""
    now = time.time()
    expired = record.expires_at <= now
    lines = [
        f"key:        {record.key}",
        f"scope:      {_scope_name(record.scope)}",
        f"operation:  {record.operation}",
        f"state:      {record.state}",
        f"node:       {record.node_id}",
        f"created:    {_when(record.created_at)}",
        f"expires:    {_when(record.expires_at)} ({'expired' if expired else 'not expired'})",
    ]
    if record.state == IN_PROGRESS:
        lease = record.lease_expires_at
        held = lease is not None and lease > now
        lines.append(f"lease:      {_when(lease)} ({'held' if held else 'lapsed'})")
        return lines
    return lines + _response_lines(record)


def _response_lines(record: peewee.Model) -> list[str]:
    """The stored response: status, headers, and the body as text or base64."""
    lines = ["response:", f"  status:   {record.status}", "  headers:"]
    lines += [f"    {name}: {value}" for name, value in json.loads(record.headers or "[]")]
    body = bytes(record.body or b"")
    if not body:
        return [*lines, "  body:     (empty)"]
    try:
        return [*lines, f"  body ({len(body)} bytes, text):", body.decode("utf-8")]
    except UnicodeDecodeError:
        encoded = base64.b64encode(body).decode("ascii")
        return [*lines, f"  body ({len(body)} bytes, base64):", encoded]


def _scope_name(scope: str) -> str:
    """How a scope is shown: the global scope is the empty string."""
    return "the global scope" if scope == "" else f"scope {scope!r}"


# -- formatting ------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    """A Unix time as RFC 3339 UTC, or ``-``."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _bytes(size: int) -> str:
    """A size in bytes, KiB or MiB."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    """``singular`` or ``plural`` as ``count`` asks."""
    return singular if count == 1 else (plural or singular + "s")
