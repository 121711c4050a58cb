"""Execution: one envelope in, one outcome out. Backend-agnostic.

A straight line: decode -> resolve job type -> validate payload -> perform
with a typed Context -> classify the outcome. Any worker loop (RQ's today, a
leaner one later, the fake queue's `drain`) calls `execute` and then applies
the outcome with its own primitives. Dead letters are written here so every
loop dead-letters the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from . import tracing
from .context import Context, ProgressValue
from .deadletter import DeadLetter, DeadLetterStore, Reason
from .envelope import Envelope, EnvelopeError, decode
from .errors import JobStalled, RateLimited, RetryLater, UnknownJob, Unrecoverable, describe, describe_with_cause
from .events import Event, EventKind, Hooks
from .job import Job
from .logs import job_model, mask_text, mask_value, secret_values
from .options import JobOptions
from .ratelimit import RateLimiter
from .registry import Registry

log = logging.getLogger("forgejobs.execution")


MAX_DELAY = 30 * 86400.0
"""No retry waits longer than 30 days, whatever a backoff computes."""

MAX_RETRY_LATER = 50
"""RetryLater does not spend an attempt, up to this many times per attempt; beyond it, it does."""


class WorkerShutdown(BaseException):
    """Injected into a running job when the worker is told to stop at once (second SIGTERM).

    A BaseException so handlers' `except Exception` blocks do not swallow it.
    """


@dataclass
class Runtime:
    """What execution needs from its surroundings."""

    registry: Registry
    dead_letters: DeadLetterStore
    resources: Any = None
    report_progress: Callable[[str, ProgressValue], None] | None = None
    on_outcome: Callable[[str, WorkerOutcome], None] | None = None
    hooks: Hooks | None = None  # in-process callbacks, no Redis round trip
    limiter: RateLimiter | None = None  # None: rate limits are not applied (unit tests of handlers)
    report_log: Callable[[str, str], None] | None = None
    events: Callable[[Sequence[Event]], None] | None = None  # where job events go (a worker: its buffered writer)
    guard: Callable[[float], AbstractContextManager[object]] | None = None
    """Enforces a job's timeout around `perform` (raising JobTimeout in it); None: no timeout (unit tests)."""

    def emit(self, events: Sequence[Event]) -> None:
        """Hand events to the stream writer and the in-process hooks."""
        if self.events is not None:
            self.events(events)
        if self.hooks is not None:
            for event in events:
                self.hooks.emit(event)


@dataclass(frozen=True)
class Succeeded:
    value: Any  # JSON-compatible
    name: str
    attempt: int = 1


@dataclass(frozen=True)
class Retry:
    delay: float
    envelope: Envelope  # the next attempt's envelope
    error: str

    @property
    def name(self) -> str:
        return self.envelope.name


@dataclass(frozen=True)
class DeadLettered:
    record: DeadLetter
    exception: BaseException | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.record.name or "?"


@dataclass(frozen=True)
class Cancelled:
    """Someone cancelled the job while it ran, and its handler returned or raised after that: it ends
    as `cancelled` (no retry, no dead letter), whatever the handler did."""

    name: str
    attempt: int = 1


@dataclass(frozen=True)
class Aborted:
    """The worker stopped mid-job; run the same attempt again as soon as possible."""

    envelope: Envelope

    @property
    def name(self) -> str:
        return self.envelope.name


Outcome = Succeeded | Retry | DeadLettered | Aborted
"""What `execute` returns: with no way to cancel a run, it cannot end as `Cancelled`."""

WorkerOutcome = Outcome | Cancelled
"""What `execute_cancellable` returns: a worker's run may also end as `Cancelled`."""


def retry_counter(outcome: Retry) -> tuple[str, str]:
    """The metric counter a retry adds to and its per-minute kind: `retried` for a failed attempt that runs
    again ("f"), `rate_limited` for a wait a rate limit imposed, `deferred` for RetryLater (neither fails)."""
    envelope = outcome.envelope
    attempt = envelope.history[-1].attempt if envelope.history else envelope.attempt
    if envelope.attempt != attempt:
        return "retried", "f"
    if _is_rate_limit(outcome.error):
        return "rate_limited", ""
    return "deferred", ""


