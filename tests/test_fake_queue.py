"""The `fake_queue` fixture: enqueue, inspect and run jobs with no Redis, on a fake clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import jobs.email
import jobs.resources
import jobs.store
from forgejobs import (
    Context,
    Job,
    JobFailed,
    JobHandle,
    PayloadTooLarge,
    Reason,
    Registry,
    ResultTimeout,
    RetryLater,
    Status,
    Unrecoverable,
    backoff,
)
from forgejobs.backends.fake import FakeClock
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue

# -- job types used below -------------------------------------------------------------


@dataclass
class Recorder:
    """Handed to handlers as ctx.resources: what ran, at which attempt, at what fake time."""

    clock: FakeClock
    runs: list[tuple[str, int, datetime]] = field(default_factory=list)

    def note(self, ctx: Context, label: str) -> None:
        self.runs.append((label, ctx.attempt, self.clock.now()))

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.runs]

    @property
    def attempts(self) -> list[int]:
        return [attempt for _, attempt, _ in self.runs]


@pytest.fixture
def recorder(fake_queue: FakeQueue) -> Recorder:
    fake_queue.resources = Recorder(fake_queue.clock)
    return fake_queue.resources


@pytest.fixture
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail at once if anything sleeps for real (the waits these tests go through are minutes to hours long, so
    a fake queue that waited any other way would not finish either)."""

    def forbidden(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) called: the fake queue must not sleep")

    monkeypatch.setattr(time, "sleep", forbidden)
    yield


class Address(BaseModel):
    street: str
    city: str


class Signup(Job, queue="accounts"):
    email: str
    at: datetime
    address: Address
    plan: str = "free"

    def perform(self, ctx: Context) -> None: ...


class Mark(Job, queue="marks", attempts=1):
    label: str

    def perform(self, ctx: Context) -> str:
        ctx.resources.note(ctx, self.label)
        return self.label


class Spawner(Job, queue="marks", attempts=1):
    children: int

    def perform(self, ctx: Context) -> None:
        ctx.resources.note(ctx, "spawner")
        Mark.enqueue_many([{"label": f"child-{n}"} for n in range(self.children)])


class Attachment(Job, queue="files", max_payload_bytes=64):
    file_name: str
    body: str

    def perform(self, ctx: Context) -> None: ...


class Total(BaseModel):
    attempt: int
    amount: int


class Flaky(Job, queue="billing", attempts=4, backoff=backoff.schedule(60, 600, 3600)):
    """Fails its first `failures` attempts."""

    failures: int

    def perform(self, ctx: Context) -> Total:
        ctx.resources.note(ctx, "flaky")
        if ctx.attempt <= self.failures:
            raise RuntimeError(f"planned failure {ctx.attempt}")
        return Total(attempt=ctx.attempt, amount=42)


class Doomed(Job, queue="billing", attempts=5):
    def perform(self, ctx: Context) -> None:
        ctx.resources.note(ctx, "doomed")
        raise Unrecoverable("the account was deleted")


class Snooze(Job, queue="billing", attempts=1):
    """Asks to be run again in 30 s the first time, then succeeds."""

    def perform(self, ctx: Context) -> int:
        ctx.resources.note(ctx, "snooze")
        if len(ctx.resources.runs) == 1:
            raise RetryLater(timedelta(seconds=30), "remote said 429")
        return ctx.attempt


class Progressing(Job, queue="reports", attempts=1):
    def perform(self, ctx: Context) -> None:
        ctx.progress(50)
        ctx.progress({"done": 2, "total": 2})


class Whoami(Job, queue="reports", attempts=3):
    def perform(self, ctx: Context) -> dict[str, object]:
        return {"job_id": ctx.job_id, "queue": ctx.queue, "attempt": ctx.attempt, "max_attempts": ctx.max_attempts}


SIGNUP_AT = datetime(2029, 12, 31, 23, 59, tzinfo=UTC)


