"""What a worker's slot records for a job it takes, run in this process: a record it cannot read is
dead-lettered with what it held, counted and logged, and never run; a job interrupted outside its
handler's outcome is counted under the name its envelope gives."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from forgejobs import Client, Context, Job, Reason, Registry, Settings, Status, Unrecoverable, backoff
from forgejobs.backends.redis import RedisBackend
from forgejobs.client import use_client
from forgejobs.errors import BackendUnavailable
from forgejobs.keys import QueueKeys
from forgejobs.metrics import MetricsReader
from forgejobs.runtime.state import Slot
from forgejobs.runtime.worker import Worker
from forgejobs.specs import QueueSpec, Specs
from tests.helpers import (
    SAMPLE_JOBS,
    SAMPLE_SPECS,
    burst,
    counters,
    failed_in_last_minutes,
    free_port,
    server_ms,
    wait_for,
    worker_log,
)
from tests.samplejobs.basic import Doomed, Echo, Flaky, LimitedMark, Progressing, Slow, Snooze

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")
SLOW = QueueKeys("forgejobs", "slow")
WEEK_MS = 7 * 86_400_000


@pytest.fixture
def worker(settings: Settings, registry: Registry, conn: redis.Redis) -> Iterator[Worker]:
    """A started worker of the fast queue (one slot), stopped at the end."""
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    yield worker
    worker.stop()
    assert worker.join(30), "the worker did not stop"


def finished_at(conn: redis.Redis, keys: QueueKeys, job_id: str) -> int:
    """When the job's outcome was recorded (server ms, the record's `ft`)."""
    stored = conn.hget(keys.job(job_id), "ft")
    assert stored is not None, f"{job_id} has no finish time"
    return int(stored)


def push(conn: redis.Redis, job_id: str) -> None:
    """Put `job_id` on the fast queue's wait list and tell idle slots."""
    conn.rpush(FAST.wait(5), job_id)
    conn.zadd(FAST.marker, {"0": 0})


