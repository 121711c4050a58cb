"""Repeats: tick times, zones, policies and declarations. No Redis here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from forgejobs import Context, Job, OptionsError, Registry, RegistryError, SpecError, Status
from forgejobs.schedule import Schedule, ScheduleSpec, cron, every, tick_id
from forgejobs.scheduling import MemoryRepeatStore, Repeater, ticks_to_fire
from forgejobs.specs import QueueSpec, Specs, load_specs
from forgejobs.testing import FakeQueue


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def process_zone_new_york() -> Iterator[None]:
    """Run the test with the process's local zone far from both UTC and Berlin."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


# -- tick times -------------------------------------------------------------------------------


@pytest.mark.usefixtures("process_zone_new_york")
def test_a_berlin_cron_fires_at_nine_berlin_time_winter_and_summer_whatever_the_process_zone() -> None:
    nine_berlin = cron("0 9 * * *", tz="Europe/Berlin")
    assert nine_berlin.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 8)  # CET = UTC+1
    assert nine_berlin.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 7)  # CEST = UTC+2
    # across the spring change (29 March 2026): the same wall-clock time, one hour earlier in UTC
    assert list(nine_berlin.ticks(utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))) == [
        utc(2026, 3, 28, 8),
        utc(2026, 3, 29, 7),
        utc(2026, 3, 30, 7),
    ]


@pytest.mark.usefixtures("process_zone_new_york")
def test_rq_schedulers_own_tick_time_is_what_we_must_not_use() -> None:
    """The defect being avoided: rq-scheduler reads the pattern in the process's local zone."""
    from rq_scheduler.utils import get_next_scheduled_time

    theirs = get_next_scheduled_time("0 9 * * *", use_local_timezone=False).astimezone(UTC)
    assert theirs.hour not in (7, 8)  # 09:00 in New York is 13:00 or 14:00 UTC, not 09:00 Berlin
    ours = cron("0 9 * * *", tz="Europe/Berlin").next_after(datetime.now(UTC))
    assert ours.hour in (7, 8)


def test_interval_ticks_are_aligned_to_the_epoch_so_every_process_agrees() -> None:
    five_minutes = every(timedelta(minutes=5))
    assert five_minutes.next_after(utc(2026, 5, 1, 10, 2, 30)) == utc(2026, 5, 1, 10, 5)
    assert five_minutes.next_after(utc(2026, 5, 1, 10, 5)) == utc(2026, 5, 1, 10, 10)
    assert tick_id("usage.sweep", utc(2026, 5, 1, 10, 5)) == "usage_sweep-20260501T100500Z"


# -- declarations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 0 * *"}, "5-field cron"),
        ({"cron": "61 0 * * *"}, "5-field cron"),
        ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({}, "exactly one of 'cron' and 'every'"),
        ({"cron": "0 0 * * *", "every": 60}, "exactly one of 'cron' and 'every'"),
        ({"every": "500ms"}, "at least 1 second"),
        ({"every": 60, "catch_up": "some"}, "catch_up"),
    ],
)
def test_bad_schedules_are_refused_where_they_are_written(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Schedule(**kwargs)  # type: ignore[arg-type]


def test_every_and_schedule_on_one_class_is_an_error_naming_it() -> None:
    with pytest.raises(OptionsError, match="Both: give schedule= or every="):

        class Both(Job, queue="usage", schedule=cron("0 0 * * *"), every=60):  # type: ignore[call-arg]
            def perform(self, ctx: Context) -> None: ...


class Sweep(Job, queue="files", every=timedelta(minutes=10)):
    older_than_days: int = 7

    def perform(self, ctx: Context) -> int:
        return self.older_than_days


class Report(Job, queue="usage"):
    day: str

    def perform(self, ctx: Context) -> str:
        return self.day


QUEUES = {"files": QueueSpec(), "usage": QueueSpec()}


def spec_dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "queues.yaml").write_text("queues:\n  files: {}\n  usage: {}\n")
    (tmp_path / "schedules.yaml").write_text(text)
    return tmp_path


