"""Queue `usage` (concurrency 2): metered usage, rolled up per day and per month.

The application records raw events with `record_usage()`. Two cron jobs turn
them into `usage_aggregates` rows (one per organisation, metric and period):

- `AggregateDailyUsage` at 00:00 UTC, for the day that just ended;
- `AggregateMonthlyUsage` at 01:00 UTC on the 1st, for the month that just ended.

Both *replace* their period: in one transaction they delete the period's rows
and write fresh sums computed from `usage_events`. A repeated tick, a manual
re-run or a backfill therefore never double-counts, and events that arrived
late are counted the next time the period is aggregated.

`backfill_usage()` (and `python -m jobs backfill-usage`) enqueues the jobs for
a range of past days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, field_validator

from forgejobs import Context, Job, JobHandle, backoff
from forgejobs.schedule import cron

from .resources import Resources
from .store import Store, max_length, new_id, usage_aggregates, usage_events, utcnow

MAX_BACKFILL_DAYS = 366
"""The longest range `backfill_usage` accepts without `force=True`."""

Period = Literal["day", "month"]

RETRY = backoff.exponential(30, max_seconds=1800)
"""Aggregations fail when the database does: give it time (30 s, 1 min, 2 min, 4 min between attempts)."""


class UsageSummary(BaseModel):
    """What one aggregation run wrote: its period, the rows replaced and the totals behind them."""

    period: Period
    period_start: date
    rows: int
    """Aggregate rows written (one per organisation and metric with events in the period)."""
    events: int
    """Usage events counted."""
    quantity: int
    """Sum of their quantities, all metrics together."""
    replaced: int
    """Rows of this period that existed before the run (0 on a first run)."""


def record_usage(store: Store, *, org_id: str, metric: str, quantity: int, at: datetime | None = None) -> str:
    """Record one usage event for `org_id` and return its id.

    `at` is when the usage happened (timezone-aware; default: now). `quantity`
    must be a non-negative integer. The event is counted by the next
    aggregation of the day and month it falls in.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise TypeError(f"quantity must be an int, not {type(quantity).__name__}")
    if quantity < 0:
        raise ValueError(f"quantity must not be negative, got {quantity}")
    limit = max_length(usage_events.c.metric)
    if not metric or len(metric) > limit:  # SQLite would store a longer one; PostgreSQL refuses it
        raise ValueError(f"metric must be 1 to {limit} characters, got {len(metric)}: {metric[:80]!r}")
    if at is not None and at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: pass a timezone-aware time, e.g. datetime.now(UTC)")
    event_id = new_id("use")
    with store.begin() as conn:
        conn.execute(
            usage_events.insert().values(
                id=event_id, org_id=org_id, metric=metric, quantity=quantity, occurred_at=at or utcnow()
            )
        )
    return event_id


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _next_month(first: date) -> date:
    return date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)


def _tick(ctx: Context[Resources]) -> datetime:
    """The moment a run is for: its cron tick, or when it was enqueued (manual runs)."""
    return (ctx.scheduled_for or ctx.enqueued_at).astimezone(UTC)


def aggregate_period(store: Store, period: Period, start: date, end: date) -> UsageSummary:
    """Replace the `period` aggregates starting on `start` with sums of the events in [start, end) UTC.

    One transaction: readers see either the old rows or the new ones, never a
    half-written period. Safe to run again at any time.
    """
    begins, ends = _midnight(start), _midnight(end)
    now = utcnow()
    this_period = sa.and_(usage_aggregates.c.period == period, usage_aggregates.c.period_start == start)
    sums = (
        sa.select(
            usage_events.c.org_id,
            usage_events.c.metric,
            # PostgreSQL sums a bigint as numeric: bring it back to an integer.
            sa.cast(sa.func.sum(usage_events.c.quantity), sa.BigInteger).label("quantity"),
            sa.func.count().label("events"),
        )
        .where(usage_events.c.occurred_at >= begins, usage_events.c.occurred_at < ends)
        .group_by(usage_events.c.org_id, usage_events.c.metric)
        .order_by(usage_events.c.org_id, usage_events.c.metric)
    )
    with store.begin() as conn:
        replaced = conn.execute(usage_aggregates.delete().where(this_period)).rowcount
        rows = [
            {
                "org_id": row.org_id,
                "metric": row.metric,
                "period": period,
                "period_start": start,
                "quantity": int(row.quantity),
                "events": int(row.events),
                "computed_at": now,
            }
            for row in conn.execute(sums)
        ]
        for values in rows:
            # An upsert, not a plain insert: a concurrent run of the same period that committed
            # between our delete and this write is overwritten with the same sums instead of failing.
            store.upsert(conn, usage_aggregates, values, keys=("org_id", "metric", "period", "period_start"))
    return UsageSummary(
        period=period,
        period_start=start,
        rows=len(rows),
        events=sum(r["events"] for r in rows),
        quantity=sum(r["quantity"] for r in rows),
        replaced=max(replaced, 0),
    )


