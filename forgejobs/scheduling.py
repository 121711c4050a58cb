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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

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

    Every tick in [due, now] is due. One within `misfire_grace` of now is on
    time; older ones were missed (the scheduler was down). `catch_up`
    decides: "latest" fires the most recent tick only, "none" fires only
    on-time ticks, "all" fires each, oldest first, at most `max_catch_up`.
    """
    ticks = [due]
    for tick in schedule.ticks(due, now):
        ticks.append(tick)
        if len(ticks) >= MAX_TICK_SCAN:
            break
    if schedule.catch_up == "latest":
        chosen = ticks[-1:]
    elif schedule.catch_up == "none":
        chosen = [t for t in ticks if now - t <= schedule.misfire_grace]
    else:
        chosen = ticks[-schedule.max_catch_up :]
    return chosen, len(ticks) - len(chosen)


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
            ticks, dropped = ticks_to_fire(scheduled.schedule, entry.next_at, now)
            if dropped:
                policy = scheduled.schedule.catch_up
                log.warning("%s: %d missed tick(s) not run (catch_up=%s)", entry.name, dropped, policy)
            for tick in ticks:
                handle = self.fire(scheduled, tick, now)
                if handle is not None:
                    fired.append(handle)
            self.store.set_next(entry.name, scheduled.schedule.next_after(now))
        return fired

    def fire(self, scheduled: ScheduledJob, tick: datetime, now: datetime) -> JobHandle | None:
        """Enqueue one tick, unless its previous run is still pending and overlap is "skip"."""
        last = self.store.last_run(scheduled.name)
        if last is not None and last.tick >= tick:
            return None  # another scheduler got here first
        if scheduled.schedule.overlap == "skip" and last is not None and last.job_id is not None:
            status = self.client.backend.state(last.job_id).status
            if status in PENDING:
                note = f"skipped: previous run {last.job_id} is still {status.value}"
                log.warning("%s tick %s %s", scheduled.name, tick.isoformat(), note)
                self.store.record(scheduled.name, LastRun(tick=tick, job_id=last.job_id, fired_at=now, note=note))
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
