"""The worker's stop and abort paths, run in this process: a first signal lets the running job finish, a
second one interrupts it and puts it back to run the same attempt again; `run_inline` (a `mode: processes`
child's one slot in the main thread) and the identity a slot's lease names."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from forgejobs import ForgeJobsError, Registry, Settings
from forgejobs.keys import QueueKeys
from forgejobs.runtime.state import Slot
from forgejobs.runtime.worker import Worker, connect, slot_pid
from tests.helpers import notes, wait_for, waiting, worker_log
from tests.samplejobs.basic import Echo, Slow, TimesOut

pytestmark = pytest.mark.redis

SLOW = QueueKeys("forgejobs", "slow")


def no_timeout(seconds: float) -> contextlib.AbstractContextManager[object]:
    """A guard that never interrupts: the job's own timeout must not end it before the test does."""
    return contextlib.nullcontext()


def stored_attempt(conn: redis.Redis, keys: QueueKeys, job_id: str) -> int:
    stored = conn.hget(keys.job(job_id), "d")
    assert isinstance(stored, bytes), f"no envelope stored for {job_id}"
    return int(json.loads(stored)["attempt"])


@pytest.fixture
def slow_worker(settings: Settings, registry: Registry, conn: redis.Redis) -> Iterator[Worker]:
    """A worker of the slow queue (one slot) whose jobs run past their timeout, stopped at the end."""
    worker = Worker(settings, registry, queues=["slow"], connection=conn, resources=object(), guard=no_timeout)
    yield worker
    worker.abort()
    worker.join(10)


def running(worker: Worker) -> Slot:
    """The slot of `worker` once it is inside a job's handler."""
    slot = wait_for(
        lambda: next((s for s in worker.states["slow"].slots if s.in_handler), None), what="the job to start"
    )
    assert isinstance(slot, Slot)
    return slot


def test_a_slot_s_identity_names_the_process_holding_the_lease_whatever_dots_the_host_name_has(
    settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    assert slot_pid("web-1.eu.example.com.4242.a1b2c3/mail.outbound/0/7") == 4242
    assert slot_pid(b"localhost.17.ffffff/slow/3/1") == 17
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}\.{os.getpid()}\.[0-9a-f]{{6}}", worker.name)
    assert worker._new_ident("fast", 3) == f"{worker.name}/fast/3/1"
    assert slot_pid(worker._new_ident("fast", 0)) == os.getpid()


def test_a_worker_s_connection_waits_15_s_on_a_silent_redis_and_5_s_to_connect(redis_url: str) -> None:
    connection = connect(redis_url)
    try:
        options = connection.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (15, 5)
        assert connection.ping()
    finally:
        connection.close()


def test_a_first_signal_lets_the_running_job_finish_and_takes_no_other(
    slow_worker: Worker, client: Any, conn: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="forgejobs.worker")
    path = tmp_path / "notes"
    first = Slow.enqueue(path=str(path), seconds=0.5)
    slow_worker.start(give_up_after=10)
    running(slow_worker)
    second = Slow.enqueue(path=str(path), seconds=0.5)
    slow_worker._on_signal(signal.SIGTERM, None)
    assert slow_worker.join(30), "the worker did not stop after its job"
    assert first.result(timeout=1) == "slept"
    assert [n["event"] for n in notes(path)] == ["start", "finish"]
    assert waiting(conn, SLOW) == [second.id.encode()]
    assert worker_log(caplog) == [
        f"signal {signal.SIGTERM}: finishing running jobs, then exiting (send again to abort them)"
    ]