def test_class_and_spec_schedules_are_resolved_and_specs_win_on_a_shared_name(tmp_path: Path) -> None:
    specs = load_specs(
        spec_dir(
            tmp_path,
            "schedules:\n"
            "  files.sweep: {job: files.sweep, every: 1h, payload: {older_than_days: 30}}\n"
            "  monthly-report: {job: usage.report, cron: '0 1 1 * *', tz: Europe/Berlin, payload: {day: first}}\n",
        )
    )
    registry = Registry([Sweep, Report], specs)
    assert set(registry.schedules) == {"files.sweep", "monthly-report"}
    sweep = registry.schedules["files.sweep"]
    assert sweep.schedule.every == timedelta(hours=1) and sweep.payload == {"older_than_days": 30}
    assert sweep.source.endswith("schedules.yaml")
    assert registry.schedules["monthly-report"].schedule.tz == "Europe/Berlin"


def test_a_class_schedule_is_named_after_its_job() -> None:
    registry = Registry([Sweep], Specs(queues=QUEUES))
    (scheduled,) = registry.schedules.values()
    assert scheduled.name == "files.sweep" and scheduled.source == f"class {__name__}.Sweep"


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("schedules:\n  r: {job: usage.report, cron: '0 0 * * *', payload: {}}\n", "r.payload: does not validate"),
        ("schedules:\n  r: {job: usage.nope, cron: '0 0 * * *'}\n", "schedules.r.job: no job named 'usage.nope'"),
        ("schedules:\n  r: {job: usage.report, cron: '0 0 * * *', payload: {day: x}, zone: UTC}\n", "unknown key"),
        ("schedules:\n  r: {job: usage.report, cron: 'every day', payload: {day: x}}\n", "schedules.r.cron"),
    ],
)
def test_spec_schedule_errors_name_file_and_key(tmp_path: Path, yaml: str, message: str) -> None:
    with pytest.raises((SpecError, RegistryError)) as info:
        Registry([Sweep, Report], load_specs(spec_dir(tmp_path, yaml)))
    assert message in str(info.value) and "schedules.yaml" in str(info.value)


def test_a_class_schedule_whose_fields_have_no_defaults_is_refused() -> None:
    class Daily(Job, queue="usage", schedule=cron("0 0 * * *")):
        day: str

        def perform(self, ctx: Context) -> None: ...

    with pytest.raises(RegistryError, match="Daily: schedule: does not validate.*day: Field required"):
        Registry([Daily], Specs(queues=QUEUES))


# -- catch-up after downtime --------------------------------------------------------------------


HOURLY = every(timedelta(hours=1))


@pytest.mark.parametrize(
    ("policy", "fired", "dropped"),
    [("latest", [utc(2026, 1, 1, 5)], 4), ("none", [], 5), ("all", [utc(2026, 1, 1, h) for h in range(1, 6)], 0)],
)
def test_missed_ticks_follow_catch_up(policy: str, fired: list[datetime], dropped: int) -> None:
    schedule = HOURLY.model_copy(update={"catch_up": policy})
    # The scheduler was down from before 01:00 to 05:30: ticks 01:00 .. 05:00 were missed.
    assert ticks_to_fire(schedule, utc(2026, 1, 1, 1), utc(2026, 1, 1, 5, 30)) == (fired, dropped)


def test_catch_up_all_is_bounded() -> None:
    schedule = HOURLY.model_copy(update={"catch_up": "all", "max_catch_up": 3})
    ticks, dropped = ticks_to_fire(schedule, utc(2026, 1, 1, 0), utc(2026, 1, 2, 0))
    assert ticks == [utc(2026, 1, 1, 22), utc(2026, 1, 1, 23), utc(2026, 1, 2, 0)] and dropped == 22


def test_an_on_time_tick_fires_under_every_policy() -> None:
    for policy in ("latest", "none", "all"):
        schedule = HOURLY.model_copy(update={"catch_up": policy})
        assert ticks_to_fire(schedule, utc(2026, 1, 1, 5), utc(2026, 1, 1, 5, 0, 1)) == ([utc(2026, 1, 1, 5)], 0)


# -- firing, on the fake queue ------------------------------------------------------------------


@pytest.fixture
def sweep_repeater() -> Iterator[tuple[FakeQueue, Repeater]]:
    registry = Registry([Sweep], Specs(queues=QUEUES))
    with FakeQueue(registry) as queue:
        yield queue, Repeater(queue.client, MemoryRepeatStore())