class AggregateDailyUsage(
    Job, queue="usage", attempts=5, backoff=RETRY, timeout="15m", schedule=cron("0 0 * * *", tz="UTC")
):
    """Sum one UTC day of usage events per organisation and metric (`period="day"`).

    `day` defaults to the day before the run's tick (`ctx.scheduled_for`; for a
    manual run, the day before it was enqueued), so ticks caught up after
    downtime each aggregate their own day.
    """

    day: date | None = None

    def perform(self, ctx: Context[Resources]) -> UsageSummary:
        day = self.day or (_tick(ctx) - timedelta(days=1)).date()
        summary = aggregate_period(ctx.resources.db, "day", day, day + timedelta(days=1))
        ctx.logger.info(
            "usage for %s: %d rows from %d events (replaced %d)", day, summary.rows, summary.events, summary.replaced
        )
        return summary


class AggregateMonthlyUsage(
    Job, queue="usage", attempts=5, backoff=RETRY, timeout="30m", schedule=cron("0 1 1 * *", tz="UTC")
):
    """Sum one UTC calendar month of usage events per organisation and metric (`period="month"`).

    `month` is the first day of the month (another day is refused when the job
    is created); it defaults to the month before the run's tick. Computed from
    the raw events, not from the daily rows, so it is right even if a day was
    never aggregated.
    """

    month: date | None = None

    @field_validator("month")
    @classmethod
    def _first_of_month(cls, value: date | None) -> date | None:
        if value is not None and value.day != 1:
            raise ValueError(f"month must be the first day of a month (e.g. {value.replace(day=1).isoformat()})")
        return value

    def perform(self, ctx: Context[Resources]) -> UsageSummary:
        month = self.month or (_tick(ctx).date().replace(day=1) - timedelta(days=1)).replace(day=1)
        summary = aggregate_period(ctx.resources.db, "month", month, _next_month(month))
        ctx.logger.info(
            "usage for %s: %d rows from %d events (replaced %d)",
            month.strftime("%Y-%m"),
            summary.rows,
            summary.events,
            summary.replaced,
        )
        return summary


def backfill_usage(start: date, end: date, *, monthly: bool = True, force: bool = False) -> list[JobHandle]:
    """Enqueue `AggregateDailyUsage` for every day from `start` to `end` inclusive and, if `monthly`,
    `AggregateMonthlyUsage` once for every month those days touch.

    Returns the handles, daily jobs first (oldest day first), then the monthly
    ones. Refuses `end` before `start`, and ranges longer than
    `MAX_BACKFILL_DAYS` days unless `force=True`. Re-running a backfill is
    harmless: each job replaces its period.
    """
    if end < start:
        raise ValueError(f"backfill range ends before it starts: {start.isoformat()} to {end.isoformat()}")
    days = (end - start).days + 1
    if days > MAX_BACKFILL_DAYS and not force:
        raise ValueError(
            f"backfill of {days} days ({start.isoformat()} to {end.isoformat()}) is longer than "
            f"{MAX_BACKFILL_DAYS} days; pass force=True (--force) if you mean it"
        )
    handles = AggregateDailyUsage.enqueue_many({"day": start + timedelta(days=n)} for n in range(days))
    if monthly:
        months = []
        month = start.replace(day=1)
        while month <= end:
            months.append({"month": month})
            month = _next_month(month)
        handles += AggregateMonthlyUsage.enqueue_many(months)
    return handles
