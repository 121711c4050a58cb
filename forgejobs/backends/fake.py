"""An in-memory backend with a movable clock, for tests. No Redis.

It stores exactly what the RQ backend stores (the envelope text), so every
enqueue round-trips through JSON and the size guard as in production.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..deadletter import MemoryDeadLetters
from ..status import Status
from .base import Backend, JobState, Prepared, QueueCounts


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("the fake clock does not go backwards")
        self._now += timedelta(seconds=seconds)
        return self._now

    def move_to(self, moment: datetime) -> datetime:
        if moment > self._now:
            self._now = moment
        return self._now


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
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.dead_letters = MemoryDeadLetters()
        self.jobs: dict[str, StoredJob] = {}
        self.log: list[Prepared] = []  # every enqueue, in order
        self.claims: dict[str, tuple[str, datetime]] = {}
        self.debounced: dict[str, str] = {}
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self.clock.now()

    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        existing = set()
        for job in jobs:
            if job.unique and job.job_id in self.jobs:
                existing.add(job.job_id)
                continue
            self.log.append(job)
            status = Status.SCHEDULED if job.due_at and job.due_at > self.clock.now() else Status.QUEUED
            self.jobs[job.job_id] = StoredJob(job, job.envelope, next(self._seq), status, job.due_at)
        return existing

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
            stored.prepared, stored.envelope, stored.due_at = job, job.envelope, job.due_at
            self.log.append(job)
            return current, True
        self.enqueue([build(new_id)])
        self.debounced[key] = new_id
        return new_id, False

    def logs(self, job_id: str) -> list[str]:
        stored = self.jobs.get(job_id)
        return list(stored.log) if stored is not None else []

    def pending(self) -> list[StoredJob]:
        return [j for j in self.jobs.values() if j.status in (Status.QUEUED, Status.SCHEDULED)]

    def next_job(self) -> StoredJob | None:
        """The job a worker would take next: earliest due, then highest priority, then oldest."""
        pending = self.pending()
        if not pending:
            return None
        now = self.clock.now()
        return min(
            pending,
            key=lambda j: (max(j.due_at or now, now), j.prepared.priority, j.seq),
        )

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
