"""Job declarations: class options checked at class creation, backoff strategies, enqueue options."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from forgejobs import Context, EnqueueOptions, Job, OptionsError, backoff
from forgejobs.job import kebab
from forgejobs.testing import FakeQueue

# -- class options ----------------------------------------------------------------


def declare(class_name: str = "SendReport", **options: Any) -> type[Job]:
    """Create a concrete job class with `options` as its class keywords."""

    def perform(self: Job, ctx: Context) -> None:
        return None

    def body(namespace: dict[str, Any]) -> None:
        namespace.update({"__module__": __name__, "__qualname__": class_name, "perform": perform})

    return types.new_class(class_name, (Job,), kwds=options, exec_body=body)


def test_a_typo_in_an_option_names_the_class_and_the_option() -> None:
    with pytest.raises(OptionsError) as info:
        declare("SendReport", queue="reports", atempts=3)

    message = str(info.value)
    assert "SendReport" in message
    assert "atempts" in message
    assert "attempts" in message  # the valid options are listed
    assert "atempts (did you mean 'attempts'?)" in message


def test_an_option_far_from_every_valid_one_gets_no_suggestion() -> None:
    with pytest.raises(OptionsError) as info:
        declare("SendReport", queue="reports", zzzzzz=1)

    assert "unknown option(s) zzzzzz; valid options are" in str(info.value)


@pytest.mark.parametrize(("keyword", "value"), [("frozen", True), ("extra", "allow")])
def test_a_pydantic_config_keyword_is_not_accepted_as_an_option(keyword: str, value: object) -> None:
    with pytest.raises(OptionsError, match=keyword):
        declare("SendReport", **{"queue": "reports", keyword: value})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", 0),
        ("priority", 11),
        ("attempts", 0),
        ("timeout", -1),
        ("timeout", "soon"),
        ("queue", "Has Spaces"),
        ("max_payload_bytes", 10),
    ],
)
def test_a_bad_option_value_names_the_class_and_the_option(option: str, value: object) -> None:
    with pytest.raises(OptionsError) as info:
        declare("SendReport", **{"queue": "reports", option: value})

    message = str(info.value)
    assert message.startswith("SendReport:")
    assert f"{option}={value!r}" in message


def test_durations_accept_seconds_and_text() -> None:
    job = declare("SendReport", queue="reports", timeout="90s", result_ttl=120, failure_ttl="2d")

    options = job.job_options()

    assert options.timeout == timedelta(seconds=90)
    assert options.result_ttl == timedelta(minutes=2)
    assert options.failure_ttl == timedelta(days=2)


def test_a_concrete_job_needs_a_queue() -> None:
    with pytest.raises(OptionsError, match=r"SendReport: needs a queue="):
        declare("SendReport", attempts=2)


def test_a_concrete_job_must_define_perform() -> None:
    with pytest.raises(OptionsError, match=r"NoHandler: must define perform"):

        class NoHandler(Job, queue="reports"):
            report_id: str


def test_the_default_name_is_the_queue_and_the_kebab_cased_class_name() -> None:
    class WelcomeEmail(Job, queue="email"):
        def perform(self, ctx: Context) -> None: ...

    assert WelcomeEmail.job_name() == "email.welcome-email"


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [("WelcomeEmail", "welcome-email"), ("HTTPPing", "http-ping"), ("Sync2Users", "sync2-users"), ("Job", "job")],
)
def test_kebab(class_name: str, expected: str) -> None:
    assert kebab(class_name) == expected


def test_an_explicit_name_wins_over_the_derived_one() -> None:
    job = declare("WelcomeEmail", queue="email", name="email.welcome-v2")

    assert job.job_name() == "email.welcome-v2"


def test_abstract_bases_share_options_with_subclasses_but_not_their_name() -> None:
    class EmailJob(Job, abstract=True, queue="email", attempts=7, priority=2, name="email.base"):
        pass

    class WelcomeEmail(EmailJob):
        def perform(self, ctx: Context) -> None: ...

    class ResetPassword(EmailJob, priority=1):
        def perform(self, ctx: Context) -> None: ...

    assert EmailJob.is_abstract()
    assert not WelcomeEmail.is_abstract()
    assert WelcomeEmail.job_options().queue == "email"
    assert WelcomeEmail.job_options().attempts == 7
    assert WelcomeEmail.job_options().priority == 2
    assert WelcomeEmail.job_name() == "email.welcome-email"
    assert ResetPassword.job_options().priority == 1
    assert ResetPassword.job_options().attempts == 7
    assert ResetPassword.job_name() == "email.reset-password"


def test_an_abstract_base_needs_no_queue_and_has_no_job_name() -> None:
    class Base(Job, abstract=True, attempts=2):
        pass

    with pytest.raises(OptionsError, match="abstract"):
        Base.job_name()


def test_abstract_is_not_inherited() -> None:
    class Base(Job, abstract=True, queue="email"):
        pass

    with pytest.raises(OptionsError, match="Concrete: must define perform"):

        class Concrete(Base):
            pass


# -- backoff strategies ------------------------------------------------------------


def test_fixed_backoff_waits_the_same_after_every_attempt() -> None:
    strategy = backoff.fixed(5)

    assert [strategy.delay(n) for n in (1, 2, 10)] == [5, 5, 5]


def test_exponential_backoff_multiplies_by_the_factor() -> None:
    strategy = backoff.exponential(2, factor=3)

    assert [strategy.delay(n) for n in (1, 2, 3, 4)] == [2, 6, 18, 54]


def test_exponential_backoff_defaults_to_doubling() -> None:
    strategy = backoff.exponential(1)

    assert [strategy.delay(n) for n in (1, 2, 3)] == [1, 2, 4]


def test_exponential_backoff_is_capped_at_max_seconds() -> None:
    strategy = backoff.exponential(1, max_seconds=10)

    assert [strategy.delay(n) for n in (3, 4, 5, 30)] == [4, 8, 10, 10]


def test_exponential_jitter_stays_within_its_bounds_and_spreads() -> None:
    strategy = backoff.exponential(2, factor=3, jitter=0.25)

    delays = [strategy.delay(3) for _ in range(200)]  # 18 s before jitter

    assert all(13.5 <= d <= 22.5 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("kwargs", [{"seconds": 0}, {"seconds": 1, "factor": 0.5}, {"seconds": 1, "jitter": 1.5}])
def test_exponential_refuses_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        backoff.Exponential(**kwargs)


def test_schedule_repeats_its_last_value() -> None:
    strategy = backoff.schedule(5, 300, 1800)

    assert [strategy.delay(n) for n in (1, 2, 3, 4, 9)] == [5, 300, 1800, 1800, 1800]


@pytest.mark.parametrize("delays", [(), (1, -2)])
def test_schedule_needs_non_negative_delays(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError, match="non-negative"):
        backoff.schedule(*delays)


def test_custom_backoff_calls_the_function_with_the_failed_attempt() -> None:
    strategy = backoff.custom(lambda attempt: attempt * 1.5)

    assert strategy.delay(4) == 6.0


def test_custom_backoff_refuses_a_negative_delay() -> None:
    strategy = backoff.custom(lambda attempt: -1)

    with pytest.raises(ValueError, match="negative delay"):
        strategy.delay(2)


def test_a_backoff_strategy_declared_on_a_class_is_kept() -> None:
    job = declare("SendReport", queue="reports", backoff=backoff.schedule(1, 2))

    assert job.job_options().backoff == backoff.schedule(1, 2)


def test_a_backoff_that_is_not_a_strategy_is_refused() -> None:
    with pytest.raises(OptionsError, match="SendReport: option backoff"):
        declare("SendReport", queue="reports", backoff=5)


# -- enqueue options -----------------------------------------------------------------


def test_delay_and_at_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="'delay' or 'at', not both"):
        EnqueueOptions(delay=10, at=datetime(2030, 1, 1, tzinfo=UTC))


def test_a_naive_at_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        EnqueueOptions(at=datetime(2030, 1, 1))


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        EnqueueOptions(delay=-1)


@pytest.mark.parametrize("job_id", ["", "has space", "slash/no", "x" * 129])
def test_a_job_id_outside_the_pattern_is_refused(job_id: str) -> None:
    with pytest.raises(ValidationError, match="job_id"):
        EnqueueOptions(job_id=job_id)


@pytest.mark.parametrize("job_id", ["a", "order-42_retry", "X" * 128])
def test_a_job_id_inside_the_pattern_is_accepted(job_id: str) -> None:
    assert EnqueueOptions(job_id=job_id).job_id == job_id


@pytest.mark.parametrize("priority", [0, 11])
def test_an_enqueue_priority_outside_1_to_10_is_refused(priority: int) -> None:
    with pytest.raises(ValidationError, match="priority"):
        EnqueueOptions(priority=priority)


def test_due_at_follows_delay_or_at() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    at = datetime(2030, 1, 2, 3, tzinfo=timezone(timedelta(hours=3)))

    assert EnqueueOptions().due_at(now) is None
    assert EnqueueOptions(delay="5m").due_at(now) == now + timedelta(minutes=5)
    assert EnqueueOptions(at=at).due_at(now) == datetime(2030, 1, 2, tzinfo=UTC)


# -- payload fields named like options ---------------------------------------------------


class Reminder(Job, queue="reminders", priority=7):
    """A payload whose fields share names with enqueue options."""

    delay: int
    priority: str
    queue: str

    def perform(self, ctx: Context) -> str:
        return self.priority


def test_fields_named_like_options_are_payload_not_options(fake_queue: FakeQueue) -> None:
    Reminder.with_options(priority=1).enqueue(delay=3, priority="high", queue="billing")
    Reminder.enqueue(delay=0, priority="low", queue="support")

    fake_queue.assert_enqueued(Reminder, delay=3, priority="high", queue="billing")
    fake_queue.assert_enqueued(Reminder, delay=0, priority="low", queue="support")
    first, second = fake_queue.backend.log
    assert (first.queue, first.priority, first.due_at) == ("reminders", 1, None)
    assert (second.queue, second.priority, second.due_at) == ("reminders", 7, None)