def test_each_tick_fires_once_even_when_two_schedulers_run_it(sweep_repeater: tuple[FakeQueue, Repeater]) -> None:
    queue, first = sweep_repeater
    second = Repeater(queue.client, first.store)  # another process, same store and Redis
    first.sync(utc(2026, 1, 1, 0, 1))
    second.sync(utc(2026, 1, 1, 0, 1))
    tick = utc(2026, 1, 1, 0, 10)
    first.fire(first.schedules["files.sweep"], tick, tick)
    second.fire(second.schedules["files.sweep"], tick, tick)  # as if its pass overlapped
    assert [p.job_id for p in queue.backend.log] == ["files_sweep-20260101T001000Z"]


def test_overlap_skip_does_not_pile_up_ticks_while_no_worker_runs(
    sweep_repeater: tuple[FakeQueue, Repeater], caplog: pytest.LogCaptureFixture
) -> None:
    queue, repeater = sweep_repeater
    repeater.sync(utc(2026, 1, 1, 0, 1))
    for minute in (10, 20, 30):
        repeater.run_once(utc(2026, 1, 1, 0, minute))
    assert len(queue.enqueued(Sweep)) == 1  # the 00:20 and 00:30 ticks were skipped
    assert "skipped: previous run files_sweep-20260101T001000Z is still queued" in caplog.text
    queue.drain()
    repeater.run_once(utc(2026, 1, 1, 0, 40))
    assert len(queue.enqueued(Sweep)) == 2  # once the previous run finished, ticks fire again


def test_overlap_allow_enqueues_every_tick() -> None:
    allowing = ScheduleSpec(job="files.sweep", every=timedelta(minutes=10), overlap="allow")
    registry = Registry([Sweep], Specs(queues=QUEUES, schedules={"files.sweep": allowing}))
    with FakeQueue(registry) as queue:
        repeater = Repeater(queue.client, MemoryRepeatStore())
        repeater.sync(utc(2026, 1, 1, 0, 1))
        for minute in (10, 20, 30):
            repeater.run_once(utc(2026, 1, 1, 0, minute))
        assert len(queue.enqueued(Sweep)) == 3


def test_sync_is_an_idempotent_upsert_and_unregisters_what_is_gone(sweep_repeater: tuple[FakeQueue, Repeater]) -> None:
    queue, repeater = sweep_repeater
    report = repeater.sync(utc(2026, 1, 1, 0, 1))
    assert report.added == ["files.sweep"]
    before = repeater.store.entries()
    # a restart an hour later: nothing added, changed or dropped, and the stored next tick is kept
    again = repeater.sync(utc(2026, 1, 1, 1, 1))
    assert (again.added, again.changed, again.removed) == ([], [], [])
    assert repeater.store.entries() == before
    # the missed ticks are then caught up per policy (latest: one)
    repeater.run_once(utc(2026, 1, 1, 1, 1))
    assert [p.job_id for p in queue.backend.log] == ["files_sweep-20260101T010000Z"]
    # the schedule is removed from the code: the next sync unregisters it
    empty = Repeater(FakeQueue(Registry([], Specs(queues=QUEUES))).client, repeater.store)
    assert empty.sync(utc(2026, 1, 1, 2)).removed == ["files.sweep"]
    assert repeater.store.entries() == {}


def test_run_now_fires_outside_the_ticks(sweep_repeater: tuple[FakeQueue, Repeater]) -> None:
    queue, repeater = sweep_repeater
    handle = repeater.run_now("files.sweep", utc(2026, 1, 1, 12, 0, 0))
    assert handle.id.startswith("files_sweep-manual-20260101T120000")
    assert handle.status() is Status.QUEUED
    assert repeater.store.last_run("files.sweep").note == "manual"  # type: ignore[union-attr]
    with pytest.raises(KeyError, match="no schedule named 'nope'"):
        repeater.run_now("nope")


class Stamp(Job, queue="usage", every=timedelta(hours=1)):
    def perform(self, ctx: Context) -> str | None:
        return ctx.scheduled_for.isoformat() if ctx.scheduled_for else None


