"""The fake clock: firing a repeat's tick at a chosen time, job timeouts enforced on it, and results
stored through the same JSON a worker stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from forgejobs import Context, Job, Reason, Status, backoff
from forgejobs.errors import JobTimeout
from forgejobs.schedule import cron
from forgejobs.testing import FakeQueue
from jobs.resources import CatalogSettings, Resources, build
from jobs.usage import AggregateDailyUsage, UsageSummary


class Heartbeat(Job, queue="clock", attempts=1, every=timedelta(minutes=15)):
    def perform(self, ctx: Context) -> str:
        assert ctx.scheduled_for is not None
        return ctx.scheduled_for.isoformat()


class Report(Job, queue="clock", attempts=1, schedule=cron("0 6 * * 1", tz="Europe/Paris")):
    """Mondays at 06:00 Paris time."""

    def perform(self, ctx: Context) -> None: ...


class Unscheduled(Job, queue="clock"):
    def perform(self, ctx: Context) -> None: ...


@pytest.fixture
def resources(tmp_path: Path) -> Iterator[Resources]:
    built = build(
        catalog=CatalogSettings(
            database_url=f"sqlite:///{tmp_path / 'catalog.db'}",
            outbox_dir=tmp_path / "outbox",
            storage_dir=tmp_path / "storage",
        )
    )
    yield built
    built.close()


# -- ticks ------------------------------------------------------------------------------------------


def test_a_tick_of_a_spec_schedule_enqueues_its_job_for_that_tick(fake_queue: FakeQueue, resources: Resources) -> None:
    fake_queue.resources = resources
    midnight = datetime(2030, 3, 15, tzinfo=UTC)

    handle = fake_queue.tick("usage.aggregate-daily-usage", at=midnight)

    assert handle is not None and handle.id == "usage_aggregate-daily-usage-20300315T000000Z"
    (entry,) = fake_queue.all_enqueued(job=AggregateDailyUsage)
    assert (entry.scheduled_for, fake_queue.clock.now()) == (midnight, midnight)
    fake_queue.drain()
    summary = handle.result()
    assert isinstance(summary, UsageSummary)
    assert summary.period_start == date(2030, 3, 14)  # the day before its tick


def test_a_tick_of_a_job_class_schedule_runs_with_the_tick_as_scheduled_for(fake_queue: FakeQueue) -> None:
    tick = datetime(2030, 1, 1, 0, 45, tzinfo=UTC)

    with fake_queue.inline():
        handle = fake_queue.tick(Heartbeat, at=tick)

    assert handle is not None and handle.result() == "2030-01-01T00:45:00+00:00"


def test_a_tick_defaults_to_the_next_one_after_now(fake_queue: FakeQueue) -> None:
    fake_queue.clock.move_to(datetime(2030, 1, 1, 0, 20, tzinfo=UTC))

    fake_queue.tick(Heartbeat)

    (entry,) = fake_queue.all_enqueued(job=Heartbeat)
    assert entry.scheduled_for == datetime(2030, 1, 1, 0, 30, tzinfo=UTC)


def test_a_cron_tick_is_read_in_its_time_zone(fake_queue: FakeQueue) -> None:
    monday_six_in_paris = datetime(2030, 1, 7, 5, tzinfo=UTC)  # 06:00 CET

    assert fake_queue.tick(Report, at=monday_six_in_paris) is not None


def test_a_time_that_is_not_a_tick_is_refused_naming_the_next_tick(fake_queue: FakeQueue) -> None:
    with pytest.raises(
        ValueError,
        match=r"no tick at 2030-01-07T06:00:00\+00:00; its next tick after that is 2030-01-14T05:00:00\+00:00",
    ):
        fake_queue.tick(Report, at=datetime(2030, 1, 7, 6, tzinfo=UTC))

    assert fake_queue.all_enqueued() == []


def test_the_same_tick_fires_once(fake_queue: FakeQueue) -> None:
    tick = datetime(2030, 1, 1, 1, tzinfo=UTC)

    first = fake_queue.tick(Heartbeat, at=tick)
    again = fake_queue.tick(Heartbeat, at=tick)

    assert first is not None and again is None
    assert len(fake_queue.all_enqueued()) == 1


def test_a_tick_is_skipped_while_the_previous_run_is_pending(fake_queue: FakeQueue) -> None:
    start = datetime(2030, 1, 1, 1, tzinfo=UTC)

    assert fake_queue.tick(Heartbeat, at=start) is not None
    assert fake_queue.tick(Heartbeat, at=start + timedelta(minutes=15)) is None  # overlap "skip"
    fake_queue.drain()
    assert fake_queue.tick(Heartbeat, at=start + timedelta(minutes=30)) is not None


def test_an_unknown_schedule_is_refused_with_the_known_ones(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValueError, match=r"no schedule named 'usage.hourly' \(known: .*usage.aggregate-daily-usage"):
        fake_queue.tick("usage.hourly")


def test_a_job_without_a_schedule_cannot_tick(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValueError, match="Unscheduled declares no schedule"):
        fake_queue.tick(Unscheduled)


def test_a_naive_tick_time_is_refused(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fake_queue.tick(Heartbeat, at=datetime(2030, 1, 1, 1))


# -- timeouts ---------------------------------------------------------------------------------------


class Crawl(Job, queue="clock", attempts=2, backoff=backoff.fixed(10), timeout=timedelta(minutes=1)):
    """Takes `minutes` of fake time, a minute at a time; its timeout is one minute."""

    minutes: int

    def perform(self, ctx: Context) -> int:
        for _ in range(self.minutes):
            ctx.resources.sleep(30)
            ctx.resources.sleep(30)
        return self.minutes


def test_a_handler_that_runs_past_its_timeout_on_the_fake_clock_gets_job_timeout(fake_queue: FakeQueue) -> None:
    fake_queue.resources = fake_queue.clock
    start = fake_queue.clock.now()
    handle = Crawl.enqueue(minutes=5)

    result = fake_queue.drain(raise_on_failure=False)

    assert (result.failed, result.retried) == (1, 1)
    (dead,) = fake_queue.dead_letters()
    assert (dead.id, dead.reason) == (handle.id, Reason.EXHAUSTED)
    assert [a.error for a in dead.attempts] == ["JobTimeout: the job ran longer than its timeout (60s)"] * 2
    # each attempt was stopped at its deadline: 60 s, the 10 s backoff, 60 s
    assert fake_queue.clock.now() - start == timedelta(seconds=130)


def test_a_handler_within_its_timeout_is_left_alone(fake_queue: FakeQueue) -> None:
    fake_queue.resources = fake_queue.clock

    handle = Crawl.enqueue(minutes=1)  # exactly at the deadline is not past it
    fake_queue.drain()

    assert handle.result() == 1


def test_perform_enforces_the_timeout_on_the_fake_clock(fake_queue: FakeQueue) -> None:
    fake_queue.resources = fake_queue.clock

    with pytest.raises(JobTimeout, match=r"ran longer than its timeout \(60s\)"):
        fake_queue.perform(Crawl, minutes=2)

    assert fake_queue.perform(Crawl, minutes=1) == 1


def test_a_clock_moved_past_the_deadline_by_another_thread_fails_the_job_when_it_returns() -> None:
    queue = FakeQueue()
    start = queue.clock.now()

    with pytest.raises(JobTimeout), queue.clock.timeout_guard(5):
        mover = threading.Thread(target=queue.clock.advance, args=(6,))  # no deadline of its own: no raise there
        mover.start()
        mover.join()

    assert queue.clock.now() == start + timedelta(seconds=6)


# -- results ----------------------------------------------------------------------------------------------


class Untyped(Job, queue="clock", attempts=1):
    def perform(self, ctx: Context):  # type: ignore[no-untyped-def]
        return {1: ("a", "b")}


class Unstorable(Job, queue="clock", attempts=3):
    def perform(self, ctx: Context) -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC)


def test_a_result_is_stored_as_the_json_a_worker_stores(fake_queue: FakeQueue) -> None:
    handle = Untyped.enqueue()

    fake_queue.drain()

    assert handle.result() == {"1": ["a", "b"]}  # JSON has string keys and no tuples


def test_a_result_that_is_not_json_fails_as_in_a_worker(fake_queue: FakeQueue) -> None:
    handle = Unstorable.enqueue()

    result = fake_queue.drain(raise_on_failure=False)

    assert (result.failed, result.retried) == (1, 0)  # not retried: the same code would return the same value
    (dead,) = fake_queue.dead_letters()
    assert dead.reason is Reason.BAD_RESULT
    assert "perform returned datetime, which is not JSON-serialisable" in dead.error
    assert handle.status() is Status.FAILED
