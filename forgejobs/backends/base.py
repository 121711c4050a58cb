"""The backend interface: primitives for storing and reading jobs.

Bookkeeping (validation, envelopes, size guard, retry decisions) lives in
the client and in execution; a backend only stores what it is handed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..deadletter import DeadLetterStore
from ..status import Status

if TYPE_CHECKING:
    from ..inspection import JobDetail, JobSummary, State


@dataclass(frozen=True, slots=True)
class Prepared:
    """One validated job, ready for a backend: routing plus the envelope text."""

    job_id: str
    name: str
    queue: str
    priority: int
    envelope: str
    due_at: datetime | None = None
    timeout: float = 300
    result_ttl: float = 3600
    failure_ttl: float = 7 * 86400
    unique: bool = False  # the caller chose job_id: an existing job with that id wins
    dedupe: str | None = None  # unique_for: the dedupe key this job claims
    dedupe_ttl: float = 0.0
    concurrency_key: str | None = None  # concurrency_key's value for this job
    concurrency_limit: int = 0


@dataclass
class JobState:
    """What a backend knows about one job right now."""

    status: Status
    result: Any = None
    error: str | None = None
    progress: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueCounts:
    queue: str
    waiting: int
    scheduled: int
    running: int
    finished: int
    failed: int
    cancelled: int = 0


@dataclass(frozen=True)
class Cancellation:
    """What a backend did with a cancel. `outcome`: "cancelled" (it was waiting, parked, delayed or stalled:
    done now), "requested" (it runs: its worker stops it; it ends as cancelled), "already" (a cancel of
    the running job was asked for before), "finished" (`status` says how it ended: nothing done),
    "unknown" (no such job)."""

    job_id: str
    queue: str | None
    outcome: str
    name: str | None
    status: Status | None


class Backend(ABC):
    dead_letters: DeadLetterStore

    def now(self) -> datetime:
        """The backend's clock (the fake backend's can be moved by tests)."""
        return datetime.now(UTC)

    @abstractmethod
    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        """Store `jobs` (in one round trip where the store allows).

        Returns the ids of `unique` jobs that were not stored because a job with that id exists.
        """

    @abstractmethod
    def forget(self, job_id: str) -> None:
        """Delete every trace of a job (before enqueueing a dead job again under its id)."""

    @abstractmethod
    def state(self, job_id: str, queue: str | None = None) -> JobState:
        """The job's state; `queue` (when the caller knows it) saves looking for it."""

    def use_queues(self, queues: Iterable[str]) -> None:  # noqa: B027 - optional
        """The declared queues, for backends that look a job up by id across them."""

    def counts(self, queues: Sequence[str]) -> list[QueueCounts]:
        raise NotImplementedError

    def claim(self, jobs: Sequence[Prepared]) -> dict[str, str]:
        """For jobs with a dedupe key: claim it for the job, atomically. Returns job id -> the id that
        already holds the key (those jobs must not be enqueued)."""
        raise NotImplementedError

    def unclaim(self, jobs: Sequence[Prepared]) -> None:
        """Release claims of jobs that could not be enqueued."""
        raise NotImplementedError

    def debounce(self, key: str, build: Callable[[str], Prepared], new_id: str, ttl: float) -> tuple[str, bool]:
        """Atomically: if `key` points at a job still waiting to start, replace it with `build(its id)`
        (payload and due time) and return (its id, True); else store `build(new_id)`, point `key` at it,
        and return (new_id, False)."""
        raise NotImplementedError

    def logs(self, job_id: str) -> list[str]:
        """The job's `ctx.log` lines, oldest first."""
        return []

    # -- inspection (forgejobs.inspection builds on these) ------------------------------

    def job_detail(self, job_id: str) -> JobDetail | None:
        """Everything stored about one job (record, place, attempts, result, log, dead letter); None if nothing."""
        raise NotImplementedError(f"{type(self).__name__} cannot show a job's detail")

    def list_jobs(self, queue: str, state: State, *, name: str | None = None, limit: int = 50) -> list[JobSummary]:
        """Up to `limit` jobs of `queue` in `state` (of job type `name` only, if given), in the order
        `forgejobs.inspection.Inspector.jobs` documents."""
        raise NotImplementedError(f"{type(self).__name__} cannot list jobs")

    def cancel(self, job_id: str, *, keep_for: Callable[[str | None], float] = lambda name: 3600.0) -> Cancellation:
        """Cancel a job: see `Cancellation` for what may happen."""
        raise NotImplementedError(f"{type(self).__name__} cannot cancel jobs")

    def remove_waiting(self, job_id: str) -> str:
        """Delete a job that has not started (waiting, parked or delayed): "removed", or why not: "running",
        "finished" (finished, or stalled), "unknown"."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete jobs")

    def promote(self, job_id: str) -> bool:
        """Make a delayed job ready now (the back of its priority's wait list); False if it is not delayed."""
        raise NotImplementedError(f"{type(self).__name__} cannot promote jobs")

    def live_slots(self, queues: Iterable[str]) -> dict[str, list[str]]:
        """Per queue: the worker slots holding a live lease (`<host>.<pid>.<hex>/<queue>/<index>/<generation>`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list workers")

    # -- queue administration (pause, resume, drain, obliterate) ------------------------

    def set_paused(self, queue: str, paused: bool) -> None:
        raise NotImplementedError

    def paused(self) -> set[str]:
        raise NotImplementedError

    def drain(self, queue: str) -> int:
        """Delete the queue's waiting and scheduled jobs; return how many."""
        raise NotImplementedError

    def obliterate(self, queue: str) -> int:
        """Delete everything the queue holds (the caller checks nothing is running); return how many jobs."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""
