"""Execution on its own: one stored envelope in, one outcome out, and the events that report it.

No worker and no Redis: `execute` is called the way every worker loop calls it, with a Runtime of memory
parts, so each outcome (success, retry, dead letter, abort, cancel, rate limit, stall) is checked directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

import pytest

from forgejobs import Context, Job, Reason, RetryLater, Secret, Unrecoverable, backoff
from forgejobs.deadletter import MemoryDeadLetters
from forgejobs.envelope import AttemptRecord, Envelope
from forgejobs.events import Event, EventKind, Hooks
from forgejobs.execution import (
    MAX_DELAY,
    MAX_RETRY_LATER,
    STALL_ERROR,
    Aborted,
    Cancelled,
    DeadLettered,
    Retry,
    Runtime,
    Succeeded,
    WorkerShutdown,
    _traced,
    execute,
    execute_cancellable,
    outcome_events,
    result_json,
    retry_counter,
    stalled,
)
from forgejobs.ratelimit import MemoryRateLimiter, RateLimit
from forgejobs.registry import Registry
from forgejobs.specs import QueueSpec, Specs

QUEUE = "work"


class Add(Job, queue=QUEUE, attempts=3, backoff=backoff.fixed(5)):
    a: int
    b: int

    def perform(self, ctx: Context) -> dict[str, int]:
        return {"sum": self.a + self.b, "attempt": ctx.attempt}


class Boom(Job, queue=QUEUE, attempts=3, backoff=backoff.fixed(5)):
    kind: str = "runtime"

    def perform(self, ctx: Context) -> None:
        if self.kind == "unrecoverable":
            raise Unrecoverable("the account was deleted")
        if self.kind == "later":
            raise RetryLater(delay=30)
        if self.kind == "shutdown":
            raise WorkerShutdown()
        raise RuntimeError("boom")


class Forever(Job, queue=QUEUE, attempts=2, backoff=backoff.fixed(10**9)):
    def perform(self, ctx: Context) -> None:
        raise RuntimeError("again")


def broken_backoff(attempt: int) -> float:
    raise ZeroDivisionError("no wait")


class BadBackoff(Job, queue=QUEUE, attempts=3, backoff=backoff.custom(broken_backoff)):
    def perform(self, ctx: Context) -> None:
        raise RuntimeError("failed")


class NotJson(Job, queue=QUEUE):
    def perform(self, ctx: Context) -> object:
        return object()


class Limited(Job, queue=QUEUE, rate_limit=RateLimit(max=1, per=60)):  # type: ignore[arg-type]
    def perform(self, ctx: Context) -> str:
        return "ran"


class Cancellable(Job, queue=QUEUE):
    raises: bool

    def perform(self, ctx: Context) -> str:
        assert ctx.cancelled
        if self.raises:
            raise RuntimeError("stopped half way")
        return "stopped"


class Harness:
    """A Runtime of memory parts, the events it emitted, and envelopes of the jobs above."""

    def __init__(self) -> None:
        self.registry = Registry(
            [Add, Boom, Forever, BadBackoff, NotJson, Limited, Cancellable], Specs(queues={QUEUE: QueueSpec()})
        )
        self.events: list[Event] = []
        self.now = 1000.0
        self.runtime = Runtime(
            self.registry,
            MemoryDeadLetters(),
            events=self.events.extend,
            limiter=MemoryRateLimiter(clock=lambda: self.now),
        )

    def envelope(
        self, job: type[Job], attempt: int = 1, history: list[AttemptRecord] | None = None, **payload: Any
    ) -> Envelope:
        name = next(e.options.name for e in self.registry if e.job_type is job)
        return Envelope(id="job-1", name=name, payload=payload, attempt=attempt, history=history or [])

    def run(self, job: type[Job], attempt: int = 1, **payload: Any) -> Any:
        raw = self.envelope(job, attempt, **payload).encode()
        return execute(raw, self.runtime, job_id="job-1", queue=QUEUE)

    def kinds(self) -> list[tuple[str, int]]:
        return [(e.kind.value, e.attempt) for e in self.events]


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_a_success_carries_the_json_result_and_reports_started_then_completed(harness: Harness) -> None:
    outcome = harness.run(Add, attempt=2, a=2, b=3)

    assert outcome == Succeeded({"sum": 5, "attempt": 2}, "work.add", 2)
    assert harness.kinds() == [("started", 2), ("completed", 2)]


def test_a_failed_attempt_with_attempts_left_is_retried_after_its_backoff(harness: Harness) -> None:
    outcome = harness.run(Boom)

    assert isinstance(outcome, Retry)
    assert (outcome.delay, outcome.error) == (5, "RuntimeError: boom")
    assert outcome.envelope.attempt == 2
    assert [(a.attempt, a.error, a.delay) for a in outcome.envelope.history] == [(1, "RuntimeError: boom", 5)]
    assert harness.kinds() == [("started", 1), ("failed", 1), ("retrying", 1)]
    assert harness.events[-1].data == {"error": "RuntimeError: boom", "delay": 5, "next": 2}
    assert retry_counter(outcome) == ("retried", "f")
    assert harness.runtime.dead_letters.count() == 0


def test_the_last_attempt_s_failure_is_dead_lettered_as_exhausted(harness: Harness) -> None:
    outcome = harness.run(Boom, attempt=3)

    assert isinstance(outcome, DeadLettered)
    assert outcome.record.reason is Reason.EXHAUSTED and outcome.record.error == "RuntimeError: boom"
    assert "RuntimeError: boom" in outcome.record.traceback
    assert harness.runtime.dead_letters.get("job-1") is not None
    assert harness.kinds() == [("started", 3), ("dead_lettered", 3)]
    assert harness.events[-1].data == {"reason": "exhausted", "error": "RuntimeError: boom"}


def test_a_backoff_longer_than_thirty_days_is_cut_to_thirty_days(harness: Harness) -> None:
    outcome = harness.run(Forever)

    assert isinstance(outcome, Retry) and outcome.delay == MAX_DELAY == 30 * 86400


def test_a_backoff_that_raises_keeps_the_job_as_a_dead_letter(harness: Harness) -> None:
    outcome = harness.run(BadBackoff)

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.EXHAUSTED
    assert outcome.record.error == "RuntimeError: failed (and its backoff failed: ZeroDivisionError: no wait)"


def test_unrecoverable_is_dead_lettered_on_the_first_attempt(harness: Harness) -> None:
    outcome = harness.run(Boom, kind="unrecoverable")

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.UNRECOVERABLE
    assert "the account was deleted" in outcome.record.error
    assert harness.kinds() == [("started", 1), ("dead_lettered", 1)]


def test_retry_later_runs_the_same_attempt_again_and_reports_no_failure(harness: Harness) -> None:
    outcome = harness.run(Boom, kind="later")

    assert isinstance(outcome, Retry) and outcome.delay == 30
    assert outcome.envelope.attempt == 1 and outcome.envelope.history[0].attempt == 1
    assert harness.kinds() == [("started", 1), ("retrying", 1)]
    assert retry_counter(outcome) == ("deferred", "")


def snoozed(times: int, attempt: int) -> list[AttemptRecord]:
    return [AttemptRecord(attempt=attempt, at="2026-01-01T00:00:00Z", error="RetryLater: later") for _ in range(times)]


def test_retry_later_too_often_on_one_attempt_counts_as_a_failure(harness: Harness) -> None:
    under = harness.envelope(Boom, history=snoozed(MAX_RETRY_LATER - 1, 1), kind="later")
    over = harness.envelope(Boom, history=snoozed(MAX_RETRY_LATER, 1), kind="later")
    last = harness.envelope(Boom, attempt=3, history=snoozed(MAX_RETRY_LATER, 3), kind="later")

    still_free = execute(under.encode(), harness.runtime, job_id="job-1", queue=QUEUE)
    counted = execute(over.encode(), harness.runtime, job_id="job-1", queue=QUEUE)
    dead = execute(last.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(still_free, Retry) and still_free.envelope.attempt == 1
    assert isinstance(counted, Retry) and counted.envelope.attempt == 2
    assert counted.error.endswith(f"(RetryLater {MAX_RETRY_LATER} times on one attempt; counted as a failure)")
    assert isinstance(dead, DeadLettered) and dead.record.reason is Reason.EXHAUSTED


def test_a_worker_shutdown_aborts_and_runs_the_same_attempt_again(harness: Harness) -> None:
    envelope = harness.envelope(Boom, attempt=2, kind="shutdown")

    outcome = execute(envelope.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, Aborted)
    assert outcome.envelope.attempt == 2 and outcome.envelope.history == []
    assert harness.kinds() == [("started", 2), ("aborted", 2)]
    assert harness.runtime.dead_letters.count() == 0


def test_a_result_that_is_not_json_is_dead_lettered_as_a_bad_result(harness: Harness) -> None:
    outcome = harness.run(NotJson)

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.BAD_RESULT
    assert outcome.record.error.startswith("perform returned object, which is not JSON-serialisable")


@pytest.mark.parametrize(
    ("raw", "reason", "error"),
    [
        ("{not json", Reason.CORRUPT, ""),
        ('{"id": "job-1", "name": "work.gone", "payload": {}}', Reason.UNKNOWN_JOB, "work.gone"),
        ('{"id": "job-1", "name": "work.add", "payload": {"a": "x", "b": 1}}', Reason.INVALID_PAYLOAD, "Add: "),
    ],
)
def test_what_cannot_run_is_dead_lettered_with_the_reason(
    harness: Harness, raw: str, reason: Reason, error: str
) -> None:
    outcome = execute(raw, harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is reason
    assert error in outcome.record.error and outcome.record.error != "None"
    assert outcome.record.queue == QUEUE
    assert outcome.record.traceback == ""  # nothing ran, so there is no traceback to keep
    assert outcome.record.raw == (raw if reason is Reason.CORRUPT else None)
    assert harness.kinds() == [("dead_lettered", 1)]


def test_a_record_stored_under_another_id_acts_as_the_job_it_is_stored_under(harness: Harness) -> None:
    forged = harness.envelope(Boom, attempt=3).model_copy(update={"id": "someone-else"})

    outcome = execute(forged.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, DeadLettered) and outcome.record.id == "job-1"
    assert harness.runtime.dead_letters.get("someone-else") is None


def test_a_rate_limited_job_waits_without_spending_an_attempt(harness: Harness) -> None:
    assert harness.run(Limited) == Succeeded("ran", "work.limited", 1)
    harness.now += 20

    outcome = harness.run(Limited)

    assert isinstance(outcome, Retry) and outcome.delay == pytest.approx(40)
    assert outcome.error == "rate limited (job:work.limited:: 1/60s)"
    assert outcome.envelope.attempt == 1
    assert retry_counter(outcome) == ("rate_limited", "")
    assert harness.kinds()[-1:] == [("retrying", 1)] and ("started", 1) not in harness.kinds()[2:]
    harness.now += 40
    assert isinstance(harness.run(Limited), Succeeded)


@pytest.mark.parametrize("raises", [False, True])
def test_a_job_cancelled_while_running_ends_cancelled_whatever_its_handler_did(harness: Harness, raises: bool) -> None:
    cancel = threading.Event()
    cancel.set()
    raw = harness.envelope(Cancellable, raises=raises).encode()

    outcome = execute_cancellable(raw, harness.runtime, job_id="job-1", queue=QUEUE, cancel=cancel)

    assert outcome == Cancelled("work.cancellable", 1)
    assert harness.kinds() == [("started", 1), ("cancelled", 1)]
    assert harness.runtime.dead_letters.count() == 0


# -- a job whose worker died: reported as stalled, never as failed ------------------------------------


def stall(harness: Harness, envelope: Envelope) -> Any:
    return stalled(envelope.encode(), harness.runtime, job_id="job-1", queue=QUEUE)


def test_a_stalled_job_with_attempts_left_is_reported_stalled_then_retrying(harness: Harness) -> None:
    outcome = stall(harness, harness.envelope(Add, a=1, b=2))

    assert isinstance(outcome, Retry) and outcome.error == STALL_ERROR and outcome.delay == 5
    assert outcome.envelope.attempt == 2  # a stall spends the attempt
    assert harness.kinds() == [("stalled", 1), ("retrying", 1)]
    assert "failed" not in [e.kind.value for e in harness.events]


def test_a_stalled_job_on_its_last_attempt_is_dead_lettered_as_stalled(harness: Harness) -> None:
    outcome = stall(harness, harness.envelope(Add, attempt=3, a=1, b=2))

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.STALLED
    assert harness.runtime.dead_letters.get("job-1") is not None
    assert harness.kinds() == [("dead_lettered", 3)]
    assert harness.events[0].data["reason"] == "stalled"


def test_a_job_that_stalled_max_stalled_times_already_is_dead_lettered_on_the_next_stall(harness: Harness) -> None:
    once = [AttemptRecord(attempt=1, at="2026-01-01T00:00:00Z", error=STALL_ERROR)]
    outcome = stall(harness, harness.envelope(Add, attempt=2, history=once, a=1, b=2))  # max_stalled=1

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.STALLED


def test_a_stalled_record_that_is_not_an_envelope_is_dead_lettered_with_the_precise_reason(harness: Harness) -> None:
    outcome = stalled("{not json", harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.CORRUPT


def test_outcome_events_name_each_outcome(harness: Harness) -> None:
    envelope = harness.envelope(Add, attempt=2, a=1, b=2)
    events: Callable[[Any], list[tuple[str, int]]] = lambda outcome: [  # noqa: E731
        (e.kind.value, e.attempt) for e in outcome_events(outcome, "job-1", QUEUE)
    ]

    assert events(Succeeded(1, "work.add", 2)) == [("completed", 2)]
    assert events(Aborted(envelope)) == [("aborted", 2)]
    assert events(Cancelled("work.add", 2)) == [("cancelled", 2)]
    assert events(Retry(1, envelope.next_attempt("RuntimeError: x", 1), "RuntimeError: x")) == [
        ("failed", 2),
        ("retrying", 2),
    ]
    assert events(Retry(1, envelope.next_attempt(STALL_ERROR, 1), STALL_ERROR)) == [("stalled", 2), ("retrying", 2)]


# -- what the job's log, the process log and the trace span are told ---------------------------------


class Login(Job, queue=QUEUE, attempts=2, backoff=backoff.fixed(1)):
    user: str
    password: Annotated[str, Secret]

    def perform(self, ctx: Context) -> None:
        ctx.log(f"logging in as {self.user} with {self.password}")
        raise RuntimeError(f"login refused for {self.user}:{self.password}")


def test_secrets_are_masked_in_the_retry_the_job_log_and_the_dead_letter_but_kept_in_the_payload() -> None:
    harness = Harness()
    harness.registry = Registry([Login], Specs(queues={QUEUE: QueueSpec()}))
    lines: list[tuple[str, str]] = []
    harness.runtime = Runtime(harness.registry, MemoryDeadLetters(), report_log=lambda i, line: lines.append((i, line)))
    payload = {"user": "ada", "password": "hunter2"}

    retry = execute(harness.envelope(Login, **payload).encode(), harness.runtime, job_id="job-1", queue=QUEUE)
    dead = execute(harness.envelope(Login, attempt=2, **payload).encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(retry, Retry) and retry.error == "RuntimeError: login refused for ada:***"
    assert retry.envelope.history[-1].error == retry.error
    assert retry.envelope.payload == payload  # a retry runs with the real value
    assert all(i == "job-1" and "hunter2" not in line for i, line in lines)
    assert any(line.endswith("logging in as ada with ***") for _, line in lines)
    assert isinstance(dead, DeadLettered)
    record = harness.runtime.dead_letters.get("job-1")
    assert record is not None and record.payload == payload
    assert "hunter2" not in record.error + record.traceback + "".join(a.error for a in record.attempts)
    assert record.error == "RuntimeError: login refused for ada:***"


def test_the_job_log_says_when_an_attempt_failed_and_will_be_retried(harness: Harness) -> None:
    lines: list[str] = []
    harness.runtime.report_log = lambda job_id, line: lines.append(line)

    harness.run(Boom)

    (line,) = lines
    assert line.endswith(" #1 WARNING attempt 1/3 failed, retrying in 5s: RuntimeError: boom")


def test_the_job_log_says_when_a_run_was_cancelled(harness: Harness) -> None:
    lines: list[str] = []
    harness.runtime.report_log = lambda job_id, line: lines.append(line)
    cancel = threading.Event()
    cancel.set()

    execute_cancellable(
        harness.envelope(Cancellable, raises=False).encode(),
        harness.runtime,
        job_id="job-1",
        queue=QUEUE,
        cancel=cancel,
    )

    (line,) = lines
    assert line.endswith(" #1 INFO cancelled while running; recorded as cancelled")


def test_the_process_log_names_each_dead_letter_and_each_stall(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs")

    harness.run(Boom, attempt=3)
    stall(harness, harness.envelope(Add, attempt=1, a=1, b=2))

    messages = [r.getMessage() for r in caplog.records if r.name == "forgejobs.execution"]
    assert messages == [
        "dead-lettered job-1 (work.boom): exhausted: RuntimeError: boom",
        "work.add job-1 stalled on attempt 1; retrying in 5s",
    ]


def test_a_dead_letter_records_the_final_attempt_only_when_the_job_ran() -> None:
    harness = Harness()
    earlier = [AttemptRecord(attempt=1, at="2026-01-01T00:00:00Z", error="RuntimeError: boom", delay=5)]
    ran = harness.envelope(Boom, attempt=3, history=earlier, kind="runtime").model_copy(
        update={"options": {"priority": 2}}
    )
    did_not_run = harness.envelope(Add, attempt=2, history=earlier, a="x", b=1)

    exhausted = execute(ran.encode(), harness.runtime, job_id="job-1", queue=QUEUE)
    invalid = execute(did_not_run.encode(), harness.runtime, job_id="job-2", queue=QUEUE)

    assert isinstance(exhausted, DeadLettered) and isinstance(invalid, DeadLettered)
    assert [(a.attempt, a.error) for a in exhausted.record.attempts] == [
        (1, "RuntimeError: boom"),
        (3, "RuntimeError: boom"),
    ]
    assert exhausted.record.attempts[-1].delay == 0
    assert (exhausted.record.priority, exhausted.record.queue, exhausted.record.name) == (2, QUEUE, "work.boom")
    assert exhausted.record.payload == {"kind": "runtime"}
    assert [a.attempt for a in invalid.record.attempts] == [1]  # the payload never ran: no attempt is added
    assert invalid.record.priority is None


def test_rate_limit_waits_do_not_count_toward_the_retry_later_limit(harness: Harness) -> None:
    waits = [
        AttemptRecord(attempt=1, at="2026-01-01T00:00:00Z", error=error)
        for error in ["rate limited (queue:work: 1/60s)", "RateLimited: retry in 30s"] * MAX_RETRY_LATER
    ]
    envelope = harness.envelope(Boom, history=waits, kind="later")

    outcome = execute(envelope.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, Retry) and outcome.envelope.attempt == 1


def test_a_stalled_job_waits_what_its_backoff_says_for_a_stall_capped_at_thirty_days(harness: Harness) -> None:
    outcome = stall(harness, harness.envelope(Forever))
    assert isinstance(outcome, Retry) and outcome.delay == MAX_DELAY
    assert outcome.envelope.history[-1].delay == MAX_DELAY

    broken = stall(harness, harness.envelope(BadBackoff).model_copy(update={"id": "other-id"}))
    assert isinstance(broken, Retry) and broken.delay == 0.0  # a backoff that raises: retried at once
    assert broken.envelope.id == "job-1"  # the id it is stored under, not the one inside


def test_a_stalled_job_of_an_unknown_type_is_dead_lettered_as_unknown(harness: Harness) -> None:
    raw = '{"id": "job-1", "name": "work.gone", "payload": {}}'

    outcome = stalled(raw, harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, DeadLettered) and outcome.record.reason is Reason.UNKNOWN_JOB


def test_trace_spans_name_how_each_attempt_ended(harness: Harness) -> None:
    envelope = harness.envelope(Add, a=1, b=2)
    failed = envelope.next_attempt("RuntimeError: x", 1)
    deferred = envelope.next_attempt("RetryLater: later", 1, counts=False)
    record = harness.runtime.dead_letters  # any DeadLetter will do
    dead = harness.run(Boom, attempt=3)
    assert isinstance(dead, DeadLettered) and record.count() == 1

    assert _traced(Succeeded(1, "work.add")) == ("succeeded", None)
    assert _traced(Retry(1, failed, "RuntimeError: x")) == ("retry", "RuntimeError: x")
    assert _traced(Retry(1, deferred, "RetryLater: later")) == ("deferred", None)
    assert _traced(dead) == ("dead_lettered", "RuntimeError: boom")
    assert _traced(Cancelled("work.add")) == ("cancelled", None)
    assert _traced(Aborted(envelope)) == ("aborted", None)


def test_a_stored_result_is_compact_json() -> None:
    assert result_json({"a": [1, 2], "b": "c"}) == '{"a":[1,2],"b":"c"}'


class Tenant(Job, queue=QUEUE, rate_limit=RateLimit(max=1, per=60), rate_limit_key="tenant"):  # type: ignore[arg-type]
    tenant: str

    def perform(self, ctx: Context) -> str:
        ctx.progress({"done": 1, "total": 2})
        return self.tenant


def by_region(job: Any) -> str:
    return f"region-{job.tenant[:2]}"


class Regional(Job, queue="limited", rate_limit=RateLimit(max=1, per=60), rate_limit_key=by_region):  # type: ignore[arg-type]
    tenant: str

    def perform(self, ctx: Context) -> str:
        return self.tenant


def test_rate_limits_are_kept_per_key_and_per_queue_and_the_wait_is_recorded() -> None:
    registry = Registry(
        [Tenant, Regional],
        Specs(queues={QUEUE: QueueSpec(), "limited": QueueSpec(rate_limit=RateLimit(max=2, per=60))}),  # type: ignore[arg-type]
    )
    runtime = Runtime(registry, MemoryDeadLetters(), limiter=MemoryRateLimiter(clock=lambda: 100.0))

    def run(job: type[Job], queue: str, tenant: str) -> Any:
        name = next(e.options.name for e in registry if e.job_type is job)
        raw = Envelope(id=f"{tenant}-job", name=name, payload={"tenant": tenant}).encode()
        return execute(raw, runtime, job_id=f"{tenant}-job", queue=queue)

    assert isinstance(run(Tenant, QUEUE, "acme"), Succeeded)
    assert isinstance(run(Tenant, QUEUE, "blue"), Succeeded)  # another key: a limit of its own
    again = run(Tenant, QUEUE, "acme")
    assert isinstance(again, Retry) and again.error == "rate limited (job:work.tenant:acme: 1/60s)"
    assert again.envelope.history[-1].delay == again.delay == 60  # the wait is recorded with the attempt
    assert again.envelope.attempt == 1

    assert isinstance(run(Regional, "limited", "eu-1"), Succeeded)
    regional = run(Regional, "limited", "eu-2")  # same region: the function's key
    assert isinstance(regional, Retry) and regional.error == "rate limited (job:limited.regional:region-eu: 1/60s)"
    assert isinstance(run(Regional, "limited", "us-1"), Succeeded)
    queue_full = run(Regional, "limited", "ap-1")  # a third region, but the queue allows two a minute
    assert isinstance(queue_full, Retry) and queue_full.error == "rate limited (queue:limited: 2/60s)"


def test_progress_goes_to_the_reporter_and_the_event_stream(harness: Harness) -> None:
    reported: list[tuple[str, Any]] = []
    harness.runtime.report_progress = lambda job_id, value: reported.append((job_id, value))
    harness.registry = Registry([Tenant], Specs(queues={QUEUE: QueueSpec()}))
    harness.runtime.registry = harness.registry

    harness.run(Tenant, tenant="acme")

    assert reported == [("job-1", {"done": 1, "total": 2})]
    (progress,) = [e for e in harness.events if e.kind.value == "progress"]
    assert progress.data == {"progress": {"done": 1, "total": 2}} and progress.job_id == "job-1"


def test_a_corrupt_record_is_kept_as_text_in_its_dead_letter(harness: Harness) -> None:
    outcome = execute(b"{not json \xff", harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, DeadLettered) and outcome.record.raw == "{not json \ufffd"


def test_masking_a_retry_keeps_its_wait_and_the_earlier_attempts() -> None:
    harness = Harness()
    harness.registry = Registry([Login], Specs(queues={QUEUE: QueueSpec()}))
    harness.runtime = Runtime(harness.registry, MemoryDeadLetters())
    earlier = [
        AttemptRecord(attempt=1, at="2026-01-01T00:00:00Z", error="first"),
        AttemptRecord(attempt=1, at="2026-01-01T00:01:00Z", error="second"),
    ]
    envelope = harness.envelope(Login, history=earlier, user="ada", password="hunter2")

    retry = execute(envelope.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(retry, Retry) and retry.delay == 1
    assert [a.error for a in retry.envelope.history] == ["first", "second", "RuntimeError: login refused for ada:***"]


class Whoami(Job, queue=QUEUE, attempts=4, timeout=90):
    def perform(self, ctx: Context) -> dict[str, Any]:
        return {
            "name": ctx.name,
            "queue": ctx.queue,
            "attempt": ctx.attempt,
            "max_attempts": ctx.max_attempts,
            "enqueued_at": ctx.enqueued_at.isoformat(),
            "timeout": ctx.timeout.total_seconds(),
        }


class Patient(Job, queue=QUEUE, attempts=5, max_stalled=2, backoff=backoff.exponential(1)):
    def perform(self, ctx: Context) -> None: ...


def test_the_handler_s_context_describes_the_job_and_its_attempt() -> None:
    harness = Harness()
    harness.registry = Registry([Whoami], Specs(queues={QUEUE: QueueSpec()}))
    harness.runtime.registry = harness.registry
    envelope = harness.envelope(Whoami, attempt=2)

    outcome = execute(envelope.encode(), harness.runtime, job_id="job-1", queue=QUEUE)

    assert isinstance(outcome, Succeeded)
    assert outcome.value == {
        "name": "work.whoami",
        "queue": QUEUE,
        "attempt": 2,
        "max_attempts": 4,
        "enqueued_at": envelope.enqueued_at.isoformat(),
        "timeout": 90.0,
    }


def test_waits_are_recorded_with_the_attempt_that_asked_for_them(harness: Harness) -> None:
    later = harness.run(Boom, kind="later")
    counted = execute(
        harness.envelope(Boom, history=snoozed(MAX_RETRY_LATER, 1), kind="later").encode(),
        harness.runtime,
        job_id="job-1",
        queue=QUEUE,
    )

    assert isinstance(later, Retry) and later.envelope.history[-1].delay == 30
    assert isinstance(counted, Retry) and counted.delay == 30 and counted.envelope.history[-1].delay == 30


def test_a_dead_letter_keeps_the_queue_and_the_outcome_keeps_the_exception(harness: Harness) -> None:
    exhausted = harness.run(Boom, attempt=3)
    broken = harness.run(BadBackoff)
    bad_result = harness.run(NotJson)
    snoozing = execute(
        harness.envelope(Boom, attempt=3, history=snoozed(MAX_RETRY_LATER, 3), kind="later").encode(),
        harness.runtime,
        job_id="job-1",
        queue=QUEUE,
    )
    stalled_out = stall(harness, harness.envelope(Add, attempt=3, a=1, b=2))

    outcomes = [exhausted, broken, bad_result, snoozing, stalled_out]
    assert all(isinstance(o, DeadLettered) and o.record.queue == QUEUE for o in outcomes)
    assert isinstance(exhausted.exception, RuntimeError) and str(exhausted.exception) == "boom"
    assert isinstance(broken.exception, RuntimeError) and str(broken.exception) == "failed"
    assert "ZeroDivisionError: no wait" in broken.record.traceback
    assert isinstance(snoozing.exception, RetryLater)


def test_a_cancelled_run_keeps_its_attempt_number(harness: Harness) -> None:
    cancel = threading.Event()
    cancel.set()
    raw = harness.envelope(Cancellable, attempt=2, raises=False).encode()

    assert execute_cancellable(raw, harness.runtime, job_id="job-1", queue=QUEUE, cancel=cancel) == Cancelled(
        "work.cancellable", 2
    )


def test_max_stalled_counts_each_earlier_stall_once_and_a_stall_waits_by_its_attempt() -> None:
    harness = Harness()
    harness.registry = Registry([Patient], Specs(queues={QUEUE: QueueSpec()}))
    harness.runtime.registry = harness.registry
    once = [AttemptRecord(attempt=2, at="2026-01-01T00:00:00Z", error=STALL_ERROR)]

    outcome = stall(harness, harness.envelope(Patient, attempt=3, history=once))

    assert isinstance(outcome, Retry)  # one earlier stall of two allowed
    assert outcome.delay == 4  # exponential(1) after attempt 3: 1 s, 2 s, 4 s


def test_a_dead_letter_without_a_job_name_is_logged_with_a_question_mark(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.execution")

    execute("{not json", harness.runtime, job_id="job-9", queue=QUEUE)

    assert caplog.records[-1].getMessage().startswith("dead-lettered job-9 (?): corrupt: ")


def test_hooks_and_the_outcome_callback_hear_each_outcome(harness: Harness) -> None:
    heard: list[tuple[str, Any]] = []
    outcomes: list[tuple[str, Any]] = []
    hooks = Hooks()
    hooks.on(EventKind.FAILED, lambda event: heard.append((event.kind.value, event.data)))
    harness.runtime.hooks = hooks
    harness.runtime.on_outcome = lambda name, outcome: outcomes.append((name, outcome))

    retry = harness.run(Boom)

    assert heard == [("failed", {"error": "RuntimeError: boom"})]
    assert outcomes == [("work.boom", retry)]
