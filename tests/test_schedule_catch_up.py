"""Catch-up and misfire grace: which due ticks a pass enqueues, per `catch_up` policy. No Redis here."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forgejobs import Context, Job, Registry, Settings
from forgejobs.schedule import ScheduleSpec, every
from forgejobs.scheduling import MemoryRepeatStore, Repeater, ticks_to_fire
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue

ROOT = Path(__file__).resolve().parent.parent
DAILY = "usage.aggregate-daily-usage"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- the catalog's daily usage schedule: catch_up all, overlap skip (the default) ----------------


@pytest.fixture
def catalog() -> Iterator[tuple[FakeQueue, Repeater]]:
    registry = Registry.load(Settings(jobs="jobs", specs=ROOT / "specs"))
    with FakeQueue(registry) as queue:
        yield queue, Repeater(queue.client, MemoryRepeatStore())


def daily_ids(queue: FakeQueue) -> list[str]:
    return [p.job_id for p in queue.backend.log if p.job_id and p.job_id.startswith("usage_aggregate-daily-usage-")]


def test_catch_up_all_enqueues_every_missed_day_under_overlap_skip(catalog: tuple[FakeQueue, Repeater]) -> None:
    queue, repeater = catalog
    schedule = repeater.schedules[DAILY].schedule
    assert (schedule.catch_up, schedule.overlap, schedule.max_catch_up) == ("all", "skip", 31)
    repeater.sync(utc(2026, 11, 26, 12))  # then the scheduler is down until just after midnight on the 30th
    handles = repeater.run_once(utc(2026, 11, 30, 0, 0, 30))
    expected = [f"usage_aggregate-daily-usage-202611{day}T000000Z" for day in (27, 28, 29, 30)]
    assert daily_ids(queue) == expected
    daily = [h for h in handles if h.id.startswith("usage_aggregate-daily-usage-")]
    assert [h.id for h in daily] == expected
    assert [j.day for j in queue.enqueued(repeater.schedules[DAILY].job_type)] == [None] * 4  # each reads its tick
    last = repeater.store.last_run(DAILY)
    assert last is not None and last.tick == utc(2026, 11, 30) and last.job_id == expected[-1]
    # the next pass does not repeat any of them
    repeater.run_once(utc(2026, 11, 30, 0, 1))
    assert daily_ids(queue) == expected


def test_catch_up_all_is_bounded_by_max_catch_up_keeping_the_newest(catalog: tuple[FakeQueue, Repeater]) -> None:
    queue, repeater = catalog
    repeater.sync(utc(2026, 9, 1, 12))  # down for about three months: 90 days missed, at most 31 run
    repeater.run_once(utc(2026, 11, 30, 0, 0, 30))
    ids = daily_ids(queue)
    assert len(ids) == 31 and len(set(ids)) == 31
    assert ids[0] == "usage_aggregate-daily-usage-20261031T000000Z"
    assert ids[-1] == "usage_aggregate-daily-usage-20261130T000000Z"


class Sweep(Job, queue="files", every=timedelta(seconds=5)):
    def perform(self, ctx: Context) -> str | None:
        return ctx.scheduled_for.isoformat() if ctx.scheduled_for else None


QUEUES = {"files": QueueSpec()}


def sweep_repeater(**policy: object) -> tuple[FakeQueue, Repeater]:
    spec = ScheduleSpec(job="files.sweep", every=timedelta(seconds=5), **policy)  # type: ignore[arg-type]
    queue = FakeQueue(Registry([Sweep], Specs(queues=QUEUES, schedules={"files.sweep": spec})))
    return queue, Repeater(queue.client, MemoryRepeatStore())


def test_missed_ticks_under_all_are_not_skipped_as_overlaps_of_an_earlier_pending_run() -> None:
    queue, repeater = sweep_repeater(catch_up="all", misfire_grace=timedelta(seconds=10))
    with queue:
        repeater.sync(utc(2026, 1, 1, 0, 0, 1))
        repeater.run_once(utc(2026, 1, 1, 0, 0, 5))  # the 00:00:05 run, never worked (no worker)
        # down from 00:00:06 to 00:00:30: 00:00:10 .. 00:00:15 are missed, 00:00:20 .. 00:00:30 are on time
        repeater.run_once(utc(2026, 1, 1, 0, 0, 30))
        stamps = [p.job_id.rsplit("T", 1)[1] for p in queue.backend.log if p.job_id]  # type: ignore[union-attr]
        # the missed ones are separate periods and run; the on-time ones overlap the pending 00:00:05 run
        assert stamps == ["000005Z", "000010Z", "000015Z"]


# -- misfire grace: the three policies agree on what is late and what is missed ----------------------

FIVE_SECONDS = every(timedelta(seconds=5))


def test_catch_up_none_runs_only_the_latest_tick_within_the_grace() -> None:
    schedule = FIVE_SECONDS.model_copy(update={"catch_up": "none"})
    # a 31 s stop of an every-5-s repeat: six ticks, all younger than the 60 s grace
    fired, dropped = ticks_to_fire(schedule, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 0, 31))
    assert (fired, dropped) == ([utc(2026, 1, 1, 0, 0, 30)], 5)


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        ("none", [utc(2026, 1, 1, 0, 0, 30)]),
        ("latest", [utc(2026, 1, 1, 0, 0, 30)]),
        ("all", [utc(2026, 1, 1, 0, 0, s) for s in (5, 10, 15, 20, 25, 30)]),
    ],
)
def test_ticks_within_the_grace_fire_once_unless_catch_up_is_all(policy: str, fired: list[datetime]) -> None:
    queue, repeater = sweep_repeater(catch_up=policy)
    with queue:
        repeater.sync(utc(2026, 1, 1, 0, 0, 1))
        handles = repeater.run_once(utc(2026, 1, 1, 0, 0, 31))
        assert [h.id for h in handles] == [f"files_sweep-20260101T0000{t.second:02d}Z" for t in fired]


@pytest.mark.parametrize(
    ("policy", "fired", "dropped"),
    [
        # none: nothing older than the grace, and of the ticks within it the latest only
        ("none", [utc(2026, 1, 1, 0, 2, 0)], 23),
        # latest: one run, the most recent due tick
        ("latest", [utc(2026, 1, 1, 0, 2, 0)], 23),
        # all: every due tick, missed or within the grace, oldest first, at most max_catch_up (the newest)
        ("all", [utc(2026, 1, 1, 0, 0, 5) + timedelta(seconds=5 * i) for i in range(5, 24)], 5),
    ],
)
def test_missed_and_late_ticks_together(policy: str, fired: list[datetime], dropped: int) -> None:
    schedule = FIVE_SECONDS.model_copy(update={"catch_up": policy, "max_catch_up": 19})
    # due since 00:00:05, now 00:02:01: 00:00:05 .. 00:01:00 missed (12), 00:01:05 .. 00:02:00 within the grace (12)
    assert ticks_to_fire(schedule, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 2, 1)) == (fired, dropped)


def test_latest_runs_the_latest_missed_tick_and_none_runs_nothing_when_no_tick_is_within_the_grace() -> None:
    # due since 00:00:05, now 00:00:58 with a 2 s grace: 00:00:05 .. 00:00:55 are all missed
    latest = FIVE_SECONDS.model_copy(update={"catch_up": "latest", "misfire_grace": timedelta(seconds=2)})
    assert ticks_to_fire(latest, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 0, 58)) == (
        [utc(2026, 1, 1, 0, 0, 55)],
        10,
    )
    none = latest.model_copy(update={"catch_up": "none"})
    assert ticks_to_fire(none, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 0, 58)) == ([], 11)


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        ("none", [utc(2026, 1, 2, 0, 0, 0)]),
        ("latest", [utc(2026, 1, 2, 0, 0, 0)]),
        ("all", [utc(2026, 1, 2, 0, 0, 0) - timedelta(seconds=5 * i) for i in (2, 1, 0)]),
    ],
)
def test_a_backlog_longer_than_the_tick_scan_still_fires_the_newest_ticks(policy: str, fired: list[datetime]) -> None:
    schedule = FIVE_SECONDS.model_copy(update={"catch_up": policy, "max_catch_up": 3})
    # down for a day: 17 280 ticks of every 5 s, more than the scheduler lists in one pass
    ticks, dropped = ticks_to_fire(schedule, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 2, 0, 0, 1))
    assert ticks == fired
    assert dropped >= 10_000 - len(fired)


def test_a_second_scheduler_joining_a_pass_midway_does_not_skip_its_ticks_as_overlaps() -> None:
    queue, first = sweep_repeater(catch_up="all")
    with queue:
        second = Repeater(queue.client, first.store)  # another process, same store and Redis
        first.sync(utc(2026, 1, 1, 0, 0, 1))
        now = utc(2026, 1, 1, 0, 0, 31)
        # the first scheduler's pass has enqueued 00:00:05 (still queued) when the second one's pass starts
        first.fire(first.schedules["files.sweep"], utc(2026, 1, 1, 0, 0, 5), now)
        second.run_once(now)
        first.run_once(now)
        stamps = [p.job_id.rsplit("T", 1)[1] for p in queue.backend.log if p.job_id]  # type: ignore[union-attr]
        assert sorted(set(stamps)) == [f"0000{s:02d}Z" for s in (5, 10, 15, 20, 25, 30)]
