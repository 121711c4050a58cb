"""Cron patterns across daylight-saving changes: a repeated hour, a skipped hour. No Redis here."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from forgejobs import Context, Job, Registry
from forgejobs.schedule import ScheduleSpec, cron, every
from forgejobs.scheduling import MemoryRepeatStore, Repeater
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def day_of(pattern: str, tz: str, start: datetime, days: int = 3) -> list[datetime]:
    return list(cron(pattern, tz=tz).ticks(start, start + timedelta(days=days)))


# -- a fixed time of day (minute and hour are numbers): once a day, whatever the clock does ----------


def test_berlin_fall_back_fires_the_repeated_time_once_on_its_first_occurrence() -> None:
    # 25 Oct 2026: 03:00 CEST -> 02:00 CET, so 02:30 happens at 00:30Z and again at 01:30Z
    assert day_of("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24)) == [
        utc(2026, 10, 24, 0, 30),  # CEST
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST) only
        utc(2026, 10, 26, 1, 30),  # CET
    ]
    # asked from inside the repeated hour (after the first 02:30), the next tick is the next day's
    assert cron("30 2 * * *", tz="Europe/Berlin").next_after(utc(2026, 10, 25, 1)) == utc(2026, 10, 26, 1, 30)


def test_berlin_spring_forward_fires_the_skipped_time_once_at_three() -> None:
    # 29 Mar 2026: 02:00 CET -> 03:00 CEST, so 02:30 does not exist; it fires at 03:00 CEST (01:00Z)
    assert day_of("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28)) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]
    # two times in the gap, or one in it and 03:00 itself: still one tick, at 03:00
    for pattern in ("0,30 2 * * *", "0 2,3 * * *"):
        ticks = cron(pattern, tz="Europe/Berlin").ticks(utc(2026, 3, 29), utc(2026, 3, 29, 12))
        assert list(ticks) == [utc(2026, 3, 29, 1, 0)], pattern


def test_new_york_fall_back_fires_the_repeated_time_once() -> None:
    # 1 Nov 2026: 02:00 EDT -> 01:00 EST, so 01:30 happens at 05:30Z and 06:30Z
    assert day_of("30 1 * * *", "America/New_York", utc(2026, 10, 31)) == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # EDT, the first occurrence
        utc(2026, 11, 2, 6, 30),
    ]


def test_new_york_spring_forward_fires_the_skipped_time_once_at_three() -> None:
    # 8 Mar 2026: 02:00 EST -> 03:00 EDT; 02:30 fires at 03:00 EDT (07:00Z)
    assert day_of("30 2 * * *", "America/New_York", utc(2026, 3, 7)) == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
    ]


# -- a wildcard minute or hour: by the clock, as cron does, so an hourly repeat stays hourly ---------


def test_wildcard_patterns_keep_their_pace_through_the_repeated_hour() -> None:
    hourly = day_of("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22), days=1)
    assert hourly == [utc(2026, 10, 24, 23) + timedelta(hours=h) for h in range(24)]
    half_hourly = day_of("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 4), days=1)
    assert half_hourly[:6] == [utc(2026, 11, 1, 4, 30) + timedelta(minutes=30 * i) for i in range(6)]
    assert len(half_hourly) == len(set(half_hourly)) == 48


def test_wildcard_patterns_skip_times_that_do_not_exist() -> None:
    # 02:30 does not exist in Berlin on 29 Mar 2026: 01:30 CET (00:30Z), then 03:30 CEST (01:30Z)
    assert day_of("30 * * * *", "Europe/Berlin", utc(2026, 3, 29), days=1)[:3] == [
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2, 30),
    ]


# -- through the repeater: one job on each change day -------------------------------------------------


class Nightly(Job, queue="ops"):
    def perform(self, ctx: Context) -> None: ...


@pytest.mark.parametrize(
    ("pattern", "tz", "day"),
    [
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29)),
        ("30 1 * * *", "America/New_York", utc(2026, 11, 1, 4)),
        ("30 2 * * *", "America/New_York", utc(2026, 3, 8, 4)),
    ],
)
def test_a_scheduler_running_through_a_change_day_enqueues_one_job(pattern: str, tz: str, day: datetime) -> None:
    spec = ScheduleSpec(job="ops.nightly", cron=pattern, tz=tz)
    registry = Registry([Nightly], Specs(queues={"ops": QueueSpec()}, schedules={"nightly": spec}))
    with FakeQueue(registry) as queue:
        repeater = Repeater(queue.client, MemoryRepeatStore())
        repeater.sync(day - timedelta(minutes=1))
        for minute in range(0, 24 * 60, 5):  # a pass every 5 minutes for a day
            repeater.run_once(day + timedelta(minutes=minute))
            queue.drain()
        assert len([p for p in queue.backend.log if p.job_id]) == 1


@pytest.mark.parametrize("pattern", ["*/7 * * * *", "15,45 * * * *", "*/20 1-3 * * *", "30 2 * * *", "0,40 1,2 * * *"])
@pytest.mark.parametrize(
    ("tz", "start"), [("Europe/Berlin", utc(2026, 10, 24, 22)), ("America/New_York", utc(2026, 3, 8, 4))]
)
def test_next_after_from_any_minute_of_a_change_day_agrees_with_the_tick_list(
    pattern: str, tz: str, start: datetime
) -> None:
    from zoneinfo import ZoneInfo

    from croniter import croniter

    schedule = cron(pattern, tz=tz)
    ticks = list(schedule.ticks(start, start + timedelta(days=2)))
    assert ticks == sorted(set(ticks))
    if not schedule.fixed_time:  # by the clock: exactly the minutes whose wall-clock time matches
        minutes = [start + timedelta(minutes=m) for m in range(1, 8 * 60 + 1)]
        wall = [m.astimezone(ZoneInfo(tz)).replace(tzinfo=None) for m in minutes]
        assert [t for t in ticks if t <= minutes[-1]] == [
            m for m, w in zip(minutes, wall) if croniter.match(pattern, w)
        ]
    for minute in range(0, 7 * 60):
        moment = start + timedelta(minutes=minute, seconds=30 * (minute % 2))
        assert schedule.next_after(moment) == next(t for t in ticks if t > moment)


@pytest.mark.parametrize("minute", [1, 7, 10, 23, 41, 59])
def test_any_skipped_minute_of_a_fixed_time_fires_exactly_when_the_clock_jumps(minute: int) -> None:
    # 29 Mar 2026, Berlin: 02:MM does not exist; the tick is the change itself, 03:00:00 CEST (01:00:00Z)
    tick = cron(f"{minute} 2 * * *", tz="Europe/Berlin").next_after(utc(2026, 3, 29, 0, 0, 5))
    assert tick == utc(2026, 3, 29, 1)


def test_ticks_are_in_utc_whatever_the_process_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both passes of a repeated hour, and a plain interval, come back as UTC datetimes (what the scheduler
    stores and `forgejobs schedules` prints), also when the process's own zone is another."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        repeated = list(cron("*/30 * * * *", tz="Europe/Berlin").ticks(utc(2026, 10, 25, 0, 10), utc(2026, 10, 25, 2)))
        ticks = [*repeated, every(90).next_after(utc(2026, 1, 1))]
        assert [t.utcoffset() for t in ticks] == [timedelta(0)] * len(ticks)
        assert all(t.tzinfo is UTC for t in ticks)
        assert repeated[:3] == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 30)]
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("tz", ["Europe/London", "Atlantic/Azores"])
def test_a_wildcard_pattern_asked_inside_a_repeated_hour_keeps_its_pace_where_an_offset_is_zero(tz: str) -> None:
    # 25 Oct 2026, 01:00Z: London goes from +1 to 0, the Azores from 0 to -1; one of the two passes of the
    # repeated hour has a zero offset, which must count as an offset like any other
    ticks = cron("*/15 * * * *", tz=tz).upcoming(utc(2026, 10, 25, 0, 20), 6)
    assert ticks == [utc(2026, 10, 25, h, m) for h, m in ((0, 30), (0, 45), (1, 0), (1, 15), (1, 30), (1, 45))]
