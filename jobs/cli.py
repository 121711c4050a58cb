"""`python -m jobs`: the catalog's own commands.

    python -m jobs init-db
    python -m jobs backfill-usage --from 2026-11-01 --to 2026-11-27 [--no-monthly] [--force]

Jobs are enqueued through a client built from `forgejobs.Settings`
(`FORGEJOBS_REDIS_URL`, `FORGEJOBS_JOBS`, `FORGEJOBS_SPECS`), exactly as the
`forgejobs` command line builds its own; the database comes from
`CatalogSettings` (`FORGEJOBS_CATALOG_DATABASE_URL`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import click
import sqlalchemy as sa

from forgejobs import Client, ForgeJobsError, Settings, use_client

from .resources import CatalogSettings
from .store import Store, metadata
from .usage import AggregateDailyUsage, backfill_usage

ClientFactory = Callable[[], Client]


def _settings_client() -> Client:
    return Client.from_settings(Settings())


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The job catalog's commands."""
    # Tests pass their own factory as `obj`; everyone else gets a client from the environment.
    if ctx.obj is None:
        ctx.obj = _settings_client


@cli.command("init-db")
def init_db() -> None:
    """Create the catalog's missing tables at FORGEJOBS_CATALOG_DATABASE_URL."""
    url = CatalogSettings().database_url
    try:
        store = Store.from_url(url)
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"cannot create the tables: {exc}") from exc
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    store.dispose()
    click.echo(f"{len(metadata.tables)} tables ready at {shown}: {', '.join(sorted(metadata.tables))}")


@cli.command("backfill-usage")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, help="First day.")
@click.option("--to", "end", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, help="Last day (included).")
@click.option("--monthly/--no-monthly", default=True, help="Also aggregate each month the range touches.")
@click.option("--force", is_flag=True, help="Allow a range longer than 366 days.")
@click.pass_obj
def backfill_usage_command(
    make_client: ClientFactory, start: datetime, end: datetime, monthly: bool, force: bool
) -> None:
    """Enqueue the daily (and monthly) usage aggregation for every day from --from to --to."""
    try:
        client = make_client()
        try:
            with use_client(client):
                handles = backfill_usage(start.date(), end.date(), monthly=monthly, force=force)
        finally:
            client.close()
    except (ValueError, ForgeJobsError) as exc:
        raise click.ClickException(str(exc)) from exc
    daily = sum(1 for h in handles if h.job_type is AggregateDailyUsage)
    for handle in handles:
        name = handle.job_type.job_name() if handle.job_type else "?"
        click.echo(f"{name} {handle.id}")
    click.echo(
        f"enqueued {daily} daily job(s) for {_span(start.date(), end.date())} and {len(handles) - daily} monthly job(s)"
    )


def _span(start: date, end: date) -> str:
    return start.isoformat() if start == end else f"{start.isoformat()} to {end.isoformat()}"