@dataclass
class _Attempt:
    envelope: Envelope
    queue: str
    traceback: str = field(default="")


def to_json_value(value: Any) -> Any:
    """A handler's return value as JSON-compatible data; raises TypeError if it is not."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    json.dumps(value)  # raises TypeError for anything json cannot write
    return value


def result_json(value: Any) -> str:
    """The text a worker stores as a job's result (the value `Succeeded` carries); `handle.result()` reads
    it back with `json.loads`, so tuples come back as lists and dict keys as strings."""
    return json.dumps(value, separators=(",", ":"))


def call_perform(job: Job, ctx: Context[Any]) -> Any:
    """`job.perform(ctx)`; an `async def perform` runs to completion on an event loop of this thread's own
    (each slot thread has its own, so a slow coroutine holds only its slot)."""
    value = job.perform(ctx)
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value


def execute(raw: str | bytes, runtime: Runtime, *, job_id: str, queue: str) -> Outcome:
    """Run one job from its stored envelope and say what should happen next."""
    outcome = _announce(runtime, _execute(raw, runtime, job_id=job_id, queue=queue), job_id, queue)
    assert not isinstance(outcome, Cancelled)  # nothing can cancel it: there is no cancel event
    return outcome


def execute_cancellable(
    raw: str | bytes, runtime: Runtime, *, job_id: str, queue: str, cancel: threading.Event
) -> WorkerOutcome:
    """`execute` for a worker that can be told to cancel the run: `cancel` is set when someone cancels the job
    while it runs; the handler sees `ctx.cancelled`, and the job ends as `Cancelled` whether it then returns
    or raises."""
    return _announce(runtime, _execute(raw, runtime, job_id=job_id, queue=queue, cancel=cancel), job_id, queue)


def _announce(runtime: Runtime, outcome: WorkerOutcome, job_id: str, queue: str) -> WorkerOutcome:
    """Tell the listeners (outcome callback, event stream, hooks) what happened."""
    if runtime.on_outcome is not None:
        runtime.on_outcome(outcome.name, outcome)
    runtime.emit(outcome_events(outcome, job_id, queue))
    return outcome


def outcome_events(outcome: WorkerOutcome, job_id: str, queue: str) -> list[Event]:
    """The events that report an outcome: a failed attempt that will run again is `failed` then
    `retrying`; a wait that uses no attempt (RetryLater, a rate limit) is `retrying` alone."""

    def event(kind: EventKind, attempt: int, **data: Any) -> Event:
        return Event(kind=kind, job_id=job_id, name=outcome.name, queue=queue, attempt=attempt, data=data)

    if isinstance(outcome, Succeeded):
        return [event(EventKind.COMPLETED, outcome.attempt)]
    if isinstance(outcome, Retry):
        envelope = outcome.envelope
        attempt = envelope.history[-1].attempt if envelope.history else envelope.attempt
        retrying = event(EventKind.RETRYING, attempt, error=outcome.error, delay=outcome.delay, next=envelope.attempt)
        if envelope.attempt == attempt:  # the same attempt runs again: nothing failed
            return [retrying]
        first = EventKind.STALLED if outcome.error.startswith(STALL_ERROR) else EventKind.FAILED
        return [event(first, attempt, error=outcome.error), retrying]
    if isinstance(outcome, DeadLettered):
        record = outcome.record
        attempt = record.attempts[-1].attempt if record.attempts else 1
        return [event(EventKind.DEAD_LETTERED, attempt, reason=record.reason.value, error=record.error)]
    if isinstance(outcome, Cancelled):
        return [event(EventKind.CANCELLED, outcome.attempt)]
    return [event(EventKind.ABORTED, outcome.envelope.attempt)]


def _execute(
    raw: str | bytes, runtime: Runtime, *, job_id: str, queue: str, cancel: threading.Event | None = None
) -> WorkerOutcome:
    try:
        envelope = decode(raw)
    except EnvelopeError as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return _dead(runtime, DeadLetter(id=job_id, queue=queue, reason=Reason.CORRUPT, error=str(exc), raw=text))
    if envelope.id != job_id:
        # The id a record is stored under is the job's id: a copied or forged envelope must not act (or be
        # dead-lettered) as another job.
        envelope = envelope.model_copy(update={"id": job_id})
    try:
        entry = runtime.registry.resolve(envelope.name)
    except UnknownJob as exc:
        return _dead(runtime, _record(envelope, queue, Reason.UNKNOWN_JOB, str(exc)))
    try:
        job = entry.job_type.model_validate(envelope.payload)
    except ValidationError as exc:
        return _dead(runtime, _record(envelope, queue, Reason.INVALID_PAYLOAD, f"{entry.job_type.__qualname__}: {exc}"))
    options = entry.options
    limited = _rate_limited(runtime, entry.options, job, envelope, queue)
    if limited is not None:
        return limited
    hidden = secret_values(entry.job_type, envelope.payload)
    with tracing.perform_span(envelope, queue) as span:
        outcome = _perform(runtime, envelope, job, options, queue, cancel, hidden)
        if isinstance(outcome, Retry) and hidden:
            outcome = _masked_retry(outcome, hidden)
        if span is not None:
            tracing.outcome(span, *_traced(outcome))
    return outcome


def _masked_retry(outcome: Retry, hidden: list[str]) -> Retry:
    """`outcome` with the secret payload values in its error (and the attempt it records) replaced by MASK."""
    envelope = outcome.envelope
    if envelope.history:
        last = envelope.history[-1]
        history = [*envelope.history[:-1], last.model_copy(update={"error": mask_text(last.error, hidden)})]
        envelope = envelope.model_copy(update={"history": history})
    return Retry(outcome.delay, envelope, mask_text(outcome.error, hidden))


def _traced(outcome: WorkerOutcome) -> tuple[str, str | None]:
    """How an attempt ended, for its trace span: a word, and the error when it failed."""
    if isinstance(outcome, Succeeded):
        return "succeeded", None
    if isinstance(outcome, Retry):
        envelope = outcome.envelope
        failed = not envelope.history or envelope.history[-1].attempt != envelope.attempt
        return ("retry", outcome.error) if failed else ("deferred", None)
    if isinstance(outcome, DeadLettered):
        return "dead_lettered", outcome.record.error
    if isinstance(outcome, Cancelled):
        return "cancelled", None
    return "aborted", None


def _perform(
    runtime: Runtime,
    envelope: Envelope,
    job: Job,
    options: JobOptions,
    queue: str,
    cancel: threading.Event | None,
    hidden: list[str],
) -> WorkerOutcome:
    """Run one attempt of a valid job and say what comes next. `hidden`: the payload's secret values, masked
    in the job's log lines (errors are masked by the caller and by `_dead`)."""
    ctx = Context(
        job_id=envelope.id,
        name=envelope.name,
        queue=queue,
        attempt=envelope.attempt,
        max_attempts=options.attempts,
        enqueued_at=envelope.enqueued_at,
        scheduled_for=envelope.scheduled_for(),
        timeout=options.timeout,
        resources=runtime.resources,
        _report_progress=_progress_reporter(runtime, envelope, queue, hidden),
        _report_log=_log_reporter(runtime, envelope.id, hidden),
        _cancel=cancel,
    )
    runtime.emit([_event(EventKind.STARTED, envelope, queue)])
    guard = runtime.guard(options.timeout.total_seconds()) if runtime.guard else contextlib.nullcontext()
    try:
        try:
            with guard:
                value = call_perform(job, ctx)
        except Exception:
            if ctx.cancelled:  # it raised after its cancel was asked for: cancelled, not failed
                return _cancelled(ctx, envelope)
            raise
    except WorkerShutdown:
        return Aborted(envelope)
    except RetryLater as exc:
        wait = min(exc.delay, MAX_DELAY)
        reason = describe_with_cause(exc)  # `raise RetryLater(...) from exc` keeps what prompted it
        snoozes = sum(1 for a in envelope.history if a.attempt == envelope.attempt and not _is_rate_limit(a.error))
        if snoozes < MAX_RETRY_LATER or isinstance(exc, RateLimited):
            return Retry(wait, envelope.next_attempt(reason, wait, counts=False), reason)
        error = f"{reason} (RetryLater {MAX_RETRY_LATER} times on one attempt; counted as a failure)"
        if envelope.attempt < options.attempts:
            return Retry(wait, envelope.next_attempt(error, wait), error)
        return _dead(runtime, _record(envelope, queue, Reason.EXHAUSTED, error), exc)
    except Unrecoverable as exc:
        tracing.record_exception(exc)
        record = _record(envelope, queue, Reason.UNRECOVERABLE, describe(exc), traceback.format_exc())
        return _dead(runtime, record, exc)
    except Exception as exc:
        tracing.record_exception(exc)
        error = describe(exc)
        if envelope.attempt < options.attempts:
            try:
                delay = min(options.backoff.delay(envelope.attempt, exc), MAX_DELAY)
            except Exception as backoff_error:  # a custom strategy that raises: keep the job, stop retrying
                error = f"{error} (and its backoff failed: {describe(backoff_error)})"
                return _dead(runtime, _record(envelope, queue, Reason.EXHAUSTED, error, traceback.format_exc()), exc)
            ctx.logger.warning(
                "attempt %d/%d failed, retrying in %.3gs: %s", envelope.attempt, options.attempts, delay, error
            )
            return Retry(delay, envelope.next_attempt(error, delay), error)
        return _dead(runtime, _record(envelope, queue, Reason.EXHAUSTED, error, traceback.format_exc()), exc)
    if ctx.cancelled:
        return _cancelled(ctx, envelope)
    try:
        return Succeeded(to_json_value(value), envelope.name, envelope.attempt)
    except (TypeError, ValueError) as exc:
        message = f"perform returned {type(value).__name__}, which is not JSON-serialisable: {exc}"
        return _dead(runtime, _record(envelope, queue, Reason.BAD_RESULT, message))