@pytest.mark.parametrize(
    ("write", "error", "raw"),
    [
        (lambda c, k: c.set(k, "not a hash"), "corrupt record: a string, not a hash", "not a hash"),
        (lambda c, k: c.hset(k, mapping={"s": "queued"}), "corrupt record: no envelope", '{"s": "queued"}'),
        (lambda c, k: None, "corrupt record: no envelope (an id on a wait list with no record)", ""),
    ],
    ids=["string", "hash-without-envelope", "missing"],
)
def test_a_record_a_slot_cannot_read_is_dead_lettered_with_what_it_held_and_the_slot_goes_on(
    worker: Worker,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    write: Any,
    error: str,
    raw: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    write(conn, FAST.job("garbled"))
    before = server_ms(conn)
    push(conn, "garbled")
    after = Echo.enqueue(text="after")

    assert after.result(timeout=10).text == "after"  # the slot went on
    letter = client.dead_letter("garbled")
    assert (letter.id, letter.queue, letter.reason, letter.error, letter.raw) == (
        "garbled",
        "fast",
        Reason.CORRUPT,
        error,
        raw,
    )
    assert worker_log(caplog, logging.ERROR) == [f"dead-lettered garbled from fast: {error}"]
    assert counters(conn, "fast") == {
        ("dead_lettered", "?", "corrupt"): 1,
        ("enqueued", "fast.echo", None): 1,
        ("succeeded", "fast.echo", None): 1,
    }
    assert failed_in_last_minutes(conn, "fast") == 1
    assert worker.stats.counts == {"dead": 1, "succeeded": 1}
    # kept as failed for a week (the failure TTL of a job whose type is not known): scored by when it expires
    expires = conn.zscore(FAST.failed, "garbled")
    assert expires is not None and before + WEEK_MS <= expires <= server_ms(conn) + WEEK_MS
    if conn.type(FAST.job("garbled")) == b"hash":
        assert expires == finished_at(conn, FAST, "garbled") + WEEK_MS
    assert conn.hlen(FAST.active) == 0


def test_a_record_redis_refuses_to_show_is_dead_lettered_with_the_error_in_its_place(
    worker: Worker, client: Client, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forgejobs.runtime.worker as module

    def refuse(connection: Any, key: Any) -> tuple[str, str]:
        raise redis.ResponseError("READONLY You can't read against a read only replica.")

    monkeypatch.setattr(module, "read_record", refuse)
    conn.set(FAST.job("unreadable"), "x")
    push(conn, "unreadable")
    letter = wait_for(lambda: client.backend.dead_letters.get("unreadable"), what="the dead letter")
    assert letter.error == "corrupt record: a ?, not a hash"  # type: ignore[attr-defined]
    assert letter.raw == "<unreadable: READONLY You can't read against a read only replica.>"  # type: ignore[attr-defined]


class Late(BaseException):
    """Raised by a guard as the handler returns (a timeout firing just too late), outside what execution
    turns into an outcome."""


def late_on_the_first_run() -> Any:
    runs: list[float] = []

    @contextlib.contextmanager
    def guard(seconds: float) -> Iterator[None]:
        yield
        runs.append(seconds)
        if len(runs) == 1:
            raise Late()

    return guard


def test_a_job_that_fails_outside_its_handler_runs_again_as_the_same_attempt_a_second_later_counted_by_its_name(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(
        settings, registry, queues=["fast"], connection=conn, resources=object(), guard=late_on_the_first_run()
    )
    handle = Echo.enqueue(text="twice")
    worker.start(give_up_after=10)
    try:
        assert handle.result(timeout=15).attempt == 1
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert worker_log(caplog, logging.ERROR) == [
        f"fast {handle.id}: failed outside its handler; running it again in 1 s"
    ]
    assert counters(conn, "fast") == {
        ("enqueued", "fast.echo", None): 1,
        ("retried", "fast.echo", None): 1,
        ("succeeded", "fast.echo", None): 1,
    }
    assert failed_in_last_minutes(conn, "fast") == 1
    started = [e.at for e in client.backend.events.read() if e.job_id == handle.id and e.kind.value == "started"]
    assert len(started) == 2 and (started[1] - started[0]).total_seconds() >= 1.0


# -- a slot's life: paused queues, a dead thread, an error from Redis, a lease lost while it ran ---------------


def test_a_burst_ends_with_a_paused_queue_s_jobs_left_and_names_it(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    signals_as_found: None,
) -> None:
    caplog.set_level(logging.WARNING, logger="forgejobs.worker")
    client.pause("fast")
    held = [Echo.enqueue(text=str(n)) for n in range(2)]
    slept = Slow.enqueue(path=str(tmp_path / "notes"), seconds=0)
    worker = Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())
    stats = worker.run(burst=True, horizon=0)
    assert slept.result(timeout=1) == "slept"
    assert stats.counts == {"succeeded": 1}
    assert [h.status() for h in held] == [Status.QUEUED, Status.QUEUED]
    assert worker_log(caplog, logging.WARNING) == ["fast is paused: 2 job(s) left for when it is resumed"]


def test_a_burst_worker_gives_up_on_a_redis_it_cannot_reach_naming_it_and_how_long_it_tried(
    registry: Registry, signals_as_found: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{port}/0", jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS, enqueue_timeout=2
    )
    worker = Worker(settings, registry, queues=["fast"], resources=object())
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as refused:
        worker.run(burst=True)
    message = str(refused.value)
    assert message.startswith(f"Redis at redis://127.0.0.1:{port}/0 cannot be reached (")
    assert message.endswith("); gave up after 2s")
    assert time.monotonic() - started < 5  # it gives up rather than wait on (a pause never takes it far past 2 s)
    said = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert said and said[0].startswith(f"worker {worker.name}: Redis at redis://127.0.0.1:{port}/0 cannot be reached (")


@pytest.fixture
def crashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Exceptions that ended a thread (threading.excepthook), as `thread name: exception`."""
    seen: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(f"{args.thread.name}: {args.exc_value!r}"))
    return seen


def fail_first_fetch(worker: Worker, exc: BaseException) -> list[str]:
    """Make the first fetch of `worker`'s slots raise `exc`; later ones run. Returns the identities that
    fetched, in order."""
    real = worker.scripts.fetch
    seen: list[str] = []

    def fetch(*, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        seen.append(str(args[1]))
        if len(seen) == 1:
            raise exc
        return real(keys=keys, args=args)

    worker.scripts.fetch = fetch  # type: ignore[method-assign]
    return seen


def test_a_slot_whose_thread_died_is_replaced_under_a_fresh_identity_and_its_queue_is_served(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    crashed: list[str],
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    fail_first_fetch(worker, RuntimeError("a bug in the slot loop"))
    worker.start(give_up_after=10)
    try:
        state = worker.states["fast"]
        first = state.slots[0].ident
        assert first == f"{worker.name}/fast/0/1"
        wait_for(lambda: state.slots[0].ident != first, what="the dead slot to be replaced")
        assert state.slots[0].ident == f"{worker.name}/fast/0/2"
        assert state.retired_idents == [first]
        assert Echo.enqueue(text="served").result(timeout=10).text == "served"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert crashed == [f"{first}: RuntimeError('a bug in the slot loop')"]
    assert worker_log(caplog, logging.ERROR) == [f"worker slot {first} stopped (died or stuck); starting another"]


def test_a_slot_that_ran_its_max_jobs_is_done_and_not_replaced(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    first, second = Echo.enqueue(text="1"), Echo.enqueue(text="2")
    worker.start(max_jobs=1, give_up_after=10)
    try:
        [slot] = worker.states["fast"].slots
        assert first.result(timeout=10).text == "1"
        wait_for(lambda: slot.thread is not None and not slot.thread.is_alive(), what="the slot to end")
        worker.supervise()
        assert worker.states["fast"].slots == [slot] and slot.jobs == 1
        assert second.status() is Status.QUEUED
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert worker_log(caplog, logging.ERROR) == []


def test_a_fetch_redis_answers_with_an_error_is_logged_and_tried_again_under_a_fresh_identity(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    fetched = fail_first_fetch(worker, redis.ResponseError("BUSY Redis is busy running a script"))
    handle = Echo.enqueue(text="after the error")
    worker.start(give_up_after=10)
    first, fresh = f"{worker.name}/fast/0/1", f"{worker.name}/fast/0/2"
    try:
        assert handle.result(timeout=10).text == "after the error"
        # the reply to a take is lost: the slot goes on as a new identity, whose lease its next fetch registers
        assert conn.zscore(FAST.workers, fresh) is not None
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert worker_log(caplog, logging.ERROR) == [f"{first}: fetch failed: BUSY Redis is busy running a script"]
    assert fetched[:2] == [first, fresh]


def test_a_job_whose_lease_was_recovered_while_it_ran_is_not_recorded_and_the_slot_goes_on_as_a_new_identity(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.WARNING, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["slow"], connection=conn, resources=object())
    path = tmp_path / "notes"
    handle = Slow.enqueue(path=str(path), seconds=0.5)
    worker.start(give_up_after=10)
    try:
        [slot] = worker.states["slow"].slots
        wait_for(lambda: slot.in_handler, what="the job to start")
        first = slot.ident
        # as if recovery had given it to another slot, which holds a lease
        conn.zadd(SLOW.workers, {"another-slot": server_ms(conn) + 60_000})
        conn.hset(SLOW.active, handle.id, "another-slot|0")
        wait_for(lambda: slot.ident != first, what="the slot to take a fresh identity")
        second = Slow.enqueue(path=str(path), seconds=0)
        assert second.result(timeout=10) == "slept"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert worker_log(caplog, logging.WARNING) == [
        f"slow {handle.id}: its lease had been recovered (the worker was too slow or cut off); this run's outcome "
        "(done) is not recorded, the job runs again"
    ]
    assert slot.ident == f"{worker.name}/slow/0/2"
    assert handle.status() is Status.RUNNING  # still the other slot's, to recover
    assert conn.hget(SLOW.active, handle.id) == b"another-slot|0"
    assert counters(conn, "slow")[("succeeded", "slow.slow", None)] == 1  # the second job only


# -- how long finished jobs are kept, and what counts as pending ---------------------------------------------


class Briefly(Job, queue="brief", attempts=1, result_ttl=timedelta(minutes=5), failure_ttl=timedelta(hours=2)):
    """Kept 5 minutes when it succeeds, 2 hours when it fails."""

    fail: bool = False

    def perform(self, ctx: Context) -> str:
        if self.fail:
            raise Unrecoverable("told to fail")
        return "done"


class Later(Job, queue="brief", attempts=2, backoff=backoff.fixed(3600)):
    """Fails; its retry waits an hour."""

    def perform(self, ctx: Context) -> None:
        raise RuntimeError("not now")


class Twice(Job, queue="brief", attempts=2, backoff=backoff.fixed(0)):
    """Fails both of its attempts, the second at once."""

    def perform(self, ctx: Context) -> None:
        raise RuntimeError(f"attempt {ctx.attempt} failed")


BRIEF = QueueKeys("forgejobs", "brief")


def test_a_job_dead_lettered_on_its_last_attempt_has_that_attempt_in_its_job_line(
    redis_url: str, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    registry = Registry([Twice], Specs(queues={"brief": QueueSpec()}))
    worker = Worker(Settings(redis_url=redis_url), registry, queues=["brief"], connection=conn, resources=object())
    with use_client(Client(RedisBackend(conn), registry)):
        handle = Twice.enqueue()
        worker.start(give_up_after=10)
        try:
            wait_for(lambda: handle.status() is Status.FAILED, what="the job to fail")
        finally:
            worker.stop()
            assert worker.join(30), "the worker did not stop"
    lines = [(r.attempt, r.outcome) for r in caplog.records if hasattr(r, "outcome")]  # type: ignore[attr-defined]
    assert lines == [(1, "retried"), (2, "dead_lettered")]


def test_a_failed_attempt_s_retry_waits_its_backoff_on_the_server_s_clock(redis_url: str, conn: redis.Redis) -> None:
    registry = Registry([Later], Specs(queues={"brief": QueueSpec()}))
    worker = Worker(Settings(redis_url=redis_url), registry, queues=["brief"], connection=conn, resources=object())
    with use_client(Client(RedisBackend(conn), registry)):
        handle = Later.enqueue()
        before = server_ms(conn)
        worker.start(give_up_after=10)
        try:
            wait_for(lambda: handle.status() is Status.SCHEDULED, what="the retry to be scheduled")
        finally:
            worker.stop()
            assert worker.join(30), "the worker did not stop"
    due = conn.zscore(BRIEF.delayed, handle.id)
    assert due is not None and before + 3_600_000 <= due <= server_ms(conn) + 3_600_000


def test_a_finished_job_is_kept_for_its_own_type_s_result_or_failure_ttl(redis_url: str, conn: redis.Redis) -> None:
    registry = Registry([Briefly], Specs(queues={"brief": QueueSpec()}))
    own = Client(RedisBackend(conn), registry)
    worker = Worker(Settings(redis_url=redis_url), registry, queues=["brief"], connection=conn, resources=object())
    with use_client(own):
        done, failed = Briefly.enqueue(), Briefly.enqueue(fail=True)
        worker.start(give_up_after=10)
        try:
            assert done.result(timeout=10) == "done"
            wait_for(lambda: failed.status() is Status.FAILED, what="the failing job to fail")
        finally:
            worker.stop()
            assert worker.join(30), "the worker did not stop"
    assert conn.zscore(BRIEF.done, done.id) == finished_at(conn, BRIEF, done.id) + 5 * 60_000
    assert conn.zscore(BRIEF.failed, failed.id) == finished_at(conn, BRIEF, failed.id) + 2 * 3_600_000


def test_a_job_type_the_worker_does_not_know_is_kept_an_hour_when_done_and_a_week_when_failed(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    assert (worker.result_ttl_ms("nobody.knows"), worker.failure_ttl_ms(None)) == (3_600_000, WEEK_MS)
    assert (worker.result_ttl_ms("fast.echo"), worker.failure_ttl_ms("fast.echo")) == (3_600_000, WEEK_MS)


def test_pending_counts_waiting_jobs_and_delayed_ones_due_within_the_horizon(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    Echo.enqueue(text="now")
    Echo.with_options(delay=3600).enqueue(text="in an hour")
    assert worker.pending() == 1
    assert worker.pending(horizon=3597) == 1  # due in 3600 s (less the moment since): not within 3597 s
    assert worker.pending(horizon=3610) == 2
    assert not worker.drained() and worker.drained(horizon=0) is False  # one waits


def test_a_job_due_in_a_moment_is_pending_and_keeps_a_queue_from_being_drained_only_within_a_horizon(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    soon = Echo.with_options(delay=3600).enqueue(text="soon")
    conn.zadd(FAST.delayed, {soon.id: server_ms(conn) + 900})  # due in 0.9 s: a horizon of 1 s would take it
    assert (worker.pending(), worker.pending(horizon=10)) == (0, 1)
    assert (worker.drained(), worker.drained(horizon=10)) == (True, False)


def test_a_burst_ends_when_nothing_is_due_within_its_horizon_and_leaves_later_jobs_delayed(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, signals_as_found: None
) -> None:
    later = Echo.with_options(delay=3600).enqueue(text="in an hour")
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    burst(worker, horizon=3597)  # due in 3600 s, less the moment since the enqueue: not within 3597 s
    assert later.status() is Status.SCHEDULED


def test_a_burst_waits_for_a_job_still_running_on_a_queue_paused_meanwhile(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    tmp_path: Path,
    signals_as_found: None,
) -> None:
    """The job still running may make work for the other queues: the burst goes on serving them."""
    worker = Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())
    running = Slow.enqueue(path=str(tmp_path / "notes"), seconds=4)
    follow_ups: list[Any] = []

    def pause_then_enqueue() -> None:
        wait_for(lambda: any(s.in_handler for s in worker.states["slow"].slots), what="the slow job to start")
        client.pause("slow")
        wait_for(lambda: worker.states["slow"].paused, what="the worker to see the pause")
        time.sleep(0.5)  # longer than the three idle checks (0.15 s) after which a drained burst ends
        follow_ups.append(Echo.enqueue(text="made while the paused queue's job ran"))

    helper = threading.Thread(target=pause_then_enqueue)
    helper.start()
    burst(worker, within=30)
    helper.join(10)
    assert running.status() is Status.SUCCEEDED
    assert [h.status() for h in follow_ups] == [Status.SUCCEEDED]


@pytest.mark.parametrize(
    ("envelope", "name"),
    [
        (b'{"id":"1","name":"fast.echo","payload":{"name":"inner"}}', "fast.echo"),  # the first: the job's own
        (b'"name":"at.the.start"', "at.the.start"),
        (b'{"name":"caf\xc3\xa9\xff"}', "caf\u00e9\ufffd"),  # bytes that are not UTF-8 are replaced
        (b'{"id":"1","payload":{}}', "?"),  # no name
        (b'{"id":"1","name":"cut', "?"),  # a name that never ends
        (b"", "?"),
    ],
)
def test_a_job_s_name_is_read_from_its_envelope_without_parsing_it(envelope: bytes, name: str) -> None:
    assert Worker._name_hint(envelope) == name


def test_a_slot_holds_a_job_for_its_type_s_timeout_before_it_counts_as_stuck_or_300_s_for_an_unknown_one(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    assert worker._timeout_hint(b'{"name":"slow.times-out","payload":{}}') == 1.0
    assert worker._timeout_hint(b'{"name":"slow.slow-first-attempt"}') == 120.0
    assert worker._timeout_hint(b'{"name":"nobody.knows"}') == 300.0
    assert worker._timeout_hint(b"not json at all") == 300.0


@pytest.mark.parametrize(("horizon", "left"), [(3610, 1), (3597, 0)])
def test_a_burst_counts_a_paused_queue_s_delayed_jobs_due_within_its_horizon_as_left(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    signals_as_found: None,
    horizon: float,
    left: int,
) -> None:
    caplog.set_level(logging.WARNING, logger="forgejobs.worker")
    client.pause("fast")
    Echo.with_options(delay=3600).enqueue(text="in an hour")
    burst(Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object()), horizon=horizon)
    expected = [f"fast is paused: {left} job(s) left for when it is resumed"] if left else []
    assert worker_log(caplog, logging.WARNING) == expected


def test_a_worker_run_for_one_job_a_slot_takes_no_second(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, signals_as_found: None
) -> None:
    handles = [Echo.enqueue(text=str(n)) for n in range(3)]
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    stats = worker.run(max_jobs=1)
    assert stats.counts == {"succeeded": 1}
    assert [h.status() for h in handles] == [Status.SUCCEEDED, Status.QUEUED, Status.QUEUED]


def test_a_worker_run_without_burst_waits_for_work_until_stopped(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, signals_as_found: None
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    handles: list[Any] = []

    def enqueue_later_then_stop() -> None:
        wait_for(lambda: worker.states["fast"].has_idle(), what="the slot to go idle")
        time.sleep(0.5)  # longer than the three idle checks (0.15 s) after which a burst would have ended
        handles.append(Echo.enqueue(text="late"))
        wait_for(lambda: handles[0].status() is Status.SUCCEEDED, what="the late job to run")
        worker.stop()

    helper = threading.Thread(target=enqueue_later_then_stop)
    helper.start()
    stats = worker.run()
    helper.join(10)
    assert stats.counts == {"succeeded": 1}


def test_a_burst_looks_ten_seconds_ahead_by_default(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, signals_as_found: None
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    later = Echo.with_options(delay=3600).enqueue(text="in 10.9 s")
    conn.zadd(FAST.delayed, {later.id: server_ms(conn) + 10_900})  # not within 10 s, within 11 s
    stats = worker.run(burst=True)
    assert stats.counts == {} and later.status() is Status.SCHEDULED


def test_each_attempt_s_job_line_names_its_outcome_and_the_attempt_that_ended(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    echo = Echo.enqueue(text="hi")
    flaky = Flaky.enqueue(path=str(tmp_path / "flaky"), failures=1)
    doomed = Doomed.enqueue(path=str(tmp_path / "doomed"))
    snoozed = Snooze.enqueue(path=str(tmp_path / "snooze"))
    progressing = Progressing.enqueue()
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    try:
        for handle in (echo, flaky, snoozed, progressing):
            handle.result(timeout=15)
        wait_for(lambda: doomed.status() is Status.FAILED, what="the doomed job to fail")
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    lines = [
        (r.job_id, r.job_name, r.attempt, r.outcome, r.error)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "forgejobs.worker" and hasattr(r, "outcome")
    ]
    assert sorted(lines, key=str) == sorted(
        [
            (echo.id, "fast.echo", 1, "succeeded", None),
            (flaky.id, "fast.flaky", 1, "retried", "RuntimeError: planned failure 1"),
            (flaky.id, "fast.flaky", 2, "succeeded", None),
            (doomed.id, "fast.doomed", 1, "dead_lettered", "Unrecoverable: the account was deleted"),
            (snoozed.id, "fast.snooze", 1, "deferred", "RetryLater: remote said 429"),
            (snoozed.id, "fast.snooze", 1, "succeeded", None),
            (progressing.id, "fast.progressing", 1, "succeeded", None),
        ],
        key=str,
    )
    assert worker.stats.counts == {"succeeded": 4, "retried": 2, "dead": 1}
    minutes = MetricsReader(conn, queues=["fast"]).per_minute("fast", minutes=2)
    assert (sum(m.succeeded for m in minutes), sum(m.failed for m in minutes)) == (4, 2)  # snoozing fails nothing
    # and each transition is in the event stream, with the job's name, queue and attempt
    events = [e for e in client.backend.events.read(count=1000) if e.kind.value != "enqueued"]  # type: ignore[attr-defined]
    seen = [(e.job_id, e.kind.value, e.name, e.queue, e.attempt) for e in events]
    for handle, name, transitions in (
        (echo, "fast.echo", [("started", 1), ("completed", 1)]),
        (flaky, "fast.flaky", [("started", 1), ("failed", 1), ("retrying", 1), ("started", 2), ("completed", 2)]),
        (doomed, "fast.doomed", [("started", 1), ("dead_lettered", 1)]),
        (progressing, "fast.progressing", [("started", 1), ("progress", 1), ("progress", 1), ("completed", 1)]),
    ):
        assert [s for s in seen if s[0] == handle.id] == [(handle.id, k, name, "fast", a) for k, a in transitions]
    retrying = next(e for e in events if e.job_id == flaky.id and e.kind.value == "retrying")
    assert retrying.data["next"] == 2
    assert [e.data for e in events if e.job_id == progressing.id and e.kind.value == "progress"] == [
        {"progress": 50},
        {"progress": {"done": 2, "total": 2}},
    ]


def test_a_worker_run_without_burst_waits_for_an_unreachable_redis_past_the_enqueue_timeout_until_stopped(
    registry: Registry, signals_as_found: None
) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS, enqueue_timeout=1
    )
    worker = Worker(settings, registry, queues=["fast"], resources=object())
    timer = threading.Timer(2.5, worker.stop)
    timer.start()
    try:
        stats = worker.run()  # a burst would give up after 1 s; a worker waits for Redis
    finally:
        timer.cancel()
    assert stats.counts == {}


def test_a_burst_goes_on_after_redis_fails_its_drained_checks_and_its_paused_report(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    signals_as_found: None,
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    real_pending = worker.backend.pending
    failing_until: list[float] = []

    def pending(queues: Any, horizon_ms: float = 0.0) -> int:
        if not failing_until:
            failing_until.append(time.monotonic() + 0.8)
        if time.monotonic() < failing_until[0]:
            raise redis.ConnectionError("gone for a moment")
        return real_pending(queues, horizon_ms)

    monkeypatch.setattr(worker.backend, "pending", pending)
    monkeypatch.setattr(worker, "_say_paused", lambda horizon: (_ for _ in ()).throw(redis.ConnectionError("gone")))
    stats = burst(worker)  # nothing to run: the slot idles while the burst's own checks fail
    assert stats.counts == {}


def test_join_says_whether_the_slots_ended_within_its_timeout_and_waits_without_one(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    worker = Worker(settings, registry, queues=["slow"], connection=conn, resources=object())
    Slow.enqueue(path=str(tmp_path / "notes"), seconds=1)
    worker.start(give_up_after=10)
    wait_for(lambda: any(s.in_handler for s in worker.states["slow"].slots), what="the job to start")
    worker.stop()
    assert worker.join(0.1) is False  # the job still runs
    assert worker.join() is True  # no timeout: until it has ended
    assert not any(t.is_alive() for t in worker._threads)


def test_the_run_time_histogram_holds_each_run_once_in_seconds_and_no_wait_a_rate_limit_imposed(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    slept = Slow.enqueue(path=str(tmp_path / "slow"), seconds=0.3)
    limited = [LimitedMark.enqueue(path=str(tmp_path / "limited"), label=str(n)) for n in range(7)]
    seen: list[tuple[str, str]] = []
    worker = Worker(
        settings,
        registry,
        queues=["slow", "limited"],
        connection=conn,
        resources=object(),
        on_outcome=lambda name, outcome: seen.append((name, type(outcome).__name__)),
    )
    worker.start(give_up_after=10)
    try:
        assert slept.result(timeout=10) == "slept"
        for handle in limited:
            handle.result(timeout=15)
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    histograms = MetricsReader(conn, queues=["slow", "limited"]).snapshot().histograms
    run = {(h.queue, h.job_name): h for h in histograms if h.name == "run"}
    assert run[("slow", "slow.slow")].count == 1 and 0.3 <= run[("slow", "slow.slow")].sum_seconds < 5
    assert run[("limited", "limited.limited-mark")].count == 7  # the waits the rate limit imposed ran nothing
    assert counters(conn, "limited")[("rate_limited", "limited.limited-mark", None)] >= 1
    # the worker's own on_outcome hook hears of each outcome under the job's name
    assert ("slow.slow", "Succeeded") in seen
    assert seen.count(("limited.limited-mark", "Succeeded")) == 7


def test_a_slot_stuck_in_a_job_past_its_timeout_is_replaced_and_retires_once_its_job_ends(
    settings: Settings,
    registry: Registry,
    client: Client,
    conn: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import forgejobs.runtime.state as state_module

    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    monkeypatch.setattr(state_module, "STUCK_GRACE", 0.0)
    worker = Worker(settings, registry, queues=["slow"], connection=conn, resources=object())
    monkeypatch.setattr(worker, "_timeout_hint", lambda envelope: 0.3)  # stuck 0.3 s into a job
    stuck = Slow.enqueue(path=str(tmp_path / "notes"), seconds=2)
    worker.start(give_up_after=10)
    try:
        state = worker.states["slow"]
        [old] = state.slots
        wait_for(lambda: state.slots[0] is not old, what="the stuck slot to be replaced")
        fresh = state.slots[0]
        assert (fresh.index, old.retired, state.retired_idents) == (0, True, [old.ident])
        assert stuck.result(timeout=10) == "slept"  # the stuck slot still records its job's outcome
        assert old.thread is not None
        old.thread.join(5)
        assert not old.thread.is_alive()  # and then takes no other
        after = Slow.enqueue(path=str(tmp_path / "notes"), seconds=0)
        assert after.result(timeout=10) == "slept"  # the fresh slot serves the queue
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert worker_log(caplog, logging.ERROR) == [f"worker slot {old.ident} stopped (died or stuck); starting another"]


def test_a_stopping_worker_replaces_no_slot(
    settings: Settings, registry: Registry, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    idents = [s.ident for s in worker._all_slots()]
    worker.stop()
    assert worker.join(30), "the worker did not stop"
    worker.supervise()  # the slots ended because the worker stops: none is dead
    assert [s.ident for s in worker._all_slots()] == idents
    assert worker_log(caplog, logging.ERROR) == []


def test_supervising_goes_on_past_a_slot_that_ran_its_max_jobs_to_a_dead_one(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["chaos"], connection=conn, resources=object())
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    done = Slot("chaos", 0, "done", thread=ended, jobs=1)
    dead = Slot("chaos", 1, "dead", thread=ended, jobs=0)
    worker.states["chaos"].slots[:] = [done, dead]
    worker._max_jobs = 1
    try:
        worker.supervise()
        slots = worker.states["chaos"].slots
        assert slots[0] is done and slots[1] is not dead and slots[1].index == 1
    finally:
        worker.stop()
        worker.join(10)


def test_an_idle_slot_waits_on_its_queue_s_idle_list_until_woken_then_leaves_it(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    state = worker.states["fast"]
    slot = Slot("fast", 0, "idle-slot")
    idling = threading.Thread(target=worker._idle, args=(slot, state, 30.0))
    idling.start()
    wait_for(lambda: list(state.idle) == [slot], what="the slot to be on the idle list")
    assert state.wake_one() is True
    idling.join(5)
    assert not idling.is_alive() and not state.idle and not slot.wake.is_set()
    worker._idle(slot, state, 0.05)  # nobody wakes it: it leaves the idle list when its time is up
    assert not state.idle and not slot.wake.is_set()


def test_a_started_worker_names_its_slot_threads_by_identity_and_says_what_it_serves(
    settings: Settings, registry: Registry, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    worker = Worker(settings, registry, queues=["fast", "keyed"], connection=conn, resources=object())
    assert worker.describe() == "fast×1, keyed×4"
    worker.start(give_up_after=10)
    try:
        for slot in worker._all_slots():
            assert slot.thread is not None and (slot.thread.name, slot.thread.daemon) == (slot.ident, True)
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert f"worker {worker.name} serving fast×1, keyed×4" in worker_log(caplog, logging.INFO)


def test_a_paused_queue_s_slot_waits_without_failing_and_serves_the_queue_once_it_is_resumed(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, crashed: list[str]
) -> None:
    client.pause("fast")
    handle = Echo.enqueue(text="after the pause")
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    try:
        wait_for(lambda: worker.states["fast"].paused, what="the worker to see the pause")
        wait_for(lambda: worker.states["fast"].has_idle(), what="the paused slot to wait")
        assert handle.status() is Status.QUEUED
        client.resume("fast")
        assert handle.result(timeout=10).text == "after the pause"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert crashed == []


def test_a_slot_registers_its_lease_with_its_first_fetch(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    real = worker.scripts.fetch
    first: list[Any] = []

    def fetch(*, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        if not first:
            first.append(args)
            reply = real(keys=keys, args=args)
            first.append(conn.zscore(FAST.workers, str(args[1])))
            return reply
        return real(keys=keys, args=args)

    worker.scripts.fetch = fetch  # type: ignore[method-assign]
    worker.start(give_up_after=10)
    try:
        wait_for(lambda: len(first) == 2, what="the first fetch")
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert first[1] is not None  # the lease is there when the first fetch returns, before any heartbeat


def fail_fetch_number(worker: Worker, number: int, exc: BaseException) -> list[tuple[str, str]]:
    """Make the `number`th fetch of `worker` (1-based) raise `exc`; the others run. Returns each fetch's
    identity and the mode of the finish it carried ("" for none)."""
    real = worker.scripts.fetch
    seen: list[tuple[str, str]] = []

    def fetch(*, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        seen.append((str(args[1]), str(args[3])))
        if len(seen) == number:
            raise exc
        return real(keys=keys, args=args)

    worker.scripts.fetch = fetch  # type: ignore[method-assign]
    return seen


def test_a_slot_goes_on_after_its_fetch_cannot_reach_redis(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    fail_fetch_number(worker, 1, redis.ConnectionError("gone for a moment"))
    handle = Echo.enqueue(text="after the blip")
    worker.start(give_up_after=10)
    try:
        assert handle.result(timeout=10).text == "after the blip"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"


def test_an_outcome_whose_fetch_redis_refused_is_recorded_under_the_identity_that_took_the_job(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis
) -> None:
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    handle = Echo.enqueue(text="recorded once")
    seen = fail_fetch_number(worker, 2, redis.ResponseError("BUSY Redis is busy running a script"))
    worker.start(give_up_after=10)
    try:
        assert handle.result(timeout=10).text == "recorded once"
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    first, fresh = f"{worker.name}/fast/0/1", f"{worker.name}/fast/0/2"
    # took the job as 1; its outcome's fetch was refused, so the slot became 2 and recorded it as 1
    assert seen[:3] == [(first, ""), (first, "done"), (first, "done")]
    assert seen[3][0] == fresh
    assert worker.stats.counts == {"succeeded": 1} and handle.status() is Status.SUCCEEDED
