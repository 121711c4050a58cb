"""Backoff that sees the error: `backoff.custom(fn)` with `fn(attempt, error)` waits by what went wrong
(longer after a 429 than after a 500), one-argument functions keep working, and `raise RetryLater(...)
from exc` keeps its cause in the attempt's recorded error. The fake queue and a real worker agree, as
both run jobs through `forgejobs.execution`.

The last tests start a worker with this module as its job package, so every job here is on `fast`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from forgejobs import Client, Context, Job, Reason, Registry, RetryLater, Status, Unrecoverable, backoff, use_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.deadletter import MemoryDeadLetters
from forgejobs.errors import JobStalled, JobTimeout
from forgejobs.execution import Retry, Runtime, decide_stalled
from forgejobs.specs import load_specs
from forgejobs.testing import FakeQueue
from tests.conftest import WorkerProcess, wait_for

TOO_MANY = 0.4  # seconds to wait after a 429
SERVER_ERROR = 0.05  # after anything else


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def by_status(attempt: int, error: BaseException) -> float:
    """A remote that says 429 needs more time than one that failed with a 500."""
    if isinstance(error, HTTPError) and error.status == 429:
        return TOO_MANY * attempt
    return SERVER_ERROR


def linear(attempt: int) -> float:
    return 10.0 * attempt


class CallRemote(Job, queue="fast", attempts=3, backoff=backoff.custom(by_status)):
    """Attempt n fails with `statuses[n - 1]`."""

    statuses: list[int]

    def perform(self, ctx: Context) -> None:
        raise HTTPError(self.statuses[ctx.attempt - 1])


class OldStyle(Job, queue="fast", attempts=3, backoff=backoff.custom(linear)):
    def perform(self, ctx: Context) -> None:
        raise HTTPError(429)


class Relay(Job, queue="fast", attempts=1):
    """The first run meets a 429 and asks to run again later, from that error; the next run gives up."""

    marker: str  # a file: present once the first run happened

    def perform(self, ctx: Context) -> None:
        marker = Path(self.marker)
        if not marker.exists():
            marker.touch()
            try:
                raise HTTPError(429)
            except HTTPError as exc:
                raise RetryLater(delay=0.05) from exc
        raise Unrecoverable("the remote is gone")


# -- the strategy ---------------------------------------------------------------------------------


def test_a_two_argument_function_gets_the_error() -> None:
    strategy = backoff.custom(by_status)

    assert strategy.sees_error
    assert strategy.delay(2, HTTPError(429)) == 2 * TOO_MANY
    assert strategy.delay(2, HTTPError(500)) == SERVER_ERROR


def test_a_one_argument_function_gets_the_attempt_only() -> None:
    strategy = backoff.custom(linear)

    assert not strategy.sees_error
    assert strategy.delay(3, HTTPError(429)) == 30.0


@pytest.mark.parametrize(
    ("fn", "sees_error"),
    [
        (lambda attempt, error=None: 1.0, True),
        (lambda *args: 1.0, True),
        (lambda attempt, *rest: 1.0, True),
        (lambda attempt, *, scale=2: 1.0, False),
        (max, False),  # a builtin whose signature Python cannot read: one argument
    ],
)
def test_the_signature_decides_whether_the_error_is_passed(fn: Callable[..., float], sees_error: bool) -> None:
    assert backoff.custom(fn).sees_error is sees_error


@pytest.mark.parametrize("fn", [lambda: 1.0, lambda attempt, error, extra: 1.0, lambda attempt, *, error: 1.0])
def test_a_function_that_takes_neither_form_is_refused_where_it_is_declared(fn: Callable[..., float]) -> None:
    with pytest.raises(ValidationError, match=r"must take \(attempt\) or \(attempt, error\)"):
        backoff.custom(fn)


def test_a_nan_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        backoff.custom(lambda attempt: float("nan")).delay(1)


# -- in execution, on the fake queue --------------------------------------------------------------


def test_each_failed_attempt_waits_by_its_own_error(fake_queue: FakeQueue) -> None:
    start = fake_queue.clock.now()
    handle = CallRemote.enqueue(statuses=[429, 500, 429])

    assert fake_queue.drain(raise_on_failure=False).failed == 1

    dead = fake_queue.client.dead_letter(handle.id)
    assert [(a.attempt, a.error, a.delay) for a in dead.attempts] == [
        (1, "HTTPError: HTTP 429", TOO_MANY),
        (2, "HTTPError: HTTP 500", SERVER_ERROR),
        (3, "HTTPError: HTTP 429", 0),
    ]
    assert fake_queue.clock.now() - start == timedelta(seconds=TOO_MANY + SERVER_ERROR)


def test_a_one_argument_backoff_still_drives_the_retries(fake_queue: FakeQueue) -> None:
    handle = OldStyle.enqueue()

    fake_queue.drain(raise_on_failure=False)

    assert [a.delay for a in fake_queue.client.dead_letter(handle.id).attempts] == [10.0, 20.0, 0]


def test_a_timeout_reaches_the_backoff_as_job_timeout(fake_queue: FakeQueue) -> None:
    errors: list[BaseException] = []

    def note(attempt: int, error: BaseException) -> float:
        errors.append(error)
        return 1.0

    class Overrun(Job, queue="fast", attempts=2, backoff=backoff.custom(note), timeout=timedelta(seconds=5)):
        def perform(self, ctx: Context) -> None:
            ctx.resources.sleep(6)

    fake_queue.resources = fake_queue.clock
    Overrun.enqueue()
    fake_queue.drain(raise_on_failure=False)

    (error,) = errors  # the second attempt is the last: no backoff asked
    assert isinstance(error, JobTimeout)


def test_a_stalled_attempt_reaches_the_backoff_as_job_stalled() -> None:
    errors: list[BaseException] = []

    def note(attempt: int, error: BaseException) -> float:
        errors.append(error)
        return 7.0

    class Fragile(Job, queue="fast", attempts=3, backoff=backoff.custom(note)):
        def perform(self, ctx: Context) -> None: ...

    with FakeQueue() as queue:
        handle = Fragile.enqueue()
    envelope = queue.backend.jobs[handle.id].envelope
    runtime = Runtime(queue.registry, MemoryDeadLetters())

    outcome = decide_stalled(envelope, runtime, job_id=handle.id, queue="fast")

    assert isinstance(outcome, Retry) and outcome.delay == 7.0
    (error,) = errors
    assert isinstance(error, JobStalled) and "the worker running it stopped" in str(error)


def test_retry_later_from_an_error_records_the_cause(fake_queue: FakeQueue, tmp_path: Path) -> None:
    handle = Relay.enqueue(marker=str(tmp_path / "ran"))

    fake_queue.drain(raise_on_failure=False)

    dead = fake_queue.client.dead_letter(handle.id)
    assert [(a.attempt, a.error) for a in dead.attempts] == [
        (1, "RetryLater: retry in 0.05s (from HTTPError: HTTP 429)"),
        (1, "Unrecoverable: the remote is gone"),
    ]


def test_retry_later_without_a_cause_records_no_cause(fake_queue: FakeQueue) -> None:
    class Later(Job, queue="fast", attempts=1):
        def perform(self, ctx: Context) -> None:
            raise RetryLater(3, "not yet")

    handle = Later.enqueue()
    fake_queue.perform_one()

    stored = fake_queue.backend.jobs[handle.id]
    assert stored.history == ["RetryLater: not yet"]


# -- the same with a real worker -------------------------------------------------------------------------

redis_only = pytest.mark.redis


@pytest.fixture
def worker_client(conn: redis.Redis, tmp_path: Path) -> Iterator[tuple[Client, dict[str, str]]]:
    """A client for this module's jobs on the test's Redis database, and the environment for a worker
    that loads them (its own specs: the sample specs name jobs this module does not have)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "queues.yaml").write_text("queues:\n  fast: {concurrency: 1}\n")
    client = Client(RedisBackend(conn), Registry([CallRemote, OldStyle, Relay], load_specs(specs)))
    yield client, {"FORGEJOBS_JOBS": __name__, "FORGEJOBS_SPECS": str(specs)}
    client.close()