def _cancelled(ctx: Context[Any], envelope: Envelope) -> Cancelled:
    ctx.logger.info("cancelled while running; recorded as cancelled")
    return Cancelled(envelope.name, envelope.attempt)


STALL_ERROR = "stalled: the worker running it stopped (killed, crashed or lost)"
RATE_LIMITED = "rate limited"


def _is_rate_limit(error: str) -> bool:
    return error.startswith((RATE_LIMITED, "RateLimited"))


def _rate_limited(runtime: Runtime, options: JobOptions, job: Job, envelope: Envelope, queue: str) -> Retry | None:
    """Take a slot of every rate limit the job is under, or say how long to wait (not using an attempt)."""
    if runtime.limiter is None:
        return None
    checks = []
    if options.rate_limit is not None:
        key = options.rate_limit_key
        part = "" if key is None else str(key(job) if callable(key) else getattr(job, key))
        checks.append((f"job:{envelope.name}:{part}", options.rate_limit))
    queue_spec = runtime.registry.queues.get(queue)
    if queue_spec is not None and queue_spec.rate_limit is not None:
        checks.append((f"queue:{queue}", queue_spec.rate_limit))
    for key_name, limit in checks:
        wait = runtime.limiter.acquire(key_name, limit)
        if wait > 0:
            reason = f"{RATE_LIMITED} ({key_name}: {limit.describe()})"
            return Retry(wait, envelope.next_attempt(reason, wait, counts=False), reason)
    return None


