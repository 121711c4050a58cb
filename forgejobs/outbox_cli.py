"""`forgejobs outbox ...`: run the outbox relay, create the table, see what waits and what failed."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any, NoReturn

import click

from .embedded import redact_url
from .errors import ForgeJobsError
from .settings import Settings

_DATABASE = click.option(
    "--database-url",
    envvar="FORGEJOBS_OUTBOX_DATABASE_URL",
    required=True,
    help="SQLAlchemy URL of the database holding the outbox (also FORGEJOBS_OUTBOX_DATABASE_URL).",
)
_TABLE = click.option("--table", default="forgejobs_outbox", show_default=True, help="The outbox table's name.")
_SCHEMA = click.option("--schema", default=None, help="The table's schema (PostgreSQL), if not the default one.")


def _fail(message: str) -> NoReturn:
    """The command line's one error format: `error: ...` on stderr, exit status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _open(database_url: str, table: str, schema: str | None, *, existing: bool = True) -> tuple[Any, Any]:
    """The engine and the outbox; with `existing`, checks that the table is there (a clear error if not)."""
    try:
        import sqlalchemy as sa

        from .outbox import Outbox
    except ModuleNotFoundError as exc:
        _fail(f"the outbox needs SQLAlchemy ({exc.name} is missing): pip install 'forgejobs[sqlalchemy]'")
    try:
        engine = sa.create_engine(database_url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        _fail(f"--database-url: {exc}")
    box = Outbox(table, schema=schema)
    if existing:
        try:
            found = sa.inspect(engine).has_table(table, schema=schema)
        except sa.exc.SQLAlchemyError as exc:
            _fail(f"cannot reach the database {_where(engine)}: {str(exc).splitlines()[0]}")
        if not found:
            _fail(
                f"no outbox table {box.table.fullname} in {_where(engine)}: create it with "
                "forgejobs outbox create-table (or forgejobs.outbox.create_table, or in your migrations)"
            )
    return engine, box


def _where(engine: Any) -> str:
    return str(engine.url.render_as_string(hide_password=True))


@click.group()
def outbox() -> None:
    """The transactional outbox: rows written by forgejobs.outbox.enqueue, moved to Redis by a relay."""


@outbox.command()
@_DATABASE
@_TABLE
@_SCHEMA
@click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Rows per pass.")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between passes while the table is empty."
)
@click.option("--once", is_flag=True, help="One pass, then exit (prints what it did).")
@click.pass_obj
def relay(
    settings: Settings, database_url: str, table: str, schema: str | None, batch: int, interval: float, once: bool
) -> None:
    """Move outbox rows to Redis, the row id as the job id. SIGTERM or Ctrl+C stops after the current pass."""
    from .client import Client

    engine, box = _open(database_url, table, schema)
    from .outbox import OutboxRelay  # importable now: _open checked SQLAlchemy

    try:
        mover = OutboxRelay(engine, Client.from_settings(settings), box)
    except ForgeJobsError as exc:  # the registry or specs cannot be loaded
        _fail(str(exc))
    where = f"{box.table.fullname} of {_where(engine)}"
    if once:
        try:
            done = mover.run_once(batch)
        except Exception as exc:
            _fail(f"relay pass on {where} failed: {exc}")
        click.echo(
            f"relayed {done.sent} job(s) from {where} ({done.duplicates} already in Redis, {len(done.failed)} failed)"
        )
        for row_id, reason in done.failed:
            click.echo(f"  failed {row_id}: {reason}", err=True)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(
        f"relaying from {where} to Redis at {redact_url(settings.redis_url_or_default())}, {batch} rows per pass",
        err=True,
    )
    sys.stderr.flush()
    mover.run_forever(batch, interval, stop)


@outbox.command("create-table")
@_DATABASE
@_TABLE
@_SCHEMA
def create_table(database_url: str, table: str, schema: str | None) -> None:
    """Create the outbox table (and its index) if missing."""
    engine, box = _open(database_url, table, schema, existing=False)
    box.create_table(engine)
    click.echo(f"{box.table.fullname} ready in {_where(engine)}")


@outbox.command()
@_DATABASE
@_TABLE
@_SCHEMA
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (for scripts).")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Failed rows to list.")
def status(database_url: str, table: str, schema: str | None, as_json: bool, limit: int) -> None:
    """Rows waiting for the relay, and the rows it could not turn into jobs (with the reason)."""
    engine, box = _open(database_url, table, schema)
    pending, failed = box.pending(engine), box.failed(engine, limit)
    if as_json:
        rows = [{"id": f.id, "name": f.name, "failed_at": f.failed_at.isoformat(), "error": f.error} for f in failed]
        click.echo(json.dumps({"pending": pending, "failed": rows}))
        return
    click.echo(f"{pending} row(s) waiting in {box.table.fullname}; {len(failed)} failed")
    for f in failed:
        click.echo(f"  {f.id}  {f.name}  {f.failed_at:%Y-%m-%d %H:%M:%S}  {f.error}")