def _failed(client: Client, job_id: str) -> Any:
    return client.backend.state(job_id, "fast").status is Status.FAILED


@redis_only
def test_a_worker_waits_by_the_error_too(
    worker_client: tuple[Client, dict[str, str]], start_worker: Callable[..., WorkerProcess]
) -> None:
    client, env = worker_client
    start_worker("--queues", "fast", env=env)
    with use_client(client):
        handle = CallRemote.enqueue(statuses=[429, 500, 429])

    wait_for(lambda: _failed(client, handle.id), timeout=30, what="the job to be dead-lettered")

    dead = client.dead_letter(handle.id)
    assert dead.reason is Reason.EXHAUSTED
    assert [(a.attempt, a.error, a.delay) for a in dead.attempts] == [
        (1, "HTTPError: HTTP 429", TOO_MANY),
        (2, "HTTPError: HTTP 500", SERVER_ERROR),
        (3, "HTTPError: HTTP 429", 0),
    ]


@redis_only
def test_a_worker_records_the_cause_of_retry_later(
    worker_client: tuple[Client, dict[str, str]], start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    client, env = worker_client
    start_worker("--queues", "fast", env=env)
    with use_client(client):
        handle = Relay.enqueue(marker=str(tmp_path / "ran"))

    wait_for(lambda: _failed(client, handle.id), timeout=30, what="the job to be dead-lettered")

    assert [(a.attempt, a.error) for a in client.dead_letter(handle.id).attempts] == [
        (1, "RetryLater: retry in 0.05s (from HTTPError: HTTP 429)"),
        (1, "Unrecoverable: the remote is gone"),
    ]
