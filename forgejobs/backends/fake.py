"""An in-memory backend with a movable clock, for tests. No Redis.

It stores exactly what the RQ backend stores (the envelope text), so every
enqueue round-trips through JSON and the size guard as in production.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from ..deadletter import MemoryDeadLetters
from ..status import Status
from ..timeouts import job_timeout
from .base import Backend, JobState, Prepared, QueueCounts


class FakeClock:
    """A clock that only moves when told to.

    It also enforces job timeouts for the fake queue: while a job runs under
    `timeout_guard(seconds)`, moving the clock past its deadline from the job's
    own thread (`advance`, `sleep`, `move_to`) stops the clock at the deadline
    and raises `JobTimeout` there, as the worker's watchdog would.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self._deadlines: dict[int, list[tuple[datetime, float]]] = {}  # thread -> armed (deadline, seconds)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("the fake clock does not go backwards")
        return self._move(self._now + timedelta(seconds=seconds))

    def sleep(self, seconds: float) -> None:
        """A stand-in for `time.sleep` in handlers under test: moves the clock instead of waiting."""
        self.advance(seconds)

    def move_to(self, moment: datetime) -> datetime:
        if moment > self._now:
            return self._move(moment)
        return self._now

    def _move(self, target: datetime) -> datetime:
        with self._lock:
            mine = self._deadlines.get(threading.get_ident(), [])
            passed = [armed for armed in mine if armed[0] < target]
            if passed:
                deadline, seconds = min(passed)
                self._now = max(self._now, deadline)
            else:
                self._now = target
                return self._now
        raise job_timeout(seconds)

    def timeout_guard(self, seconds: float) -> AbstractContextManager[object]:
        """Raise `JobTimeout` in the guarded block once the fake clock passes `seconds` from now
        (no limit if <= 0). The fake queue's execution runtime uses it as its timeout guard."""
        return _ClockGuard(self, seconds)

    def _arm(self, seconds: float) -> tuple[datetime, float]:
        armed = (self._now + timedelta(seconds=seconds), seconds)
        with self._lock:
            self._deadlines.setdefault(threading.get_ident(), []).append(armed)
        return armed

    def _disarm(self, armed: tuple[datetime, float]) -> bool:
        """Forget a deadline; True if the clock is past it."""
        with self._lock:
            mine = self._deadlines.get(threading.get_ident(), [])
            if armed in mine:
                mine.remove(armed)
            if not mine:
                self._deadlines.pop(threading.get_ident(), None)
            return self._now > armed[0]


class _ClockGuard:
    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.armed: tuple[datetime, float] | None = None

    def __enter__(self) -> _ClockGuard:
        if self.seconds > 0:
            self.armed = self.clock._arm(self.seconds)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.armed is None:
            return
        passed = self.clock._disarm(self.armed)
        if passed and kind is None:  # moved past the deadline by another thread: the job overran
            raise job_timeout(self.seconds)


