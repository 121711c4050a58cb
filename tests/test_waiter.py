"""The worker's waiter (forgejobs/runtime/waiter.py), one step at a time in this process: promoting due
delayed jobs, remembering when the next one falls due, and waking idle slots."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pytest
import redis

from forgejobs import Client, EnqueueOptions, Registry, Settings
from forgejobs.backends.redis import describe
from forgejobs.keys import QueueKeys
from forgejobs.runtime.state import QueueState, Slot
from forgejobs.runtime.worker import Worker
from tests.helpers import server_ms, wait_for, waiting
from tests.samplejobs.basic import Echo

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")


@pytest.fixture
def worker(settings: Settings, registry: Registry, conn: redis.Redis) -> Worker:
    """A worker of the fast queue, none of its threads started."""
    return Worker(settings, registry, queues=["fast"], connection=conn, resources=object())


def delayed(client: Client, n: int) -> list[str]:
    """`n` Echo jobs delayed by an hour, oldest first."""
    return [h.id for h in client.enqueue(Echo, [{"text": str(i)} for i in range(n)], EnqueueOptions(delay=3600))]


def idle_slot(state: QueueState) -> Slot:
    slot = Slot(state.name, 0, "an-idle-slot")
    state.idle.append(slot)
    return slot


def test_promoting_moves_due_jobs_to_their_wait_list_remembers_the_next_due_time_and_wakes_an_idle_slot(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    due, later = delayed(client, 2)
    conn.zadd(FAST.delayed, {due: server_ms(conn) - 1000})
    later_at = conn.zscore(FAST.delayed, later)
    state = worker.states["fast"]
    slot = idle_slot(state)

    worker.waiter.promote(state)

    assert waiting(conn, FAST) == [due.encode()]
    assert conn.zrange(FAST.delayed, 0, -1) == [later.encode()]
    assert state.next_due == later_at
    assert state.promoted is True
    assert slot.wake.is_set() and not state.idle


def test_promoting_with_nothing_due_moves_nothing_and_wakes_no_one(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    state = worker.states["fast"]
    slot = idle_slot(state)
    worker.waiter.promote(state)
    assert state.next_due == math.inf and state.promoted is False
    [later] = delayed(client, 1)
    worker.waiter.promote(state)
    assert state.next_due == conn.zscore(FAST.delayed, later)
    assert state.promoted is False and not slot.wake.is_set() and list(state.idle) == [slot]
    assert waiting(conn, FAST) == []


def test_one_promotion_moves_at_most_1000_jobs_and_the_rest_are_due_at_once(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    ids = delayed(client, 1001)
    past = server_ms(conn) - 1000
    conn.zadd(FAST.delayed, {job_id: past + n for n, job_id in enumerate(ids)})
    state = worker.states["fast"]

    worker.waiter.promote(state)

    assert len(waiting(conn, FAST)) == 1000
    assert conn.zrange(FAST.delayed, 0, -1) == [ids[-1].encode()]
    assert state.next_due == past + 1000  # due already: the waiter promotes again without waiting


def test_after_a_local_wait_only_queues_whose_jobs_were_promoted_wake_a_slot(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())
    fast, slow = worker.states["fast"], worker.states["slow"]
    fast_slot, slow_slot = idle_slot(fast), idle_slot(slow)
    fast.promoted = True
    worker.waiter.wake_waiting([fast, slow])
    assert fast_slot.wake.is_set() and fast.promoted is False
    assert not slow_slot.wake.is_set() and list(slow.idle) == [slow_slot]


def test_a_step_with_a_job_due_within_the_local_wait_promotes_it_and_wakes_an_idle_slot(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    [due] = delayed(client, 1)
    state = worker.states["fast"]
    worker.upkeep.refresh()  # the server clock, and the next due time as Redis has it
    conn.zadd(FAST.delayed, {due: server_ms(conn) + 50})
    state.next_due = server_ms(conn) + 50
    slot = idle_slot(state)
    stop = threading.Event()
    for _ in range(20):  # each step waits at most until the due time, then promotes
        worker.waiter.step(stop)
        if waiting(conn, FAST):
            break
    assert waiting(conn, FAST) == [due.encode()]
    assert slot.wake.is_set()


def run_waiter(worker: Worker, step: Any) -> tuple[threading.Event, threading.Thread]:
    """The waiter's loop in a thread of its own, with `step` in place of a real step."""
    worker.waiter.step = step  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=worker.waiter.run, args=(stop,))
    thread.start()
    return stop, thread


def test_the_waiter_goes_on_after_redis_fails_its_steps_and_reports_the_outage_with_the_error(
    worker: Worker, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    failing_until = time.monotonic() + 1.2  # longer than the half second after which an outage is reported
    done: list[float] = []

    def step(stop: threading.Event) -> None:
        if time.monotonic() < failing_until:
            raise redis.ConnectionError("gone")
        done.append(time.monotonic())
        stop.wait(0.05)

    stop, thread = run_waiter(worker, step)
    wait_for(lambda: done, timeout=10, what="a step after the outage")
    stop.set()
    thread.join(5)
    said = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert said == [f"worker {worker.name}: Redis at {describe(conn)} cannot be reached (gone); retrying"]
    assert not thread.is_alive()


def test_the_waiter_goes_on_after_a_step_fails_otherwise_and_logs_it_with_its_traceback(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    calls: list[int] = []

    def step(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a step")
        stop.wait(0.05)

    stop, thread = run_waiter(worker, step)
    wait_for(lambda: len(calls) >= 2, timeout=10, what="a step after the failure")
    stop.set()
    thread.join(5)
    [record] = [r for r in caplog.records if r.name == "forgejobs.worker"]
    assert record.getMessage() == "worker waiter failed; trying again"
    assert record.exc_info is not None and str(record.exc_info[1]) == "a bug in a step"


def test_a_stopped_waiter_removes_its_wake_key_and_ends_even_when_redis_refuses_that(
    worker: Worker, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.zadd(worker.waiter.wake_key, {"poke": 0})
    stop = threading.Event()
    stop.set()
    worker.waiter.run(stop)
    assert not conn.exists(worker.waiter.wake_key)

    def refuse(*keys: Any) -> int:
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(worker.waiter.connection, "delete", refuse)
    worker.waiter.run(stop)  # returns: a stopping waiter has nothing left to do


def test_the_waiter_wakes_an_idle_slot_for_each_job_enqueued_and_each_delayed_job_that_falls_due(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the idle slots' own look made a minute apart, only the waiter can have woken them."""
    import forgejobs.runtime.worker as worker_module

    monkeypatch.setattr(worker_module, "IDLE_POLL", 60.0)
    worker = Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    try:
        for n in range(3):
            wait_for(lambda: worker.states["fast"].has_idle() and worker.waiter._in_redis, what="an idle slot")
            assert Echo.enqueue(text=str(n)).result(timeout=10).text == str(n)
        soon = Echo.with_options(delay=0.5).enqueue(text="due in half a second")
        assert soon.result(timeout=10).text == "due in half a second"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"


def test_a_step_that_finds_it_was_poked_looks_again_and_can_be_poked_meanwhile(worker: Worker) -> None:
    worker.waiter.poke()  # poked before the step looked
    worker.waiter.step(threading.Event())  # returns at once, to look again
    worker.waiter.poke("fast")  # a slot going idle in between: no error
    assert worker.waiter._local.is_set()