def a_signup(email: str = "ada@example.com", plan: str = "free") -> dict[str, object]:
    return {"email": email, "at": SIGNUP_AT, "address": {"street": "1 Main St", "city": "Paris"}, "plan": plan}


# -- inspecting what was enqueued --------------------------------------------------------


def test_assert_enqueued_matches_only_the_given_fields(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup(plan="pro"))

    found = fake_queue.assert_enqueued(Signup, email="ada@example.com")

    assert [job.plan for job in found] == ["pro"]


def test_assert_enqueued_compares_typed_and_json_values(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup())

    fake_queue.assert_enqueued(Signup, at=SIGNUP_AT, address=Address(street="1 Main St", city="Paris"))
    fake_queue.assert_enqueued(Signup, address={"street": "1 Main St", "city": "Paris"})


def test_assert_enqueued_checks_the_count(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup(email="a@example.com"))
    Signup.enqueue(**a_signup(email="b@example.com"))

    fake_queue.assert_enqueued(Signup, count=2, plan="free")
    with pytest.raises(AssertionError, match=r"expected 1 × accounts.signup"):
        fake_queue.assert_enqueued(Signup, count=1, plan="free")


def test_a_failed_assert_enqueued_lists_what_was_enqueued(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup(email="ada@example.com"))

    with pytest.raises(AssertionError) as info:
        fake_queue.assert_enqueued(Signup, email="bob@example.com")

    message = str(info.value)
    assert "expected accounts.signup with {'email': 'bob@example.com'}, found 0" in message
    assert "enqueued:\n  accounts.signup" in message
    assert "ada@example.com" in message


def test_a_failed_assert_enqueued_says_when_nothing_was_enqueued(fake_queue: FakeQueue) -> None:
    with pytest.raises(AssertionError, match="nothing was enqueued"):
        fake_queue.assert_enqueued(Signup, email="ada@example.com")


def test_assert_enqueued_refuses_a_field_the_job_does_not_have(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup())

    with pytest.raises(AssertionError, match="has no field"):
        fake_queue.assert_enqueued(Signup, emial="ada@example.com")


def test_refute_enqueued(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup(email="ada@example.com"))

    fake_queue.refute_enqueued(Signup, email="bob@example.com")
    fake_queue.refute_enqueued(Mark)
    with pytest.raises(AssertionError, match=r"expected no accounts.signup with \{'email': 'ada@example.com'\}"):
        fake_queue.refute_enqueued(Signup, email="ada@example.com")


def test_refute_enqueued_refuses_a_field_the_job_does_not_have(fake_queue: FakeQueue) -> None:
    Signup.enqueue(**a_signup(email="ada@example.com"))

    with pytest.raises(AssertionError, match="has no field"):
        fake_queue.refute_enqueued(Signup, emial="ada@example.com")


def test_enqueued_returns_typed_instances_that_went_through_json(fake_queue: FakeQueue) -> None:
    original = Signup(**a_signup())
    original.enqueue()

    (stored,) = fake_queue.enqueued(Signup)

    assert stored == original
    assert stored is not original
    assert isinstance(stored.address, Address)
    assert stored.at == SIGNUP_AT
    assert stored.at.tzinfo is not None
    assert fake_queue.enqueued(Mark) == []


def test_an_oversized_payload_is_refused_and_nothing_is_recorded(fake_queue: FakeQueue) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        Attachment.enqueue(file_name="a.txt", body="x" * 500)

    error = info.value
    assert (error.job_name, error.limit) == ("files.attachment", 64)
    assert error.size > 500
    assert error.largest[0] == ("body", 502)
    assert "files.attachment" in str(error)
    assert f"payload is {error.size} bytes, over the limit of 64 bytes" in str(error)
    assert "body (502 bytes)" in str(error)
    assert fake_queue.backend.log == []
    assert fake_queue.enqueued(Attachment) == []