def stalled(raw: str | bytes, runtime: Runtime, *, job_id: str, queue: str) -> Outcome:
    """The worker running this job died mid-job. That uses up the attempt: retry per backoff, or dead-letter
    (as `stalled`) when attempts are spent or the job has already stalled `max_stalled` times."""
    outcome = decide_stalled(raw, runtime, job_id=job_id, queue=queue)
    if outcome is None:
        return execute(raw, runtime, job_id=job_id, queue=queue)  # dead-letters it with the precise reason
    return record_stalled(outcome, runtime, job_id=job_id, queue=queue)


def decide_stalled(raw: str | bytes, runtime: Runtime, *, job_id: str, queue: str) -> Retry | DeadLettered | None:
    """What `stalled` decides, with no side effect (no dead letter written, nothing announced), so that a
    worker can first make sure it is the one settling the job. None: not an envelope of a known job."""
    try:
        envelope = decode(raw)
        entry = runtime.registry.resolve(envelope.name)
    except (EnvelopeError, UnknownJob):
        return None
    if envelope.id != job_id:
        envelope = envelope.model_copy(update={"id": job_id})
    options = entry.options
    stalls_before = sum(1 for a in envelope.history if a.error.startswith(STALL_ERROR))
    if envelope.attempt < options.attempts and stalls_before < options.max_stalled:
        try:
            delay = min(options.backoff.delay(envelope.attempt, JobStalled(STALL_ERROR)), MAX_DELAY)
        except Exception:
            delay = 0.0
        return Retry(delay, envelope.next_attempt(STALL_ERROR, delay), STALL_ERROR)
    return DeadLettered(_record(envelope, queue, Reason.STALLED, STALL_ERROR))


