"""Read-only views of jobs: one job in full (`JobDetail`) and lists of jobs by state (`JobSummary`).

The CLI's `forgejobs job ID` and `forgejobs jobs` print these; a dashboard can use the same
`Inspector` without knowing a Redis key. Nothing here writes.

Where a job is (`State`) is finer than its `Status`: a queued job may be waiting on its
priority's list, parked behind a full concurrency key, or stalled (taken from a dead worker
and about to be retried or dead-lettered). The backend reads the structures
(`Backend.job_detail`, `Backend.list_jobs`); the `Inspector` checks names against the
registry, adds the options this process declares for the job, and merges states.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .deadletter import DeadLetter
from .envelope import AttemptRecord
from .errors import ForgeJobsError, NoSuchJob, UnknownJob
from .logs import has_secrets, job_model, mask_dead_letter, mask_payload, mask_text, mask_value, secret_values
from .status import Status

if TYPE_CHECKING:
    from .backends.base import Backend
    from .options import JobOptions
    from .registry import Registry

__all__ = [
    "AttemptRecord",
    "Inspector",
    "JobDetail",
    "JobSummary",
    "State",
    "declared_options",
    "job_name",
    "parse_state",
    "suggest",
]


class State(StrEnum):
    """Where a job is in its queue's structures."""

    ACTIVE = "active"  # a worker's slot holds it (running)
    WAITING = "waiting"  # on its priority's wait list, ready for a worker
    PARKED = "parked"  # ready, but its concurrency key is full
    DELAYED = "delayed"  # due later: a delay, a backoff, RetryLater or a rate limit
    STALLED = "stalled"  # taken back from a dead worker; the next worker retries or dead-letters it
    SUCCEEDED = "succeeded"  # finished, kept for its result TTL (and the queue's retention)
    FAILED = "failed"  # failed for good, kept for its failure TTL (and the queue's retention)
    DEAD = "dead"  # a dead letter (most failed jobs have one; it outlives the job's record)
    CANCELLED = "cancelled"  # cancelled, kept for its result TTL (and the queue's completed retention)


STATE_ORDER: tuple[State, ...] = tuple(State)
"""The order `Inspector.jobs` lists states in when none is asked for."""

ALIASES: dict[str, State] = {
    "running": State.ACTIVE,
    "queued": State.WAITING,
    "scheduled": State.DELAYED,
    "done": State.SUCCEEDED,
    "completed": State.SUCCEEDED,
}
"""Other words accepted for a state (`--state done` lists succeeded jobs)."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" when `word` is close to one of `choices`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_state(text: str | State) -> State:
    """`text` as a `State` (a value or an alias); `ValueError` naming the valid ones otherwise."""
    if isinstance(text, State):
        return text
    word = text.strip().lower()
    if word in ALIASES:
        return ALIASES[word]
    try:
        return State(word)
    except ValueError:
        valid = [s.value for s in State]
        raise ValueError(
            f"unknown state {text!r}{suggest(word, [*valid, *ALIASES])}; valid states: {', '.join(valid)} "
            f"(also {', '.join(f'{a} = {s.value}' for a, s in ALIASES.items())})"
        ) from None


class JobSummary(BaseModel):
    """One job as a list shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    queue: str
    state: State
    name: str | None = Field(default=None, description="The job type's name; None when the record is unreadable.")
    priority: int | None = None
    attempt: int | None = Field(
        default=None, description="The attempt running, or the next to run; for a finished job, its last."
    )
    enqueued_at: datetime | None = None
    due_at: datetime | None = Field(default=None, description="Delayed: when it may start.")
    started_at: datetime | None = Field(
        default=None,
        description="Active: when this attempt started; otherwise when the last attempt that ended started.",
    )
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(
        default=None, description="Succeeded or failed: when its record is deleted (unless retention trims it first)."
    )
    worker: str | None = Field(default=None, description="Active: the worker slot holding its lease.")
    progress: Any = Field(default=None, description="The last value passed to ctx.progress().")
    error: str | None = Field(default=None, description="Failed or dead: the last error.")
    concurrency_key: str | None = None


class JobDetail(JobSummary):
    """Everything kept about one job: its record, where it is, its attempts, result, log and dead letter."""

    status: Status
    payload: dict[str, Any] | None = None
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="As stored with the job: the envelope's options (queue, priority, scheduled_for) and the "
        "concurrency key and limit it was enqueued with.",
    )
    declared: dict[str, Any] | None = Field(
        default=None,
        description="The job type's effective options in this process's registry (attempts, backoff, timeout, "
        "TTLs, ...); None when the name is not registered here.",
    )
    attempts: list[AttemptRecord] = Field(
        default_factory=list, description="The failed attempts so far, oldest first, with their errors."
    )
    result: Any = None
    traceback: str | None = Field(default=None, description="The last traceback (kept with the dead letter).")
    logs: list[str] = Field(default_factory=list, description="The job's ctx.log lines, oldest first.")
    position: int | None = Field(
        default=None, description="Waiting or parked: how many jobs are ahead of it on its list."
    )
    dead_letter: DeadLetter | None = None
    raw: str | None = Field(default=None, description="The stored record, when it is not a readable envelope.")

    def summary(self) -> JobSummary:
        """The fields a list shows."""
        return JobSummary(**{field: getattr(self, field) for field in JobSummary.model_fields})


