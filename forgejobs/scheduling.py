"""Firing repeats: which ticks to enqueue, once each, whatever the scheduler processes do.

Backend-agnostic. A `RepeatStore` keeps, per schedule, its definition
fingerprint, its next tick and its last run; `Repeater.run_once(now)` fires
what is due. Each tick is enqueued under the job id `<schedule>-<tick>`, which
the backend stores at most once, so two schedulers racing on one tick make
one job. The rq-scheduler store lives in `forgejobs.backends.rqscheduler`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from .client import Client
from .handle import JobHandle
from .options import EnqueueOptions
from .registry import ScheduledJob
from .schedule import Schedule, id_part, tick_id
from .status import PENDING

log = logging.getLogger("forgejobs.scheduler")

MAX_TICK_SCAN = 10_000  # ticks walked per schedule per pass when working out what was missed


class LastRun(BaseModel):
    tick: datetime
    job_id: str | None  # None when the tick was skipped
    fired_at: datetime
    note: str = ""  # why it was skipped, or "manual"


@dataclass(frozen=True)
class StoredRepeat:
    name: str
    fingerprint: str
    next_at: datetime


class RepeatStore(ABC):
    """Where repeats live between passes (and across restarts)."""

    @abstractmethod
    def entries(self) -> dict[str, StoredRepeat]: ...

    @abstractmethod
    def upsert(self, scheduled: ScheduledJob, next_at: datetime) -> None: ...

    @abstractmethod
    def remove(self, name: str) -> None: ...

    @abstractmethod
    def due(self, now: datetime) -> list[StoredRepeat]: ...

    @abstractmethod
    def set_next(self, name: str, next_at: datetime) -> None: ...

    @abstractmethod
    def last_run(self, name: str) -> LastRun | None: ...

    @abstractmethod
    def record(self, name: str, run: LastRun) -> None: ...


@dataclass
class SyncReport:
    added: list[str]
    changed: list[str]
    removed: list[str]


def sync(store: RepeatStore, schedules: Iterable[ScheduledJob], now: datetime) -> SyncReport:
    """Make the store hold exactly the enabled schedules: an idempotent upsert keyed by name.

    An unchanged schedule keeps its stored next tick (so a restart neither
    repeats nor drops one, and missed ticks are still seen as missed); a new
    or changed one starts from its first tick after `now`; a schedule no
    longer declared, or disabled, is removed.
    """
    wanted = {s.name: s for s in schedules if s.schedule.enabled}
    stored = store.entries()
    report = SyncReport([], [], [])
    for name, scheduled in wanted.items():
        current = stored.get(name)
        if current is not None and current.fingerprint == scheduled.fingerprint():
            continue
        store.upsert(scheduled, scheduled.schedule.next_after(now))
        (report.changed if current is not None else report.added).append(name)
    for name in stored.keys() - wanted.keys():
        store.remove(name)
        report.removed.append(name)
    for kind in ("added", "changed", "removed"):
        names = getattr(report, kind)
        if names:
            log.info("schedules %s: %s", kind, ", ".join(sorted(names)))
    return report


def ticks_to_fire(schedule: Schedule, due: datetime, now: datetime) -> tuple[list[datetime], int]:
    """The ticks to enqueue for a schedule whose next tick was `due`, and how many were dropped.

    Every tick in [due, now] is due. One late by no more than `misfire_grace`
    is on time; older ones were missed (the scheduler was down or stuck).
    `catch_up` decides, oldest first:

    - "none": the latest on-time tick, if there is one; nothing that was missed;
    - "latest": one run, for the most recent due tick (on time or missed);
    - "all": every due tick, missed or on time, at most the newest `max_catch_up`.

    So several ticks within the grace (a short stop of a frequent repeat) fire
    once under "none" and "latest", like one missed stretch does under "latest".
    """
    keep = schedule.max_catch_up if schedule.catch_up == "all" else 1
    ticks, unlisted = _due_ticks(schedule, due, now, keep)
    if schedule.catch_up == "latest":
        chosen = ticks[-1:]
    elif schedule.catch_up == "none":
        chosen = [t for t in ticks if now - t <= schedule.misfire_grace][-1:]
    else:
        chosen = ticks[-schedule.max_catch_up :]
    return chosen, unlisted + len(ticks) - len(chosen)


def _due_ticks(schedule: Schedule, due: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
    """The ticks in [due, now], oldest first, and how many older ones were left out.

    At most MAX_TICK_SCAN are walked from `due`. Past that (a long downtime of
    a frequent repeat), the newest `keep` or more are listed instead, found in
    a window ending at `now` that doubles until it holds enough; the count of
    the ones left out is then a lower bound.
    """
    ticks = [due]
    for tick in schedule.ticks(due, now):
        ticks.append(tick)
        if len(ticks) >= MAX_TICK_SCAN:
            break
    else:
        return ticks, 0
    window = max(schedule.misfire_grace, timedelta(seconds=1))
    while True:
        start = max(now - window, ticks[-1])
        recent: deque[datetime] = deque(maxlen=MAX_TICK_SCAN)
        seen = 0
        for tick in schedule.ticks(start, now):
            recent.append(tick)
            seen += 1
        if len(recent) >= keep or start == ticks[-1]:
            break
        window *= 2
    if start == ticks[-1]:  # the window reached the walked ticks: the list is complete
        merged = ticks + list(recent)
        return merged[-MAX_TICK_SCAN:], max(len(merged) - MAX_TICK_SCAN, 0)
    return list(recent), len(ticks) + seen - len(recent)


class Repeater:
    """Fires due repeats through a client. One pass: `run_once(now)`."""

    def __init__(self, client: Client, store: RepeatStore) -> None:
        self.client = client
        self.store = store

    @property
    def schedules(self) -> dict[str, ScheduledJob]:
        return self.client.registry.schedules

    def sync(self, now: datetime | None = None) -> SyncReport:
        return sync(self.store, self.schedules.values(), now or datetime.now(UTC))

    def run_once(self, now: datetime | None = None) -> list[JobHandle]:
        now = now or datetime.now(UTC)
        fired: list[JobHandle] = []
        for entry in self.store.due(now):
            scheduled = self.schedules.get(entry.name)
            if scheduled is None or not scheduled.schedule.enabled:
                self.store.remove(entry.name)
                continue
            schedule = scheduled.schedule
            ticks, dropped = ticks_to_fire(schedule, entry.next_at, now)
            if dropped:
                log.warning("%s: %d due tick(s) not run (catch_up=%s)", entry.name, dropped, schedule.catch_up)
            # The ticks of one pass are separate runs, never overlaps of each other:
            # overlap is judged against the run of an earlier pass only (a run for
            # a tick before this pass's first one; a later one was recorded by a
            # scheduler doing this same pass). Missed ticks under catch_up "all"
            # are separate periods and are never skipped.
            earlier = self.store.last_run(entry.name)
            if earlier is not None and earlier.tick >= entry.next_at:
                earlier = None
            for tick in ticks:
                missed_period = schedule.catch_up == "all" and now - tick > schedule.misfire_grace
                handle = self._fire(scheduled, tick, now, None if missed_period else earlier)
                if handle is not None:
                    fired.append(handle)
            self.store.set_next(entry.name, schedule.next_after(now))
        return fired

    def fire(self, scheduled: ScheduledJob, tick: datetime, now: datetime) -> JobHandle | None:
        """Enqueue one tick, unless its previous run is still pending and overlap is "skip"."""
        return self._fire(scheduled, tick, now, self.store.last_run(scheduled.name))

    def _fire(
        self, scheduled: ScheduledJob, tick: datetime, now: datetime, earlier: LastRun | None
    ) -> JobHandle | None:
        """Enqueue one tick, unless `earlier` (a run it may overlap) is still pending and overlap is "skip"."""
        last = self.store.last_run(scheduled.name)
        if last is not None and last.tick >= tick:
            return None  # another scheduler got here first
        if scheduled.schedule.overlap == "skip" and earlier is not None and earlier.job_id is not None:
            status = self.client.backend.state(earlier.job_id).status
            if status in PENDING:
                note = f"skipped: previous run {earlier.job_id} is still {status.value}"
                log.warning("%s tick %s %s", scheduled.name, tick.isoformat(), note)
                self.store.record(scheduled.name, LastRun(tick=tick, job_id=earlier.job_id, fired_at=now, note=note))
                return None
        handle = self._enqueue(scheduled, tick_id(scheduled.name, tick), tick)
        self.store.record(scheduled.name, LastRun(tick=tick, job_id=handle.id, fired_at=now))
        if not handle.existing:
            log.info("%s: enqueued tick %s as %s", scheduled.name, tick.isoformat(), handle.id)
        return handle

    def run_now(self, name: str, now: datetime | None = None) -> JobHandle:
        """Fire a schedule once, now, outside its ticks (`forgejobs schedules run NAME`)."""
        now = now or datetime.now(UTC)
        scheduled = self.schedules.get(name)
        if scheduled is None:
            known = ", ".join(sorted(self.schedules)) or "none"
            raise KeyError(f"no schedule named {name!r} (known: {known})")
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        handle = self._enqueue(scheduled, f"{id_part(name)}-manual-{stamp}", now)
        self.store.record(name, LastRun(tick=now, job_id=handle.id, fired_at=now, note="manual"))
        return handle

    def _enqueue(self, scheduled: ScheduledJob, job_id: str, tick: datetime) -> JobHandle:
        options = EnqueueOptions(job_id=job_id, scheduled_for=tick)
        return self.client.enqueue(scheduled.job_type, [scheduled.payload], options)[0]


class MemoryRepeatStore(RepeatStore):
    """In-memory store, for unit tests of the firing rules."""

    def __init__(self) -> None:
        self._entries: dict[str, StoredRepeat] = {}
        self._last: dict[str, LastRun] = {}

    def entries(self) -> dict[str, StoredRepeat]:
        return dict(self._entries)

    def upsert(self, scheduled: ScheduledJob, next_at: datetime) -> None:
        self._entries[scheduled.name] = StoredRepeat(scheduled.name, scheduled.fingerprint(), next_at)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def due(self, now: datetime) -> list[StoredRepeat]:
        return sorted((e for e in self._entries.values() if e.next_at <= now), key=lambda e: e.next_at)

    def set_next(self, name: str, next_at: datetime) -> None:
        entry = self._entries.get(name)
        if entry is not None and next_at > entry.next_at:
            self._entries[name] = StoredRepeat(name, entry.fingerprint, next_at)

    def last_run(self, name: str) -> LastRun | None:
        return self._last.get(name)

    def record(self, name: str, run: LastRun) -> None:
        self._last[name] = run
