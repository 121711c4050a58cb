"""The fake queue's modes: `manual` keeps enqueues until the test runs them, `inline` runs each job
as it is enqueued (through the JSON round trip and the worker's execution code, retries included
on the fake clock). Chosen per test with the `forgejobs` marker, per block with `inline()` /
`manual()`, or by an indirect parametrisation of the fixture."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from forgejobs import Context, Job, Reason, RetryLater, Status, backoff
from forgejobs.backends.fake import FakeClock
from forgejobs.testing import FakeQueue


@dataclass
class Trace:
    """ctx.resources for the jobs below: what ran, in which thread, at which attempt and fake time."""

    clock: FakeClock
    runs: list[tuple[str, int, datetime]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)

    def note(self, ctx: Context, label: str) -> None:
        self.runs.append((label, ctx.attempt, self.clock.now()))
        self.threads.append(threading.current_thread().name)

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.runs]


@pytest.fixture
def trace(fake_queue: FakeQueue) -> Trace:
    fake_queue.resources = Trace(fake_queue.clock)
    return fake_queue.resources


class Note(Job, queue="modes", attempts=1):
    label: str
    at: datetime = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)

    def perform(self, ctx: Context) -> tuple[str, str]:
        ctx.resources.note(ctx, self.label)
        # the type the handler saw: the payload is decoded from JSON, as in a worker
        return (self.label, type(self.at).__name__)


class Parent(Job, queue="modes", attempts=1):
    def perform(self, ctx: Context) -> None:
        ctx.resources.note(ctx, "parent starts")
        Note.enqueue(label="child")
        ctx.resources.note(ctx, "parent ends")


class Unreliable(Job, queue="modes", attempts=4, backoff=backoff.schedule(60, 600)):
    failures: int

    def perform(self, ctx: Context) -> int:
        ctx.resources.note(ctx, "unreliable")
        if ctx.attempt <= self.failures:
            raise ConnectionError(f"planned failure {ctx.attempt}")
        return ctx.attempt


class Patient(Job, queue="modes", attempts=1):
    def perform(self, ctx: Context) -> str:
        ctx.resources.note(ctx, "patient")
        if len(ctx.resources.runs) == 1:
            raise RetryLater(timedelta(minutes=5))
        return "done"


# -- manual, the default -------------------------------------------------------------------


def test_the_default_mode_is_manual_and_keeps_the_job_until_drained(fake_queue: FakeQueue, trace: Trace) -> None:
    handle = Note.enqueue(label="kept")

    assert fake_queue.mode == "manual"
    assert handle.status() is Status.QUEUED
    assert trace.runs == []
    fake_queue.drain()
    assert handle.status() is Status.SUCCEEDED


# -- inline ------------------------------------------------------------------------------------


@pytest.mark.forgejobs(mode="inline")
def test_inline_runs_the_job_during_the_enqueue(fake_queue: FakeQueue, trace: Trace) -> None:
    handle = Note.enqueue(label="now")

    assert fake_queue.mode == "inline"
    assert trace.labels == ["now"]
    assert handle.status() is Status.SUCCEEDED
    assert handle.result() == ("now", "datetime")  # the handler saw the datetime it was given


@pytest.mark.forgejobs(mode="inline")
def test_inline_hands_the_handler_a_copy_decoded_from_json(fake_queue: FakeQueue) -> None:
    seen: list[Job] = []

    class Keep(Job, queue="modes", attempts=1):
        when: datetime

        def perform(self, ctx: Context) -> None:
            seen.append(self)

    original = Keep(when=datetime(2030, 5, 6, 7, 8, tzinfo=UTC))
    original.enqueue()

    (copy,) = seen
    assert copy == original
    assert copy is not original


@pytest.mark.forgejobs(mode="inline")
def test_inline_retries_wait_out_the_backoff_on_the_fake_clock(fake_queue: FakeQueue, trace: Trace) -> None:
    start = fake_queue.clock.now()

    handle = Unreliable.enqueue(failures=2)

    assert [(attempt, at - start) for _, attempt, at in trace.runs] == [
        (1, timedelta(0)),
        (2, timedelta(seconds=60)),
        (3, timedelta(seconds=660)),
    ]
    assert handle.result() == 3


@pytest.mark.forgejobs(mode="inline")
def test_inline_retry_later_runs_the_same_attempt_after_its_delay(fake_queue: FakeQueue, trace: Trace) -> None:
    start = fake_queue.clock.now()

    handle = Patient.enqueue()

    assert [(attempt, at - start) for _, attempt, at in trace.runs] == [(1, timedelta(0)), (1, timedelta(minutes=5))]
    assert handle.result() == "done"


@pytest.mark.forgejobs(mode="inline")
def test_inline_raises_the_handler_exception_from_the_enqueue_once_attempts_are_spent(
    fake_queue: FakeQueue, trace: Trace
) -> None:
    with pytest.raises(ConnectionError, match="planned failure 4"):
        Unreliable.enqueue(failures=10)

    (dead,) = fake_queue.dead_letters()
    assert (dead.reason, [a.attempt for a in dead.attempts]) == (Reason.EXHAUSTED, [1, 2, 3, 4])


@pytest.mark.forgejobs(mode="inline", raise_on_failure=False)
def test_inline_without_raising_leaves_a_failed_job_and_its_dead_letter(fake_queue: FakeQueue, trace: Trace) -> None:
    handle = Unreliable.enqueue(failures=10)

    assert handle.status() is Status.FAILED
    assert fake_queue.dead_letters()[0].id == handle.id


@pytest.mark.forgejobs(mode="inline")
def test_inline_leaves_a_delayed_job_for_drain(fake_queue: FakeQueue, trace: Trace) -> None:
    start = fake_queue.clock.now()
    handle = Note.with_options(delay=timedelta(hours=1)).enqueue(label="later")

    assert handle.status() is Status.SCHEDULED
    assert trace.runs == []
    fake_queue.drain()
    assert trace.runs == [("later", 1, start + timedelta(hours=1))]


@pytest.mark.forgejobs(mode="inline")
def test_inline_runs_a_job_enqueued_by_a_job_inside_its_parent(fake_queue: FakeQueue, trace: Trace) -> None:
    Parent.enqueue()

    assert trace.labels == ["parent starts", "child", "parent ends"]


@pytest.mark.forgejobs(mode="inline")
def test_inline_jobs_that_enqueue_each_other_forever_are_stopped(fake_queue: FakeQueue) -> None:
    class Echo(Job, queue="modes", attempts=1):
        def perform(self, ctx: Context) -> None:
            Echo.enqueue()

    with pytest.raises(AssertionError, match="inline jobs nested 25 deep"):
        Echo.enqueue()


@pytest.mark.forgejobs(mode="inline")
def test_inline_runs_a_job_in_the_thread_that_enqueued_it(fake_queue: FakeQueue, trace: Trace) -> None:
    worker = threading.Thread(target=lambda: Note.enqueue(label="from a thread"), name="enqueuer")
    worker.start()
    worker.join()

    assert (trace.labels, trace.threads) == (["from a thread"], ["enqueuer"])


# -- switching -------------------------------------------------------------------------------------


def test_the_inline_block_runs_jobs_at_once_and_manual_is_back_after_it(fake_queue: FakeQueue, trace: Trace) -> None:
    with fake_queue.inline():
        ran = Note.enqueue(label="inside")
    kept = Note.enqueue(label="after")

    assert (ran.status(), kept.status()) == (Status.SUCCEEDED, Status.QUEUED)
    assert trace.labels == ["inside"]


def test_the_previous_mode_is_back_after_a_block_that_raised(fake_queue: FakeQueue, trace: Trace) -> None:
    with pytest.raises(ConnectionError), fake_queue.inline():
        Unreliable.enqueue(failures=10)

    assert fake_queue.mode == "manual"


@pytest.mark.forgejobs(mode="inline")
def test_a_manual_block_inside_an_inline_test_only_captures(fake_queue: FakeQueue, trace: Trace) -> None:
    with fake_queue.manual():
        handle = Note.enqueue(label="captured")

    assert handle.status() is Status.QUEUED
    assert fake_queue.mode == "inline"


@pytest.mark.parametrize("fake_queue", ["manual", "inline"], indirect=True)
def test_the_fixture_takes_its_mode_from_an_indirect_parametrisation(fake_queue: FakeQueue, trace: Trace) -> None:
    handle = Note.enqueue(label="either")
    fake_queue.drain()  # in inline mode there is nothing left to drain

    assert handle.result() == ("either", "datetime")
    assert trace.labels == ["either"]  # ran once in both modes
    assert fake_queue.mode in ("manual", "inline")


@pytest.mark.forgejobs(start=datetime(2031, 6, 1, tzinfo=UTC))
def test_the_marker_sets_where_the_fake_clock_starts(fake_queue: FakeQueue) -> None:
    assert fake_queue.clock.now() == datetime(2031, 6, 1, tzinfo=UTC)


def test_the_plugin_registers_its_marker(request: pytest.FixtureRequest) -> None:
    markers = request.config.getini("markers")

    assert any(line.startswith("forgejobs(mode=") for line in markers)


def test_an_unknown_mode_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="must be one of manual, inline, not 'eager'"):
        FakeQueue(mode="eager")  # type: ignore[arg-type]