def declared_options(options: JobOptions) -> dict[str, Any]:
    """The options of a job type as plain JSON values, for `JobDetail.declared`."""
    out: dict[str, Any] = {
        "queue": options.queue,
        "priority": options.priority,
        "attempts": options.attempts,
        "backoff": options.backoff.describe(),
        "timeout": options.timeout.total_seconds(),
        "result_ttl": options.result_ttl.total_seconds(),
        "failure_ttl": options.failure_ttl.total_seconds(),
        "max_stalled": options.max_stalled,
        "max_payload_bytes": options.max_payload_bytes,
    }
    if options.unique_for is not None:
        out["unique_for"] = options.unique_for.total_seconds()
    if options.debounce is not None:
        out["debounce"] = options.debounce.total_seconds()
    if options.rate_limit is not None:
        out["rate_limit"] = options.rate_limit.describe()
    if options.concurrency_limit is not None:
        out["concurrency_limit"] = options.concurrency_limit
    return out


def job_name(detail: JobDetail) -> str | None:
    """The job's name: from its record, or from its dead letter when the record is unreadable or gone."""
    if detail.name is None and detail.dead_letter is not None:
        return detail.dead_letter.name
    return detail.name


def masked(detail: JobDetail, model: type[BaseModel] | None) -> JobDetail:
    """`detail` with the payload's secret fields shown as `***`, and their values masked wherever they appear in
    its errors, traceback, log, result, progress and dead letter (see forgejobs.logs)."""
    if model is None or not has_secrets(model):
        return detail
    payload = detail.payload
    if payload is None and detail.dead_letter is not None:
        payload = detail.dead_letter.payload
    hidden = secret_values(model, payload)

    def text(value: str | None) -> str | None:
        return mask_text(value, hidden) if value is not None else None

    letter = detail.dead_letter
    if letter is not None:
        letter = mask_dead_letter(letter, model)

    return detail.model_copy(
        update={
            "payload": mask_payload(model, detail.payload),
            "error": text(detail.error),
            "traceback": text(detail.traceback),
            "raw": text(detail.raw),
            "logs": [mask_text(line, hidden) for line in detail.logs],
            "attempts": [a.model_copy(update={"error": mask_text(a.error, hidden)}) for a in detail.attempts],
            "result": mask_value(detail.result, hidden),
            "progress": mask_value(detail.progress, hidden),
            "dead_letter": letter,
        }
    )


class Inspector:
    """Read jobs through a backend: `job(id)` in full, `jobs(...)` by queue, state and name.

    `registry` gives the queues to look in and the declared options; without one, `jobs()` needs a queue.
    """

    def __init__(self, backend: Backend, registry: Registry | None = None) -> None:
        self.backend = backend
        self.registry = registry

    @property
    def queues(self) -> list[str]:
        return sorted(self.registry.queues) if self.registry is not None else []

    def queue(self, name: str) -> str:
        """`name` if the registry declares it; `UnknownJob` naming the declared queues otherwise."""
        if self.registry is not None and name not in self.registry.queues:
            raise UnknownJob(f"no queue named {name!r}{suggest(name, self.queues)}; declared: {', '.join(self.queues)}")
        return name

    def job(self, job_id: str) -> JobDetail:
        """Everything kept about `job_id`. Raises `NoSuchJob` when neither a record nor a dead letter exists."""
        detail = self.backend.job_detail(job_id)
        if detail is None:
            raise NoSuchJob(f"no job with id {job_id!r} (never enqueued, or its record expired)")
        if self.registry is not None and detail.name is not None and detail.name in self.registry:
            options = self.registry.resolve(detail.name).options
            detail = detail.model_copy(update={"declared": declared_options(options)})
        return masked(detail, job_model(self.registry, job_name(detail)))

    def jobs(
        self,
        queue: str | None = None,
        state: State | str | None = None,
        *,
        name: str | None = None,
        limit: int = 50,
    ) -> list[JobSummary]:
        """Up to `limit` jobs, state by state (in `STATE_ORDER`, or only `state`), queue by queue.

        Within a state: active by start time, waiting in the order workers take them (priority 1 first,
        oldest first), parked by key then age, delayed by due time, stalled oldest first, succeeded and
        failed latest expiry first (nearly always the latest finished), dead letters newest first. A dead
        letter whose job is also listed as failed is listed once, as failed."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        queues = [self.queue(queue)] if queue is not None else self.queues
        if not queues:
            raise ForgeJobsError("no queue to look in: give a queue, or an Inspector with a registry")
        states: Sequence[State] = [parse_state(state)] if state is not None else STATE_ORDER
        found: list[JobSummary] = []
        failed: set[tuple[str, str]] = set()
        for current in states:
            for q in queues:
                want = limit - len(found)
                if want <= 0:
                    return found
                extra = len(failed) if current is State.DEAD else 0  # dead letters that may be skipped below
                for summary in self.backend.list_jobs(q, current, name=name, limit=want + extra):
                    if current is State.DEAD and (summary.queue, summary.id) in failed:
                        continue
                    if current is State.FAILED:
                        failed.add((summary.queue, summary.id))
                    found.append(summary)
                    if len(found) >= limit:
                        return found
        return found
