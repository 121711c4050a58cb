"""Running jobs on the fake queue: `perform` (one handler, with the JSON round trips of an enqueue and of
a stored result), `drain` and its scopes (a queue, not recursive, due by a time, a job limit),
`perform_one`, and `clear` per job type or queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
from pydantic import BaseModel, PlainSerializer, ValidationError

from forgejobs import Context, Job, Status, backoff
from forgejobs.backends.fake import FakeClock
from forgejobs.testing import DrainLimitReached, FakeQueue, PerformError


@dataclass
class Seen:
    clock: FakeClock
    runs: list[tuple[str, int]] = field(default_factory=list)

    def note(self, ctx: Context, label: str) -> None:
        self.runs.append((label, ctx.attempt))

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.runs]


@pytest.fixture
def seen(fake_queue: FakeQueue) -> Seen:
    fake_queue.resources = Seen(fake_queue.clock)
    return fake_queue.resources


class Invoice(BaseModel):
    number: str
    issued: datetime


class IssueInvoice(Job, queue="billing", attempts=1):
    order: str
    placed: datetime

    def perform(self, ctx: Context) -> Invoice:
        assert isinstance(self.placed, datetime)  # decoded from its JSON form, as a worker does
        return Invoice(number=f"INV-{self.order}", issued=self.placed + timedelta(days=1))


class Counts(Job, queue="billing", attempts=1):
    def perform(self, ctx: Context) -> dict[str, int]:
        return {"a": 1}


class WrongResult(Job, queue="billing", attempts=1):
    def perform(self, ctx: Context) -> int:
        return "twelve"  # type: ignore[return-value]


class DateResult(Job, queue="billing", attempts=1):
    def perform(self, ctx: Context) -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC)


class Untyped(Job, queue="billing", attempts=1):
    def perform(self, ctx: Context):  # type: ignore[no-untyped-def]
        return {1: ("a", "b")}


Lossy = Annotated[int, PlainSerializer(lambda value: f"#{value}", return_type=str)]


class LossyPayload(Job, queue="billing", attempts=1):
    """Writes its field as "#7", which does not read back as an int: the worker would refuse it."""

    ticket: Lossy

    def perform(self, ctx: Context) -> None: ...


class Step(Job, queue="steps", attempts=1):
    label: str

    def perform(self, ctx: Context) -> str:
        ctx.resources.note(ctx, self.label)
        return self.label


class Fanout(Job, queue="steps", attempts=1):
    children: int

    def perform(self, ctx: Context) -> None:
        ctx.resources.note(ctx, "fanout")
        Step.enqueue_many([{"label": f"child-{n}"} for n in range(self.children)])


class Other(Job, queue="other", attempts=1):
    label: str

    def perform(self, ctx: Context) -> None:
        ctx.resources.note(ctx, self.label)


class Wobbly(Job, queue="steps", attempts=3, backoff=backoff.fixed(30)):
    def perform(self, ctx: Context) -> int:
        ctx.resources.note(ctx, "wobbly")
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return ctx.attempt


# -- perform -----------------------------------------------------------------------------------------


def test_perform_takes_a_job_class_and_its_payload_as_json_data(fake_queue: FakeQueue) -> None:
    result = fake_queue.perform(IssueInvoice, {"order": "42", "placed": "2030-03-04T05:06:07Z"})

    assert result == Invoice(number="INV-42", issued=datetime(2030, 3, 5, 5, 6, 7, tzinfo=UTC))


def test_perform_takes_the_payload_as_keywords_too(fake_queue: FakeQueue) -> None:
    result = fake_queue.perform(IssueInvoice, order="7", placed=datetime(2030, 1, 1, tzinfo=UTC))

    assert isinstance(result, Invoice) and result.number == "INV-7"


def test_perform_still_takes_a_job_instance(fake_queue: FakeQueue) -> None:
    result = fake_queue.perform(IssueInvoice(order="8", placed=datetime(2030, 1, 1, tzinfo=UTC)))

    assert result.number == "INV-8"


def test_perform_refuses_an_invalid_payload_naming_the_job_and_the_field(fake_queue: FakeQueue) -> None:
    with pytest.raises(
        PerformError, match=r"billing.issue-invoice: invalid payload: placed: Input should be a valid"
    ) as info:
        fake_queue.perform(IssueInvoice, {"order": "42", "placed": "last tuesday"})

    assert isinstance(info.value.__cause__, ValidationError)


def test_perform_refuses_a_payload_that_does_not_survive_the_json_round_trip(fake_queue: FakeQueue) -> None:
    # LossyPayload(ticket=7) is a valid instance and enqueues fine, but a worker would read "#7" back.
    with pytest.raises(PerformError, match=r"billing.lossy-payload: the payload does not survive .*ticket: "):
        fake_queue.perform(LossyPayload(ticket=7))


def test_perform_refuses_a_job_instance_with_a_payload_as_well(fake_queue: FakeQueue) -> None:
    with pytest.raises(TypeError, match="not both"):
        fake_queue.perform(Counts(), {"x": 1})


def test_perform_checks_the_result_against_the_return_annotation(fake_queue: FakeQueue) -> None:
    assert fake_queue.perform(Counts) == {"a": 1}
    with pytest.raises(
        PerformError, match=r"billing.wrong-result: perform's result does not match its return annotation \(int\)"
    ):
        fake_queue.perform(WrongResult)


def test_perform_refuses_a_result_a_worker_could_not_store(fake_queue: FakeQueue) -> None:
    with pytest.raises(
        PerformError, match="billing.date-result: perform returned datetime, which is not JSON-serialisable"
    ):
        fake_queue.perform(DateResult)


def test_perform_returns_an_unannotated_result_as_a_worker_stores_it(fake_queue: FakeQueue) -> None:
    assert fake_queue.perform(Untyped) == {"1": ["a", "b"]}


def test_perform_enqueues_and_dead_letters_nothing(fake_queue: FakeQueue) -> None:
    fake_queue.perform(Counts)

    assert (fake_queue.all_enqueued(), fake_queue.dead_letters()) == ([], [])


# -- drain's scopes ------------------------------------------------------------------------------------


def test_drain_one_queue_leaves_the_others(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.enqueue(label="step")
    other = Other.enqueue(label="other")

    result = fake_queue.drain(queue="steps")

    assert (result.succeeded, seen.labels, other.status()) == (1, ["step"], Status.QUEUED)
    assert fake_queue.drain(queue=["other", "steps"]).succeeded == 1


def test_a_non_recursive_drain_leaves_the_jobs_the_drained_jobs_enqueued(fake_queue: FakeQueue, seen: Seen) -> None:
    Fanout.enqueue(children=2)

    result = fake_queue.drain(recursive=False)

    assert (result.succeeded, seen.labels) == (1, ["fanout"])
    assert [e.status for e in fake_queue.all_enqueued(job=Step)] == [Status.QUEUED, Status.QUEUED]
    assert fake_queue.drain().succeeded == 2


def test_a_non_recursive_drain_still_runs_the_retries_of_its_jobs(fake_queue: FakeQueue, seen: Seen) -> None:
    handle = Wobbly.enqueue()

    result = fake_queue.drain(recursive=False)

    assert (result.succeeded, result.retried, handle.result()) == (1, 1, 2)


def test_drain_until_runs_only_the_jobs_due_by_then(fake_queue: FakeQueue, seen: Seen) -> None:
    start = fake_queue.clock.now()
    Step.with_options(delay=timedelta(minutes=5)).enqueue(label="in 5 min")
    late = Step.with_options(delay=timedelta(hours=2)).enqueue(label="in 2 h")

    fake_queue.drain(until=timedelta(hours=1))

    assert seen.labels == ["in 5 min"]
    assert late.status() is Status.SCHEDULED
    assert fake_queue.clock.now() == start + timedelta(minutes=5)
    fake_queue.drain(until=start + timedelta(hours=2))
    assert seen.labels == ["in 5 min", "in 2 h"]


def test_drain_without_scheduled_jobs_runs_only_what_is_due_now(fake_queue: FakeQueue, seen: Seen) -> None:
    start = fake_queue.clock.now()
    Step.enqueue(label="now")
    Step.with_options(delay=timedelta(seconds=1)).enqueue(label="soon")
    retried = Wobbly.enqueue()

    result = fake_queue.drain(with_scheduled=False)

    assert (result.succeeded, result.retried) == (1, 1)
    assert seen.labels == ["now", "wobbly"]  # the retry, due in 30 s, waits
    assert retried.status() is Status.SCHEDULED
    assert fake_queue.clock.now() == start
    with pytest.raises(ValueError, match="not both"):
        fake_queue.drain(with_scheduled=False, until=start)


def test_drain_raises_past_max_jobs_naming_what_is_left(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.enqueue_many([{"label": n} for n in "abc"])

    with pytest.raises(
        DrainLimitReached, match=r"drain stopped after 2 jobs \(max_jobs\) with 1 still pending \(steps.step\)"
    ):
        fake_queue.drain(max_jobs=2)

    assert seen.labels == ["a", "b"]


def test_drain_running_exactly_max_jobs_is_not_an_error(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.enqueue_many([{"label": n} for n in "ab"])

    assert fake_queue.drain(max_jobs=2).succeeded == 2


# -- perform_one ------------------------------------------------------------------------------------------


def test_perform_one_runs_the_job_a_worker_would_take_next(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.enqueue(label="normal")
    urgent = Step.with_options(priority=1).enqueue(label="urgent")

    handle = fake_queue.perform_one()

    assert (handle, handle.status(), handle.result()) == (urgent, Status.SUCCEEDED, "urgent")
    assert seen.labels == ["urgent"]


def test_perform_one_runs_one_attempt_and_leaves_the_retry_scheduled(fake_queue: FakeQueue, seen: Seen) -> None:
    Wobbly.enqueue()

    handle = fake_queue.perform_one()

    assert (seen.runs, handle.status()) == ([("wobbly", 1)], Status.SCHEDULED)
    start = fake_queue.clock.now()
    assert fake_queue.perform_one().result() == 2  # the clock moves to the retry's due time
    assert fake_queue.clock.now() == start + timedelta(seconds=30)


def test_perform_one_can_take_one_queue(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.with_options(priority=1).enqueue(label="step")
    Other.enqueue(label="other")

    fake_queue.perform_one("other")

    assert seen.labels == ["other"]


def test_perform_one_with_nothing_pending_says_so(fake_queue: FakeQueue) -> None:
    Step.enqueue(label="a")

    with pytest.raises(AssertionError, match="perform_one: no job is pending on queue 'other'; enqueued:"):
        fake_queue.perform_one("other")


# -- clear ----------------------------------------------------------------------------------------------


def test_clear_one_job_type_keeps_the_others(fake_queue: FakeQueue, seen: Seen) -> None:
    Step.enqueue(label="a")
    Fanout.enqueue(children=0)
    Other.enqueue(label="b")

    assert fake_queue.clear(Step) == 1

    assert [e.name for e in fake_queue.all_enqueued()] == ["steps.fanout", "other.other"]
    fake_queue.drain()
    assert seen.labels == ["fanout", "b"]


def test_clear_one_queue_keeps_the_others(fake_queue: FakeQueue) -> None:
    Step.enqueue(label="a")
    Fanout.enqueue(children=0)
    Other.enqueue(label="b")

    assert fake_queue.clear(queue="steps") == 2

    assert [e.name for e in fake_queue.all_enqueued()] == ["other.other"]


def test_clear_without_arguments_forgets_everything(fake_queue: FakeQueue) -> None:
    Step.enqueue(label="a")
    Other.enqueue(label="b")

    assert fake_queue.clear() == 2
    assert fake_queue.all_enqueued() == []