def test_a_second_signal_aborts_the_running_job_which_waits_at_the_front_to_run_the_same_attempt_again(
    slow_worker: Worker, client: Any, conn: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    path = tmp_path / "notes"
    spinning = TimesOut.enqueue(path=str(path), spin=True)  # runs Python code for 30 s on its first attempt
    slow_worker.start(give_up_after=10)
    running(slow_worker)
    behind = TimesOut.enqueue(path=str(path))
    slow_worker._on_signal(signal.SIGINT, None)
    slow_worker._on_signal(signal.SIGINT, None)
    assert slow_worker.join(10), "the aborted job did not end"
    assert waiting(conn, SLOW) == [spinning.id.encode(), behind.id.encode()]
    assert stored_attempt(conn, SLOW, spinning.id) == 1
    assert conn.hlen(SLOW.active) == 0
    assert [n["attempt"] for n in notes(path)] == [1]
    warned = worker_log(caplog, logging.WARNING)
    assert warned[-1] == f"signal {signal.SIGINT} again: aborting running jobs; they will run again"
    lines = [(r.job_id, r.attempt, r.outcome) for r in caplog.records if hasattr(r, "outcome")]  # type: ignore[attr-defined]
    assert lines == [(spinning.id, 1, "aborted")]


def test_abort_interrupts_only_a_slot_inside_a_handler_not_one_taking_a_job(
    settings: Settings,
    registry: Registry,
    conn: redis.Redis,
    client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot interrupted in the middle of a fetch would die holding the job the fetch gave it."""
    crashed: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(f"{args.thread}: {args.exc_type}"))
    worker = Worker(settings, registry, queues=["slow", "fast"], connection=conn, resources=object(), guard=no_timeout)
    fetching, release = threading.Event(), threading.Event()
    real_fetch = worker.scripts.fetch

    def fetch(*, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        if "/fast/" in str(args[1]) and spinning_started.is_set():
            fetching.set()
            release.wait(10)
        return real_fetch(keys=keys, args=args)

    spinning_started = threading.Event()
    worker.scripts.fetch = fetch  # type: ignore[method-assign]
    worker.start(give_up_after=10)
    spinning = TimesOut.enqueue(path=str(tmp_path / "notes"), spin=True)
    running(worker)
    spinning_started.set()
    taken = Echo.enqueue(text="taken by the fetch abort meets")
    assert fetching.wait(10), "the fast slot did not fetch"
    fast = worker.states["fast"].slots[0]
    worker.abort()  # the slow slot's job is interrupted; the fast slot's fetch is not
    release.set()
    assert worker.join(10), "the worker did not stop"
    assert fast.thread is not None and not fast.thread.is_alive()
    assert crashed == []
    assert waiting(conn, SLOW) == [spinning.id.encode()]
    assert taken.result(timeout=1).text == "taken by the fetch abort meets"  # run: a take is never cut short


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_run_inline_serves_one_slot_in_the_main_thread_until_a_signal_then_a_second_aborts_its_job(
    settings: Settings,
    registry: Registry,
    conn: redis.Redis,
    client: Any,
    tmp_path: Path,
    signals_as_found: None,
) -> None:
    path = tmp_path / "notes"
    done = Slow.enqueue(path=str(path), seconds=0.01)
    held = Slow.enqueue(path=str(path), seconds=20)  # sleeps in the main thread until a signal ends it
    worker = Worker(settings, registry, queues=["slow"], connection=conn, resources=object(), guard=no_timeout)
    installed: dict[str, Any] = {}

    def signal_twice_once_the_second_job_runs() -> None:
        wait_for(lambda: len(notes(path)) == 3, what="the second job to start")
        installed["interrupt"] = signal.getsignal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: worker._signals == 1, what="the first signal to be handled")  # two at once count once
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=signal_twice_once_the_second_job_runs)
    sender.start()
    stats = worker.run_inline()
    sender.join(10)
    assert installed["interrupt"] is signal.SIG_IGN  # a terminal's Ctrl+C reaches the supervisor, not the slot
    assert done.result(timeout=1) == "slept"
    assert [n["event"] for n in notes(path)] == ["start", "finish", "start"]
    assert waiting(conn, SLOW) == [held.id.encode()]
    assert stored_attempt(conn, SLOW, held.id) == 1
    assert stats.counts["succeeded"] == 1
    [slot] = worker.states["slow"].slots
    assert (slot.thread, slot.index, slot.ident) == (threading.main_thread(), 0, f"{worker.name}/slow/0/1")


@pytest.mark.parametrize("queues", [["slow", "fast"], ["slow"]])
def test_run_inline_refuses_more_than_one_slot_or_a_thread_other_than_the_main_one(
    settings: Settings, registry: Registry, conn: redis.Redis, queues: list[str]
) -> None:
    worker = Worker(settings, registry, queues=queues, connection=conn, resources=object())
    refused: list[BaseException] = []

    def call() -> None:
        try:
            worker.run_inline()
        except ForgeJobsError as exc:
            refused.append(exc)

    if len(queues) > 1 and threading.current_thread() is threading.main_thread():
        call()
    else:
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(10)
    assert [str(e) for e in refused] == ["run_inline runs exactly one slot, in the main thread"]
    assert all(not state.slots for state in worker.states.values())