def test_an_invalid_payload_is_refused_and_nothing_is_recorded(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValidationError) as info:
        Signup.enqueue(**{**a_signup(), "at": "not a date"})

    assert info.value.errors()[0]["loc"] == ("at",)
    assert fake_queue.backend.log == []


def test_unknown_payload_fields_are_refused(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValidationError, match="emial"):
        Signup.enqueue(**a_signup(), emial="typo@example.com")

    assert fake_queue.backend.log == []


def test_enqueue_many_validates_every_item_before_sending_any(fake_queue: FakeQueue) -> None:
    with pytest.raises(ValidationError):
        Mark.enqueue_many([{"label": "ok"}, {"label": 123}])

    assert fake_queue.backend.log == []


def test_enqueue_many_takes_instances_and_mappings(fake_queue: FakeQueue, recorder: Recorder) -> None:
    handles = Mark.enqueue_many([Mark(label="a"), {"label": "b"}])

    assert len({h.id for h in handles}) == 2
    assert [job.label for job in fake_queue.enqueued(Mark)] == ["a", "b"]
    assert fake_queue.drain().succeeded == 2
    assert [h.result() for h in handles] == ["a", "b"]


def test_a_job_id_names_one_job(fake_queue: FakeQueue) -> None:
    handle = Mark.with_options(job_id="mark-1").enqueue(label="a")

    assert handle.id == "mark-1"
    with pytest.raises(ValueError, match="job_id names one job"):
        Mark.with_options(job_id="mark-2").enqueue_many([{"label": "b"}, {"label": "c"}])


# -- perform: one handler, now ------------------------------------------------------------


def test_perform_runs_one_handler_with_a_test_context(fake_queue: FakeQueue) -> None:
    result = fake_queue.perform(Whoami(), attempt=2)

    assert result == {"job_id": "test-job", "queue": "reports", "attempt": 2, "max_attempts": 3}
    assert fake_queue.backend.log == []


def test_perform_lets_the_handler_exception_through(fake_queue: FakeQueue, recorder: Recorder) -> None:
    with pytest.raises(RuntimeError, match="planned failure 1"):
        fake_queue.perform(Flaky(failures=1))

    assert recorder.attempts == [1]  # run once: perform neither retries nor dead-letters
    assert fake_queue.all_enqueued() == [] and fake_queue.dead_letters() == []


def test_perform_uses_the_registry_effective_options() -> None:
    registry = Registry([Whoami], Specs(queues={"reports": QueueSpec()}, jobs={"reports.whoami": {"attempts": 7}}))

    result = FakeQueue(registry).perform(Whoami())

    assert result["max_attempts"] == 7


def test_a_catalog_job_runs_against_the_resources_given_to_the_fake_queue(
    fake_queue: FakeQueue, tmp_path: Path
) -> None:
    catalog = jobs.resources.CatalogSettings(
        database_url=f"sqlite:///{tmp_path / 'catalog.db'}", outbox_dir=tmp_path / "outbox", mail_from="x@y.example"
    )
    fake_queue.resources = jobs.resources.build(catalog=catalog)
    with fake_queue.resources.db.begin() as conn:
        conn.execute(jobs.store.users.insert().values(id="u1", email="ada@example.com", name="Ada Lovelace"))

    result = fake_queue.perform(jobs.email.WelcomeEmail(user_id="u1"))

    (path,) = (tmp_path / "outbox").glob("*.eml")
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert result.message_id == message["Message-ID"]
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["From"] == "x@y.example"
    assert message["Subject"] == "Welcome to ForgeStack"
    fake_queue.resources.close()


# -- drain: run everything on the fake clock ----------------------------------------------


def test_drain_runs_jobs_and_the_jobs_they_enqueue(fake_queue: FakeQueue, recorder: Recorder) -> None:
    Spawner.enqueue(children=2)

    result = fake_queue.drain()

    assert (result.succeeded, result.failed, result.retried) == (3, 0, 0)
    assert recorder.labels == ["spawner", "child-0", "child-1"]
    fake_queue.assert_enqueued(Mark, count=2)