def test_each_caught_up_tick_knows_which_tick_it_is() -> None:
    caught_up = ScheduleSpec(job="usage.stamp", every=timedelta(hours=1), catch_up="all", overlap="allow")
    registry = Registry([Stamp], Specs(queues=QUEUES, schedules={"usage.stamp": caught_up}))
    with FakeQueue(registry) as queue:
        repeater = Repeater(queue.client, MemoryRepeatStore())
        repeater.sync(utc(2026, 1, 1, 0, 30))
        handles = repeater.run_once(utc(2026, 1, 1, 3, 30))  # down since 00:30: ticks 01:00, 02:00, 03:00
        queue.drain()
        assert [h.result() for h in handles] == [utc(2026, 1, 1, h).isoformat() for h in (1, 2, 3)]


# -- declarations keep every policy; sync follows changes and leaves disabled schedules out ------


@pytest.mark.parametrize("make", [lambda **kw: every(60, **kw), lambda **kw: cron("*/5 * * * *", **kw)])
def test_every_and_cron_keep_the_policies_they_are_given(make: Any) -> None:
    schedule = make(overlap="allow", catch_up="all", enabled=False)

    assert (schedule.overlap, schedule.catch_up, schedule.enabled) == ("allow", "all", False)
    assert (make().overlap, make().catch_up, make().enabled) == ("skip", "latest", True)


def sweep_every(minutes: int, **policies: Any) -> Registry:
    """Sweep's schedule as a spec would redeclare it: every `minutes`, with `policies`."""
    spec = ScheduleSpec(job="files.sweep", every=timedelta(minutes=minutes), **policies)
    return Registry([Sweep], Specs(queues=QUEUES, schedules={"files.sweep": spec}))


def test_a_changed_schedule_is_updated_in_the_store_from_its_first_tick_after_now() -> None:
    store = MemoryRepeatStore()
    with FakeQueue(sweep_every(10)) as queue:
        assert Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1)).added == ["files.sweep"]
    first = store.entries()["files.sweep"]
    assert first.next_at == utc(2026, 1, 1, 0, 10)

    with FakeQueue(sweep_every(7)) as queue:
        report = Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 2))

    assert (report.added, report.changed, report.removed) == ([], ["files.sweep"], [])
    changed = store.entries()["files.sweep"]
    assert changed.next_at == utc(2026, 1, 1, 0, 7)  # the new interval's grid, not the old stored tick
    assert changed.fingerprint != first.fingerprint


def test_a_disabled_schedule_is_not_stored_and_a_stored_one_is_removed_once_disabled() -> None:
    store = MemoryRepeatStore()
    with FakeQueue(sweep_every(10, enabled=False)) as queue:
        report = Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))
    assert (report.added, report.changed, report.removed) == ([], [], [])
    assert store.entries() == {}

    with FakeQueue(sweep_every(10)) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))
    with FakeQueue(sweep_every(10, enabled=False)) as queue:
        assert Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 2)).removed == ["files.sweep"]
    assert store.entries() == {}


def test_a_due_repeat_whose_schedule_was_disabled_since_is_dropped_without_firing() -> None:
    store = MemoryRepeatStore()
    with FakeQueue(sweep_every(10)) as queue:
        Repeater(queue.client, store).sync(utc(2026, 1, 1, 0, 1))
    with FakeQueue(sweep_every(10, enabled=False)) as queue:
        fired = Repeater(queue.client, store).run_once(utc(2026, 1, 1, 0, 30))  # no sync in between
        assert fired == [] and queue.all_enqueued() == []
    assert store.entries() == {}


def test_describe_says_when_a_schedule_fires_and_whether_it_is_disabled() -> None:
    assert every(90).describe() == "every 90s"
    assert cron("0 9 * * 1", tz="Europe/Berlin", enabled=False).describe() == "cron 0 9 * * 1 Europe/Berlin (disabled)"


@pytest.mark.usefixtures("process_zone_new_york")
def test_a_tick_s_job_id_names_the_tick_in_utc_and_keeps_the_schedule_s_letters() -> None:
    berlin_nine = datetime(2026, 1, 5, 9, tzinfo=ZoneInfo("Europe/Berlin"))

    assert tick_id("Reports.Daily Digest", berlin_nine) == "Reports_Daily_Digest-20260105T080000Z"
    assert tick_id("files.sweep", utc(2026, 1, 5, 8)) == "files_sweep-20260105T080000Z"
