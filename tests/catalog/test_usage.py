"""Queue `usage`: recording events, daily and monthly aggregation (on SQLite and PostgreSQL), backfill, CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner
from pydantic import ValidationError

from forgejobs import Client, Context, Registry, Settings, Status
from forgejobs.backends.redis import RedisBackend
from forgejobs.schedule import Schedule
from forgejobs.testing import FakeQueue, make_context
from jobs.cli import cli
from jobs.resources import Resources
from jobs.store import Store, new_id, organisations, usage_aggregates
from jobs.usage import (
    MAX_BACKFILL_DAYS,
    AggregateDailyUsage,
    AggregateMonthlyUsage,
    UsageSummary,
    backfill_usage,
    record_usage,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def context(
    job: AggregateDailyUsage | AggregateMonthlyUsage, resources: Resources, **fields: Any
) -> Context[Resources]:
    ctx: Context[Resources] = make_context(job, resources=resources)
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def aggregates(store: Store, period: str) -> dict[tuple[str, str, date], tuple[int, int]]:
    """(org, metric, period_start) -> (quantity, events) for every row of `period`."""
    with store.begin() as conn:
        rows = conn.execute(sa.select(usage_aggregates).where(usage_aggregates.c.period == period)).all()
    return {(r.org_id, r.metric, r.period_start): (r.quantity, r.events) for r in rows}


@pytest.fixture
def other_org(store: Store) -> str:
    org_id = new_id("org")
    with store.begin() as conn:
        conn.execute(organisations.insert().values(id=org_id, name="Globex"))
    return org_id


# -- record_usage ---------------------------------------------------------------------------------


def test_record_usage_refuses_bad_input_before_writing(store: Store, org: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="negative"):
        record_usage(store, org_id=org["org_id"], metric="api.requests", quantity=-1)
    with pytest.raises(TypeError, match="int"):
        record_usage(store, org_id=org["org_id"], metric="api.requests", quantity=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        record_usage(store, org_id=org["org_id"], metric="api.requests", quantity=1, at=datetime(2026, 11, 1))


# -- daily ------------------------------------------------------------------------------------------


def test_daily_sums_per_org_and_metric(resources: Resources, org: dict[str, str], other_org: str) -> None:
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="api.requests", quantity=3, at=at("2026-11-10T08:00:00"))
    record_usage(resources.db, org_id=a, metric="api.requests", quantity=4, at=at("2026-11-10T20:00:00"))
    record_usage(resources.db, org_id=a, metric="storage.bytes", quantity=100, at=at("2026-11-10T09:00:00"))
    record_usage(resources.db, org_id=other_org, metric="api.requests", quantity=5, at=at("2026-11-10T10:00:00"))
    record_usage(resources.db, org_id=a, metric="api.requests", quantity=1000, at=at("2026-11-11T10:00:00"))

    job = AggregateDailyUsage(day=date(2026, 11, 10))
    summary = job.perform(context(job, resources))

    day = date(2026, 11, 10)
    assert aggregates(resources.db, "day") == {
        (a, "api.requests", day): (7, 2),
        (a, "storage.bytes", day): (100, 1),
        (other_org, "api.requests", day): (5, 1),
    }
    assert summary == UsageSummary(period="day", period_start=day, rows=3, events=4, quantity=112, replaced=0)


def test_rerunning_a_day_replaces_it_and_counts_late_events(resources: Resources, org: dict[str, str]) -> None:
    a, day = org["org_id"], date(2026, 11, 10)
    record_usage(resources.db, org_id=a, metric="api.requests", quantity=2, at=at("2026-11-10T01:00:00"))
    job = AggregateDailyUsage(day=day)
    job.perform(context(job, resources))
    assert aggregates(resources.db, "day") == {(a, "api.requests", day): (2, 1)}

    record_usage(resources.db, org_id=a, metric="api.requests", quantity=5, at=at("2026-11-10T23:00:00"))
    record_usage(resources.db, org_id=a, metric="emails.sent", quantity=1, at=at("2026-11-10T12:00:00"))
    second = job.perform(context(job, resources))
    third = job.perform(context(job, resources))

    assert aggregates(resources.db, "day") == {(a, "api.requests", day): (7, 2), (a, "emails.sent", day): (1, 1)}
    assert (second.replaced, third.replaced, third.rows, third.quantity) == (1, 2, 2, 8)


def test_day_boundaries_are_utc_midnight(resources: Resources, org: dict[str, str]) -> None:
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="m", quantity=1, at=at("2026-11-09T23:59:59.999999"))
    record_usage(resources.db, org_id=a, metric="m", quantity=10, at=at("2026-11-10T00:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=100, at=at("2026-11-10T23:59:59"))
    record_usage(resources.db, org_id=a, metric="m", quantity=1000, at=at("2026-11-11T00:00:00"))
    # 00:30 on the 11th in Berlin (UTC+1 in November) is 23:30 on the 10th in UTC.
    berlin = datetime(2026, 11, 11, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    record_usage(resources.db, org_id=a, metric="m", quantity=10000, at=berlin)

    for day in (date(2026, 11, 9), date(2026, 11, 10), date(2026, 11, 11)):
        job = AggregateDailyUsage(day=day)
        job.perform(context(job, resources))

    assert aggregates(resources.db, "day") == {
        (a, "m", date(2026, 11, 9)): (1, 1),
        (a, "m", date(2026, 11, 10)): (10110, 3),
        (a, "m", date(2026, 11, 11)): (1000, 1),
    }


def test_a_day_without_events_clears_its_old_rows(resources: Resources, org: dict[str, str]) -> None:
    day = date(2026, 11, 10)
    with resources.db.begin() as conn:
        conn.execute(
            usage_aggregates.insert().values(
                org_id=org["org_id"], metric="stale", period="day", period_start=day, quantity=9, events=9
            )
        )
    job = AggregateDailyUsage(day=day)

    summary = job.perform(context(job, resources))

    assert aggregates(resources.db, "day") == {}
    assert (summary.rows, summary.replaced) == (0, 1)


def test_the_default_day_is_the_one_before_the_tick(resources: Resources, org: dict[str, str]) -> None:
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="m", quantity=1, at=at("2026-11-26T12:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=2, at=at("2026-11-27T12:00:00"))
    job = AggregateDailyUsage()

    # A caught-up tick runs late (enqueued on the 28th) but aggregates the day before its own tick.
    ticked = job.perform(
        context(job, resources, scheduled_for=at("2026-11-27T00:00:00"), enqueued_at=at("2026-11-28T05:00:00"))
    )
    manual = job.perform(context(job, resources, scheduled_for=None, enqueued_at=at("2026-11-28T05:00:00")))

    assert (ticked.period_start, ticked.quantity) == (date(2026, 11, 26), 1)
    assert (manual.period_start, manual.quantity) == (date(2026, 11, 27), 2)


# -- monthly ----------------------------------------------------------------------------------------


def test_monthly_sums_the_calendar_month_and_replaces(
    resources: Resources, org: dict[str, str], other_org: str
) -> None:
    a, nov = org["org_id"], date(2026, 11, 1)
    record_usage(resources.db, org_id=a, metric="m", quantity=1, at=at("2026-10-31T23:59:59"))
    record_usage(resources.db, org_id=a, metric="m", quantity=10, at=at("2026-11-01T00:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=20, at=at("2026-11-30T23:59:59"))
    record_usage(resources.db, org_id=other_org, metric="m", quantity=7, at=at("2026-11-15T00:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=100, at=at("2026-12-01T00:00:00"))
    job = AggregateMonthlyUsage(month=nov)

    first = job.perform(context(job, resources))
    record_usage(resources.db, org_id=a, metric="m", quantity=5, at=at("2026-11-20T00:00:00"))
    second = job.perform(context(job, resources))

    assert aggregates(resources.db, "month") == {(a, "m", nov): (35, 3), (other_org, "m", nov): (7, 1)}
    assert (first.quantity, second.quantity, second.replaced) == (37, 42, 2)
    assert aggregates(resources.db, "day") == {}  # the daily rows are another period, left alone


def test_december_runs_into_the_new_year(resources: Resources, org: dict[str, str]) -> None:
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="m", quantity=3, at=at("2026-12-31T23:59:59"))
    record_usage(resources.db, org_id=a, metric="m", quantity=4, at=at("2027-01-01T00:00:00"))
    job = AggregateMonthlyUsage(month=date(2026, 12, 1))

    assert job.perform(context(job, resources)).quantity == 3


def test_the_default_month_is_the_one_before_the_tick(resources: Resources, org: dict[str, str]) -> None:
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="m", quantity=2, at=at("2026-12-31T12:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=5, at=at("2027-01-10T12:00:00"))
    job = AggregateMonthlyUsage()

    ticked = job.perform(context(job, resources, scheduled_for=at("2027-01-01T01:00:00")))
    manual = job.perform(context(job, resources, scheduled_for=None, enqueued_at=at("2027-02-03T09:00:00")))

    assert (ticked.period_start, ticked.quantity) == (date(2026, 12, 1), 2)
    assert (manual.period_start, manual.quantity) == (date(2027, 1, 1), 5)


def test_a_month_must_be_given_as_its_first_day() -> None:
    with pytest.raises(ValidationError, match="first day of a month .e.g. 2026-11-01"):
        AggregateMonthlyUsage(month=date(2026, 11, 15))


def test_the_schedules_fire_at_midnight_and_on_the_first() -> None:
    daily, monthly = AggregateDailyUsage.job_options().schedule, AggregateMonthlyUsage.job_options().schedule
    assert isinstance(daily, Schedule) and isinstance(monthly, Schedule)
    assert daily.next_after(at("2026-11-27T13:00:00")) == at("2026-11-28T00:00:00")
    assert monthly.next_after(at("2026-11-27T13:00:00")) == at("2026-12-01T01:00:00")


# -- backfill ---------------------------------------------------------------------------------------


def test_backfill_enqueues_each_day_and_each_month_touched(fake_queue: FakeQueue) -> None:
    handles = backfill_usage(date(2026, 10, 30), date(2026, 11, 2))

    days = [job.day for job in fake_queue.enqueued(AggregateDailyUsage)]
    months = [job.month for job in fake_queue.enqueued(AggregateMonthlyUsage)]
    assert days == [date(2026, 10, 30), date(2026, 10, 31), date(2026, 11, 1), date(2026, 11, 2)]
    assert months == [date(2026, 10, 1), date(2026, 11, 1)]
    assert len(handles) == 6 and all(h.status() is Status.QUEUED for h in handles)


def test_backfill_without_months_and_of_a_single_day(fake_queue: FakeQueue) -> None:
    backfill_usage(date(2026, 11, 5), date(2026, 11, 5), monthly=False)

    assert [job.day for job in fake_queue.enqueued(AggregateDailyUsage)] == [date(2026, 11, 5)]
    fake_queue.refute_enqueued(AggregateMonthlyUsage)


def test_backfill_refuses_bad_ranges_and_enqueues_nothing(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValueError, match="ends before it starts: 2026-11-05 to 2026-11-04"):
        backfill_usage(date(2026, 11, 5), date(2026, 11, 4))
    with pytest.raises(ValueError, match="longer than 366 days; pass force=True"):
        backfill_usage(date(2025, 1, 1), date(2026, 1, 2))
    assert fake_queue.backend.log == []

    handles = backfill_usage(date(2025, 1, 1), date(2026, 1, 2), monthly=False, force=True)
    assert len(handles) == MAX_BACKFILL_DAYS + 1


def test_backfilled_jobs_run_and_aggregate(fake_queue: FakeQueue, resources: Resources, org: dict[str, str]) -> None:
    fake_queue.resources = resources
    a = org["org_id"]
    record_usage(resources.db, org_id=a, metric="m", quantity=1, at=at("2026-10-31T10:00:00"))
    record_usage(resources.db, org_id=a, metric="m", quantity=2, at=at("2026-11-01T10:00:00"))

    backfill_usage(date(2026, 10, 31), date(2026, 11, 1))
    assert fake_queue.drain().succeeded == 4

    assert aggregates(resources.db, "day") == {
        (a, "m", date(2026, 10, 31)): (1, 1),
        (a, "m", date(2026, 11, 1)): (2, 1),
    }
    assert aggregates(resources.db, "month") == {
        (a, "m", date(2026, 10, 1)): (1, 1),
        (a, "m", date(2026, 11, 1)): (2, 1),
    }


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_backfill_prints_what_it_enqueued(fake_queue: FakeQueue) -> None:
    result = CliRunner().invoke(
        cli, ["backfill-usage", "--from", "2026-11-01", "--to", "2026-11-27"], obj=lambda: fake_queue.client
    )

    assert result.exit_code == 0, result.output
    assert len(fake_queue.enqueued(AggregateDailyUsage)) == 27
    fake_queue.assert_enqueued(AggregateMonthlyUsage, count=1, month=date(2026, 11, 1))
    assert "enqueued 27 daily job(s) for 2026-11-01 to 2026-11-27 and 1 monthly job(s)" in result.output
    assert result.output.count("usage.aggregate-daily-usage ") == 27


def test_cli_backfill_no_monthly(fake_queue: FakeQueue) -> None:
    args = ["backfill-usage", "--from", "2026-11-01", "--to", "2026-11-02", "--no-monthly"]
    result = CliRunner().invoke(cli, args, obj=lambda: fake_queue.client)

    assert result.exit_code == 0, result.output
    assert "enqueued 2 daily job(s) for 2026-11-01 to 2026-11-02 and 0 monthly job(s)" in result.output
    fake_queue.refute_enqueued(AggregateMonthlyUsage)


def test_cli_backfill_refuses_a_reversed_range(fake_queue: FakeQueue) -> None:
    args = ["backfill-usage", "--from", "2026-11-02", "--to", "2026-11-01"]
    result = CliRunner().invoke(cli, args, obj=lambda: fake_queue.client)

    assert result.exit_code == 1
    assert "Error: backfill range ends before it starts" in result.output
    assert fake_queue.backend.log == []


def test_cli_backfill_refuses_a_bad_date() -> None:
    result = CliRunner().invoke(cli, ["backfill-usage", "--from", "2026-11-31", "--to", "2026-12-01"], obj=lambda: None)

    assert result.exit_code == 2
    assert "'2026-11-31' does not match the format '%Y-%m-%d'" in result.output


@pytest.mark.redis
def test_cli_backfill_enqueues_on_the_redis_of_the_settings(redis_url: str, conn: redis.Redis, tmp_path: Path) -> None:
    # Only the usage module and its queue: the test does not depend on the rest of the catalog.
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "queues.yaml").write_text("queues:\n  usage: {concurrency: 2}\n")
    settings = Settings(redis_url=redis_url, jobs="jobs.usage", specs=tmp_path / "specs")
    env = {"FORGEJOBS_REDIS_URL": redis_url, "FORGEJOBS_JOBS": settings.jobs, "FORGEJOBS_SPECS": str(settings.specs)}

    result = CliRunner().invoke(cli, ["backfill-usage", "--from", "2026-11-26", "--to", "2026-11-27"], env=env)

    assert result.exit_code == 0, result.output
    ids = [line.split()[1] for line in result.output.splitlines() if line.startswith("usage.")]
    assert len(ids) == 3
    reader = Client(RedisBackend(conn), Registry.load(settings))
    assert [reader.backend.state(job_id).status for job_id in ids] == [Status.QUEUED] * 3


def test_cli_init_db_creates_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'catalog.db'}"
    result = CliRunner().invoke(cli, ["init-db"], env={"FORGEJOBS_CATALOG_DATABASE_URL": url})

    assert result.exit_code == 0, result.output
    assert "tables ready at sqlite:///" in result.output
    engine = sa.create_engine(url)
    try:
        assert {"usage_events", "usage_aggregates", "files", "audit_log", "activity_feed"} <= set(
            sa.inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