def test_drain_with_nothing_enqueued_does_nothing(fake_queue: FakeQueue) -> None:
    start = fake_queue.clock.now()

    result = fake_queue.drain()

    assert (result.total, result.retried) == (0, 0)
    assert fake_queue.clock.now() == start


def test_drain_honours_delays_on_the_fake_clock(fake_queue: FakeQueue, recorder: Recorder, no_sleeping: None) -> None:
    start = fake_queue.clock.now()
    later = Mark.with_options(delay=timedelta(minutes=10)).enqueue(label="later")
    at_noon = Mark.with_options(at=start + timedelta(hours=12)).enqueue(label="noon")
    Mark.enqueue(label="now")
    assert later.status() is Status.SCHEDULED
    assert at_noon.status() is Status.SCHEDULED

    fake_queue.drain()

    assert recorder.runs == [
        ("now", 1, start),
        ("later", 1, start + timedelta(minutes=10)),
        ("noon", 1, start + timedelta(hours=12)),
    ]
    assert fake_queue.clock.now() == start + timedelta(hours=12)


def test_drain_runs_due_jobs_by_priority(fake_queue: FakeQueue, recorder: Recorder) -> None:
    Mark.enqueue(label="normal")
    Mark.with_options(priority=9).enqueue(label="low")
    Mark.with_options(priority=1).enqueue(label="urgent")

    fake_queue.drain()

    assert recorder.labels == ["urgent", "normal", "low"]


def test_equal_priorities_run_oldest_first(fake_queue: FakeQueue, recorder: Recorder) -> None:
    Mark.enqueue_many([{"label": label} for label in "abcd"])

    fake_queue.drain()

    assert recorder.labels == list("abcd")


def test_retries_wait_out_the_declared_backoff_on_the_fake_clock(
    fake_queue: FakeQueue, recorder: Recorder, no_sleeping: None
) -> None:
    start = fake_queue.clock.now()
    Flaky.enqueue(failures=3)

    result = fake_queue.drain()

    assert (result.succeeded, result.failed, result.retried) == (1, 0, 3)
    assert recorder.attempts == [1, 2, 3, 4]
    assert fake_queue.clock.now() - start == timedelta(seconds=60 + 600 + 3600)
    assert [at - start for _, _, at in recorder.runs] == [
        timedelta(0),
        timedelta(seconds=60),
        timedelta(seconds=660),
        timedelta(seconds=4260),
    ]


def test_drain_raises_the_handler_exception_once_attempts_are_spent(
    fake_queue: FakeQueue, recorder: Recorder, no_sleeping: None
) -> None:
    Flaky.enqueue(failures=99)

    with pytest.raises(RuntimeError, match="planned failure 4"):
        fake_queue.drain()

    assert recorder.attempts == [1, 2, 3, 4]


def test_without_raising_drain_counts_the_failure_and_dead_letters_the_job(
    fake_queue: FakeQueue, recorder: Recorder, no_sleeping: None
) -> None:
    handle = Flaky.enqueue(failures=99)

    result = fake_queue.drain(raise_on_failure=False)

    assert (result.succeeded, result.failed, result.retried) == (0, 1, 3)
    (dead,) = fake_queue.dead_letters()
    assert (dead.id, dead.name, dead.reason) == (handle.id, "billing.flaky", Reason.EXHAUSTED)
    assert dead.error == "RuntimeError: planned failure 4"
    assert dead.payload == {"failures": 99}
    assert [a.attempt for a in dead.attempts] == [1, 2, 3, 4]
    assert handle.status() is Status.FAILED
    with pytest.raises(JobFailed, match="planned failure 4"):
        handle.result()


