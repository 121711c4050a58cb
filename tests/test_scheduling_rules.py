"""The firing rules of forgejobs.scheduling stated one by one: what sync stores and logs, which ticks a
pass fires after a long stop, what a skipped or a repeated tick leaves in the store, the operator's log
lines, and run_now. On the fake queue with the in-memory repeat store (no Redis)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from forgejobs import Context, Job, Registry
from forgejobs.schedule import Schedule, ScheduleSpec, every
from forgejobs.scheduling import LastRun, MemoryRepeatStore, Repeater, ticks_to_fire
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue

QUEUES = {"files": QueueSpec(), "usage": QueueSpec()}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


class Sweep(Job, queue="files", every=timedelta(minutes=10)):
    def perform(self, ctx: Context[None]) -> None:
        return None


class Stamp(Job, queue="usage", every=timedelta(hours=1)):
    def perform(self, ctx: Context[None]) -> str | None:
        return ctx.scheduled_for.isoformat() if ctx.scheduled_for else None


def scheduler_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "forgejobs.scheduler" and r.levelno == level]


@pytest.fixture
def both() -> Iterator[FakeQueue]:
    with FakeQueue(Registry([Sweep, Stamp], Specs(queues=QUEUES))) as queue:
        yield queue


# -- sync ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kept", "added"), [(Sweep, Stamp), (Stamp, Sweep)])
def test_sync_adds_a_new_schedule_whatever_the_unchanged_ones_around_it(kept: type[Job], added: type[Job]) -> None:
    store = MemoryRepeatStore()
    with FakeQueue(Registry([kept], Specs(queues=QUEUES))) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))
    with FakeQueue(Registry([Sweep, Stamp], Specs(queues=QUEUES))) as queue:
        report = Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 2))
    assert (report.added, report.changed, report.removed) == ([added.job_name()], [], [])
    assert sorted(store.entries()) == ["files.sweep", "usage.stamp"]


def test_sync_logs_what_it_added_changed_and_removed_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.scheduler")
    store = MemoryRepeatStore()
    with FakeQueue(Registry([Sweep, Stamp], Specs(queues=QUEUES))) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))
    assert scheduler_lines(caplog) == ["schedules added: files.sweep, usage.stamp"]

    caplog.clear()
    slower = ScheduleSpec(job="usage.stamp", every=timedelta(hours=2))
    with FakeQueue(Registry([Stamp], Specs(queues=QUEUES, schedules={"usage.stamp": slower}))) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 2))
    assert scheduler_lines(caplog) == ["schedules changed: usage.stamp", "schedules removed: files.sweep"]

    caplog.clear()
    with FakeQueue(Registry([Stamp], Specs(queues=QUEUES, schedules={"usage.stamp": slower}))) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 3))
    assert scheduler_lines(caplog) == []  # nothing to say when nothing changed


def test_sync_and_run_once_without_a_time_use_the_clock_now(both: FakeQueue) -> None:
    repeater = Repeater(both.client, MemoryRepeatStore())
    before = datetime.now(UTC)
    repeater.sync()
    stored = repeater.store.entries()["files.sweep"].next_at
    assert before < stored <= before + timedelta(minutes=10)

    repeater.store.set_next("files.sweep", stored)  # unchanged: set_next only moves forward
    repeater.store.upsert(repeater.schedules["files.sweep"], utc(2026, 1, 1, 0, 10))  # long due
    (fired,) = repeater.run_once()
    assert fired.id.startswith("files_sweep-")
    assert repeater.store.entries()["files.sweep"].next_at > before  # the next tick after the clock's now


# -- which ticks a pass fires after a long stop ------------------------------------------------------------


def test_catch_up_all_after_more_ticks_than_are_walked_fires_the_newest_max_catch_up() -> None:
    # more than the misfire grace holds (60 ticks of 1 s): the newest 200 come from further back
    schedule = Schedule(every=1, catch_up="all", max_catch_up=200, overlap="allow")
    due = utc(2026, 1, 1)
    now = due + timedelta(seconds=20_000)  # 20,001 due ticks, twice what a pass walks from the first
    fired, dropped = ticks_to_fire(schedule, due, now)
    assert fired == [now - timedelta(seconds=s) for s in range(199, -1, -1)]
    assert 10_000 <= dropped <= 20_001 - 200  # a lower bound past the walked ticks, never more than were due


def test_catch_up_latest_after_more_ticks_than_are_walked_fires_only_the_newest() -> None:
    schedule = every(1, catch_up="latest")
    due = utc(2026, 1, 1)
    now = due + timedelta(seconds=20_000)
    fired, dropped = ticks_to_fire(schedule, due, now)
    assert fired == [now]
    assert 10_000 <= dropped <= 20_000


@pytest.mark.parametrize(("policy", "fired_from", "dropped"), [("all", 5, 5), ("latest", 10_004, 10_004)])
def test_a_few_ticks_past_the_walked_ones_are_all_counted(policy: str, fired_from: int, dropped: int) -> None:
    # 10,005 due ticks: the 10,000 walked from the first and the 5 after them, so the count is exact
    schedule = Schedule(every=1, catch_up=policy, max_catch_up=10_000, overlap="allow")
    due = utc(2026, 1, 1)
    now = due + timedelta(seconds=10_004)
    fired, dropped_count = ticks_to_fire(schedule, due, now)
    assert fired == [due + timedelta(seconds=s) for s in range(fired_from, 10_005)]
    assert dropped_count == dropped


def test_exactly_as_many_ticks_as_are_walked_are_all_fired_and_none_counted_as_dropped() -> None:
    schedule = Schedule(every=1, catch_up="all", max_catch_up=10_000, overlap="allow")
    due = utc(2026, 1, 1)
    fired, dropped = ticks_to_fire(schedule, due, due + timedelta(seconds=9_999))
    assert (len(fired), fired[0], fired[-1], dropped) == (10_000, due, due + timedelta(seconds=9_999), 0)


@pytest.mark.parametrize(("policy", "fired_count"), [("latest", 1), ("all", 100)])
def test_the_dropped_count_past_the_walked_ticks_never_exceeds_the_ticks_that_were_due(
    policy: str, fired_count: int
) -> None:
    # 10,100 due ticks: more past the walked 10,000 than the misfire window (60 ticks) holds
    schedule = Schedule(every=1, catch_up=policy, overlap="allow")
    due = utc(2026, 1, 1)
    now = due + timedelta(seconds=10_099)
    fired, dropped = ticks_to_fire(schedule, due, now)
    assert fired == [now - timedelta(seconds=s) for s in range(fired_count - 1, -1, -1)]
    assert 10_000 - fired_count <= dropped <= 10_100 - fired_count


def test_catch_up_none_fires_a_tick_exactly_misfire_grace_late_and_not_one_later() -> None:
    schedule = Schedule(every=600, catch_up="none", misfire_grace=60)
    due = utc(2026, 1, 1, 0, 10)
    assert ticks_to_fire(schedule, due, due + timedelta(seconds=60)) == ([due], 0)
    assert ticks_to_fire(schedule, due, due + timedelta(seconds=61)) == ([], 1)


def test_a_pass_drops_a_repeat_no_longer_declared_and_still_fires_the_ones_after_it() -> None:
    store = MemoryRepeatStore()
    with FakeQueue(Registry([Sweep, Stamp], Specs(queues=QUEUES))) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))  # sweep due 00:10, stamp 01:00
    with FakeQueue(Registry([Stamp], Specs(queues=QUEUES))) as queue:  # Sweep's schedule is gone
        fired = Repeater(queue.client, store).run_once(utc(2026, 1, 1, 1, 30))
        assert [h.id for h in fired] == ["usage_stamp-20260101T010000Z"]
    assert sorted(store.entries()) == ["usage.stamp"]


def test_a_pass_that_drops_ticks_says_how_many_and_under_which_policy(
    both: FakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    repeater = Repeater(both.client, MemoryRepeatStore())
    repeater.sync(utc(2026, 1, 1, 0, 1))
    caplog.set_level(logging.WARNING, logger="forgejobs.scheduler")
    repeater.run_once(utc(2026, 1, 1, 0, 31))  # sweep's 00:10, 00:20 and 00:30 are due: latest runs one
    assert scheduler_lines(caplog, logging.WARNING) == ["files.sweep: 2 due tick(s) not run (catch_up=latest)"]


# -- one tick: fired once, skipped with a record, logged ----------------------------------------------------


def test_a_tick_already_fired_is_not_fired_again_and_its_record_stays(both: FakeQueue) -> None:
    repeater = Repeater(both.client, MemoryRepeatStore())
    sweep = repeater.schedules["files.sweep"]
    tick = utc(2026, 1, 1, 0, 10)
    first = repeater.fire(sweep, tick, tick)
    assert first is not None
    assert repeater.fire(sweep, tick, tick + timedelta(seconds=5)) is None  # a second scheduler, same pass
    assert repeater.store.last_run("files.sweep") == LastRun(tick=tick, job_id=first.id, fired_at=tick)


def test_a_skipped_tick_is_recorded_with_why_and_logged_in_full(
    both: FakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    repeater = Repeater(both.client, MemoryRepeatStore())
    repeater.sync(utc(2026, 1, 1, 0, 1))
    repeater.run_once(utc(2026, 1, 1, 0, 10))
    caplog.set_level(logging.WARNING, logger="forgejobs.scheduler")
    repeater.run_once(utc(2026, 1, 1, 0, 20))  # the 00:10 run never ran: overlap "skip"

    note = "skipped: previous run files_sweep-20260101T001000Z is still queued"
    assert scheduler_lines(caplog, logging.WARNING) == [f"files.sweep tick 2026-01-01T00:20:00+00:00 {note}"]
    assert repeater.store.last_run("files.sweep") == LastRun(
        tick=utc(2026, 1, 1, 0, 20), job_id="files_sweep-20260101T001000Z", fired_at=utc(2026, 1, 1, 0, 20), note=note
    )


def test_an_enqueued_tick_is_logged_once_not_by_a_scheduler_that_finds_it_there(
    both: FakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.scheduler")
    tick = utc(2026, 1, 1, 0, 10)
    first = Repeater(both.client, MemoryRepeatStore())
    late = Repeater(both.client, MemoryRepeatStore())  # its own store: it does not know the tick fired
    assert first.fire(first.schedules["files.sweep"], tick, tick) is not None
    line = "files.sweep: enqueued tick 2026-01-01T00:10:00+00:00 as files_sweep-20260101T001000Z"
    assert scheduler_lines(caplog) == [line]  # said by the scheduler that enqueued it
    again = late.fire(late.schedules["files.sweep"], tick, tick)
    assert again is not None and again.existing
    assert scheduler_lines(caplog) == [line]  # and not again by one that found it there


# -- run_now ------------------------------------------------------------------------------------------


def test_run_now_of_an_unknown_schedule_lists_the_known_ones(both: FakeQueue) -> None:
    with pytest.raises(KeyError) as raised:
        Repeater(both.client, MemoryRepeatStore()).run_now("nope")
    assert raised.value.args[0] == "no schedule named 'nope' (known: files.sweep, usage.stamp)"
    with FakeQueue(Registry([], Specs(queues=QUEUES))) as empty, pytest.raises(KeyError) as raised:
        Repeater(empty.client, MemoryRepeatStore()).run_now("nope")
    assert raised.value.args[0] == "no schedule named 'nope' (known: none)"


def test_a_manual_run_is_scheduled_for_the_moment_it_was_asked(both: FakeQueue) -> None:
    now = utc(2026, 1, 1, 12, 34, 56)
    handle = Repeater(both.client, MemoryRepeatStore()).run_now("usage.stamp", now)
    both.drain()
    assert handle.result() == now.isoformat()


# -- the in-memory store ------------------------------------------------------------------------------


def test_the_memory_store_ignores_unknown_names_and_keeps_the_fingerprint_as_it_moves_on(both: FakeQueue) -> None:
    store = MemoryRepeatStore()
    store.remove("nope")
    store.set_next("nope", utc(2026, 1, 1))
    assert store.entries() == {}

    repeater = Repeater(both.client, store)
    repeater.sync(utc(2026, 1, 1, 0, 1))
    repeater.run_once(utc(2026, 1, 1, 0, 10))  # moves the next tick on
    assert store.entries()["files.sweep"].next_at == utc(2026, 1, 1, 0, 20)
    again = repeater.sync(utc(2026, 1, 1, 0, 11))
    assert (again.added, again.changed, again.removed) == ([], [], [])  # still the same declaration
