"""Regressions for bugs found in review: each test failed before its fix."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import timedelta
from functools import cached_property

import pytest
import redis
from pydantic import Field, computed_field

from forgejobs import Client, Context, Job, Reason, RetryLater, Status, backoff
from forgejobs.testing import FakeQueue
from tests.conftest import WorkerProcess, wait_for
from tests.samplejobs.basic import Echo


class Aliased(Job, queue="reports"):
    user_id: str = Field(alias="userId")

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def shout(self) -> str:
        return self.user_id.upper()

    def perform(self, ctx: Context) -> str:
        return self.shout


def test_aliased_and_computed_fields_survive_the_round_trip() -> None:
    with FakeQueue() as queue:
        handle = Aliased.enqueue(userId="u1")
        assert queue.drain().succeeded == 1
        assert handle.result() == "U1"


def test_a_huge_exponential_backoff_is_capped_not_an_overflow() -> None:
    assert backoff.exponential(1, factor=3).delay(700) == float("inf")
    assert backoff.exponential(1, factor=3, max_seconds=60).delay(700) == 60


def broken_backoff(attempt: int) -> float:
    raise ZeroDivisionError("bad strategy")


class BadBackoff(Job, queue="reports", attempts=3, backoff=backoff.custom(broken_backoff)):
    def perform(self, ctx: Context) -> None:
        raise RuntimeError("handler failed")


def test_a_backoff_that_raises_dead_letters_the_job_with_its_payload() -> None:
    with FakeQueue() as queue:
        BadBackoff.enqueue()
        assert queue.drain(raise_on_failure=False).failed == 1
        (record,) = queue.dead_letters()
        assert record.reason is Reason.EXHAUSTED and record.requeueable
        assert "handler failed" in record.error and "bad strategy" in record.error


class Snoozer(Job, queue="reports", attempts=2):
    def perform(self, ctx: Context) -> None:
        raise RetryLater(timedelta(days=10_000))


def test_retry_later_waits_are_capped_at_thirty_days() -> None:
    with FakeQueue() as queue:
        start = queue.clock.now()
        Snoozer.enqueue()
        with pytest.raises(AssertionError, match="drain stopped after 2 jobs"):
            queue.drain(max_jobs=2)
        assert queue.clock.now() - start == timedelta(days=30)


@pytest.mark.redis
def test_counting_a_queue_changes_nothing_in_it(client: Client, conn: redis.Redis) -> None:
    """`info` only reads: a dead worker's job stays where it is until a worker's recovery takes it."""
    handle = Echo.enqueue(text="x")
    conn.lrem("forgejobs:{fast}:wait:p05", 0, handle.id)
    conn.hset("forgejobs:{fast}:active", handle.id, "a-dead-slot|0")
    (counts,) = client.backend.counts(["fast"])
    assert (counts.waiting, counts.running) == (0, 1)
    assert conn.hget("forgejobs:{fast}:active", handle.id) == b"a-dead-slot|0"
    assert handle.status() is Status.RUNNING


@pytest.mark.redis
def test_sigterm_during_child_start_up_still_stops_the_worker(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker(
        "--queues",
        "fast",
        "--processes",
        "--concurrency",
        "3",
        env={"FORGEJOBS_RESOURCES": "tests.samplejobs.slowresources:build"},
        ready=False,
    )
    # The supervisor logs this once it has forked the children, which then spend 2 s in their
    # resources factory: the signal lands inside that window, whatever the machine's load.
    wait_for(lambda: "(processes) serving" in worker.log(), timeout=20, what="the children to be forked")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert "aborting" not in worker.log()


@pytest.mark.redis
def test_delayed_jobs_keep_starting_on_time_when_a_worker_stops(
    client: Client, start_worker: Callable[..., WorkerProcess], conn: redis.Redis
) -> None:
    """No worker owns promotion: when one stops, the others promote due jobs (no lock to wait out)."""
    first = start_worker("--queues", "fast", "--concurrency", "1")
    start_worker("--queues", "fast", "--concurrency", "1")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    enqueued = time.time()
    handle = Echo.with_options(delay=1).enqueue(text="late?")
    assert handle.result(timeout=15).text == "late?"
    assert time.time() - enqueued < 3