def test_unrecoverable_dead_letters_at_once(fake_queue: FakeQueue, recorder: Recorder) -> None:
    start = fake_queue.clock.now()
    Doomed.enqueue()

    result = fake_queue.drain(raise_on_failure=False)

    assert (result.succeeded, result.failed, result.retried) == (0, 1, 0)
    assert recorder.attempts == [1]
    assert fake_queue.dead_letters()[0].reason is Reason.UNRECOVERABLE
    assert fake_queue.clock.now() == start


def test_unrecoverable_is_raised_by_drain(fake_queue: FakeQueue, recorder: Recorder) -> None:
    Doomed.enqueue()

    with pytest.raises(Unrecoverable, match="the account was deleted"):
        fake_queue.drain()

    assert len(fake_queue.dead_letters()) == 1


def test_retry_later_does_not_use_up_an_attempt(fake_queue: FakeQueue, recorder: Recorder, no_sleeping: None) -> None:
    start = fake_queue.clock.now()
    handle = Snooze.enqueue()  # attempts=1: a counted retry would dead-letter it

    result = fake_queue.drain()

    assert (result.succeeded, result.failed, result.retried) == (1, 0, 1)
    assert recorder.attempts == [1, 1]
    assert fake_queue.clock.now() - start == timedelta(seconds=30)
    assert handle.result() == 1


# -- handles ---------------------------------------------------------------------------


def test_a_handle_reports_status_and_a_typed_result(fake_queue: FakeQueue, recorder: Recorder) -> None:
    handle = Flaky.enqueue(failures=0)
    assert handle.status() is Status.QUEUED
    with pytest.raises(ResultTimeout):
        handle.result()

    fake_queue.drain()

    assert handle.status() is Status.SUCCEEDED
    result = handle.result()
    assert isinstance(result, Total)
    assert result == Total(attempt=1, amount=42)


def test_a_handle_of_an_unknown_id_is_unknown(fake_queue: FakeQueue) -> None:
    handle = Mark.with_options(job_id="known").enqueue(label="a")

    assert handle.status() is Status.QUEUED
    assert JobHandle(fake_queue.client, "unknown", Mark).status() is Status.UNKNOWN


def test_progress_is_recorded(fake_queue: FakeQueue) -> None:
    handle = Progressing.enqueue()
    assert handle.progress() is None

    fake_queue.drain()

    assert handle.progress() == {"done": 2, "total": 2}


def test_clear_forgets_what_was_enqueued(fake_queue: FakeQueue, recorder: Recorder) -> None:
    Mark.enqueue(label="a")

    fake_queue.clear()

    assert fake_queue.enqueued(Mark) == []
    assert fake_queue.drain().total == 0
    assert recorder.runs == []


def test_a_field_named_like_an_assertion_option_can_be_matched_with_where(fake_queue: FakeQueue) -> None:
    from forgejobs import Job

    class Tally(Job, queue="reports"):
        count: int

        def perform(self, ctx: Context) -> None:
            pass

    Tally.enqueue(count=3)
    fake_queue.assert_enqueued(Tally, {"count": 3})
    fake_queue.refute_enqueued(Tally, {"count": 4})


def test_an_explicit_job_id_is_enqueued_once_on_the_fake_queue(fake_queue: FakeQueue) -> None:
    from forgejobs import Job

    class Receipt(Job, queue="email"):
        order: str

        def perform(self, ctx: Context) -> None:
            pass

    first = Receipt.with_options(job_id="receipt-1").enqueue(order="1")
    again = Receipt.with_options(job_id="receipt-1").enqueue(order="1")
    assert again.existing and not first.existing
    assert len(fake_queue.enqueued(Receipt)) == 1


def test_job_logs_are_kept_per_job(fake_queue: FakeQueue) -> None:
    from tests.samplejobs.basic import Progressing

    handle = Progressing.enqueue()
    fake_queue.drain()
    assert [line.split(" ", 2)[2] for line in handle.logs()] == ["halfway", "done"]