def record_stalled(outcome: Retry | DeadLettered, runtime: Runtime, *, job_id: str, queue: str) -> Outcome:
    """Write the dead letter (if it is one) and announce what `decide_stalled` decided."""
    if isinstance(outcome, DeadLettered):
        _dead(runtime, outcome.record)
    else:
        attempt = outcome.envelope.attempt - 1
        log.warning("%s %s stalled on attempt %d; retrying in %.3gs", outcome.name, job_id, attempt, outcome.delay)
    _announce(runtime, outcome, job_id, queue)
    return outcome


def _log_reporter(runtime: Runtime, job_id: str, hidden: list[str] | None = None) -> Callable[[str], None] | None:
    report = runtime.report_log
    if report is None:
        return None
    if hidden:
        return lambda line: report(job_id, mask_text(line, hidden))
    return lambda line: report(job_id, line)


def _event(kind: EventKind, envelope: Envelope, queue: str, **data: Any) -> Event:
    return Event(kind=kind, job_id=envelope.id, name=envelope.name, queue=queue, attempt=envelope.attempt, data=data)


def _progress_reporter(
    runtime: Runtime, envelope: Envelope, queue: str, hidden: list[str] | None = None
) -> Callable[[ProgressValue], None]:
    def report(value: ProgressValue) -> None:
        if hidden:  # stored and announced with the payload's secret values masked
            value = mask_value(value, hidden)
        if runtime.report_progress is not None:
            runtime.report_progress(envelope.id, value)
        runtime.emit([_event(EventKind.PROGRESS, envelope, queue, progress=value)])

    return report


def _record(envelope: Envelope, queue: str, reason: Reason, error: str, tb: str = "") -> DeadLetter:
    history = list(envelope.history)
    if reason in (Reason.EXHAUSTED, Reason.UNRECOVERABLE, Reason.BAD_RESULT, Reason.STALLED):
        history = envelope.next_attempt(error, 0).history
    return DeadLetter(
        id=envelope.id,
        name=envelope.name,
        queue=queue,
        priority=envelope.options.get("priority"),
        reason=reason,
        error=error,
        traceback=tb,
        payload=envelope.payload,
        attempts=history,
    )


def _dead(runtime: Runtime, record: DeadLetter, exc: BaseException | None = None) -> DeadLettered:
    hidden = secret_values(job_model(runtime.registry, record.name), record.payload)
    if hidden:  # the payload keeps its secrets (a requeue runs it as enqueued); the messages do not
        record = record.model_copy(
            update={
                "error": mask_text(record.error, hidden),
                "traceback": mask_text(record.traceback, hidden),
                "attempts": [a.model_copy(update={"error": mask_text(a.error, hidden)}) for a in record.attempts],
            }
        )
    log.error("dead-lettered %s (%s): %s: %s", record.id, record.name or "?", record.reason.value, record.error)
    runtime.dead_letters.add(record)
    return DeadLettered(record, exc)