@dataclass
class StoredJob:
    prepared: Prepared
    envelope: str
    seq: int
    status: Status
    due_at: datetime | None
    result: Any = None
    error: str | None = None
    progress: Any = None
    attempts_run: int = 0
    history: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class FakeBackend(Backend):
    """Jobs in a dict, every enqueue in `log`; safe to enqueue into from several threads.

    `on_enqueue`, when set, is called with the jobs each enqueue stored, after
    they are stored (the fake queue's inline mode runs them there).
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.dead_letters = MemoryDeadLetters()
        self.jobs: dict[str, StoredJob] = {}
        self.log: list[Prepared] = []  # every enqueue, in order
        self.claims: dict[str, tuple[str, datetime]] = {}
        self.debounced: dict[str, str] = {}
        self.changed = threading.Condition(threading.RLock())
        """Notified after every enqueue: wait on it (holding it) for jobs another thread enqueues."""
        self.on_enqueue: Callable[[list[StoredJob]], None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self.clock.now()

    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        existing = set()
        stored: list[StoredJob] = []
        with self.changed:
            for job in jobs:
                if job.unique and job.job_id in self.jobs:
                    existing.add(job.job_id)
                    continue
                self.log.append(job)
                status = Status.SCHEDULED if job.due_at and job.due_at > self.clock.now() else Status.QUEUED
                self.jobs[job.job_id] = StoredJob(job, job.envelope, next(self._seq), status, job.due_at)
                stored.append(self.jobs[job.job_id])
            self._notify()
        if stored and self.on_enqueue is not None:
            self.on_enqueue(stored)
        return existing

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from the enqueuing thread) after every enqueue; returns the function that stops it."""
        with self.changed:
            self._listeners.append(callback)

        def stop() -> None:
            with self.changed:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def _notify(self) -> None:
        self.changed.notify_all()
        for callback in list(self._listeners):
            callback()

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def state(self, job_id: str, queue: str | None = None) -> JobState:
        stored = self.jobs.get(job_id)
        if stored is None:
            return JobState(Status.UNKNOWN)
        return JobState(stored.status, result=stored.result, error=stored.error, progress=stored.progress)

    def claim(self, jobs: Sequence[Prepared]) -> dict[str, str]:
        taken: dict[str, str] = {}
        now = self.clock.now()
        for job in jobs:
            if job.dedupe is None:
                continue
            holder = self.claims.get(job.dedupe)
            if holder is not None and holder[1] > now:
                taken[job.job_id] = holder[0]
            else:
                self.claims[job.dedupe] = (job.job_id, now + timedelta(seconds=job.dedupe_ttl))
        return taken

    def unclaim(self, jobs: Sequence[Prepared]) -> None:
        for job in jobs:
            if job.dedupe is not None and self.claims.get(job.dedupe, ("",))[0] == job.job_id:
                del self.claims[job.dedupe]

    def debounce(self, key: str, build: Callable[[str], Prepared], new_id: str, ttl: float) -> tuple[str, bool]:
        current = self.debounced.get(key)
        stored = self.jobs.get(current) if current else None
        if current is not None and stored is not None and stored.status is Status.SCHEDULED:
            job = build(current)
            with self.changed:
                stored.prepared, stored.envelope, stored.due_at = job, job.envelope, job.due_at
                self.log.append(job)
                self._notify()
            return current, True
        self.enqueue([build(new_id)])
        self.debounced[key] = new_id
        return new_id, False

    def logs(self, job_id: str) -> list[str]:
        stored = self.jobs.get(job_id)
        return list(stored.log) if stored is not None else []

    def pending(self) -> list[StoredJob]:
        return [j for j in self.jobs.values() if j.status in (Status.QUEUED, Status.SCHEDULED)]

    def next_job(self, where: Callable[[StoredJob], bool] | None = None) -> StoredJob | None:
        """The job a worker would take next: earliest due, then highest priority, then oldest.
        `where` narrows the choice (one queue, jobs due by a time, ...)."""
        pending = [j for j in self.pending() if where is None or where(j)]
        if not pending:
            return None
        now = self.clock.now()
        return min(pending, key=lambda j: (max(j.due_at or now, now), j.prepared.priority, j.seq))

    def remove(self, where: Callable[[Prepared], bool]) -> int:
        """Forget the jobs (and log entries) `where` picks; returns how many jobs went."""
        with self.changed:
            self.log[:] = [p for p in self.log if not where(p)]
            gone = [job_id for job_id, stored in self.jobs.items() if where(stored.prepared)]
            for job_id in gone:
                del self.jobs[job_id]
        return len(gone)

    def counts(self, queues: Sequence[str]) -> list[QueueCounts]:
        rows = []
        for queue in queues:
            mine = [j for j in self.jobs.values() if j.prepared.queue == queue]
            rows.append(
                QueueCounts(
                    queue,
                    waiting=sum(j.status is Status.QUEUED for j in mine),
                    scheduled=sum(j.status is Status.SCHEDULED for j in mine),
                    running=sum(j.status is Status.RUNNING for j in mine),
                    finished=sum(j.status is Status.SUCCEEDED for j in mine),
                    failed=sum(j.status is Status.FAILED for j in mine),
                )
            )
        return rows
