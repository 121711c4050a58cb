"""A job whose worker dies mid-job is retried (or dead-lettered as stalled), never lost.

The lease scripts are driven directly first (two slots, one of which stops renewing), then real
`forgejobs worker` processes are SIGKILLed mid-job.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from forgejobs import Client, JobHandle, Reason, Registry, Status
from forgejobs.execution import STALL_ERROR
from forgejobs.keys import QueueKeys
from forgejobs.runtime.scripts import Scripts
from forgejobs.runtime.upkeep import Upkeep
from forgejobs.runtime.worker import Worker, slot_pid
from forgejobs.settings import Settings
from tests.conftest import WorkerProcess
from tests.helpers import notes, wait_for
from tests.samplejobs.basic import Slow, SlowFirstAttempt

pytestmark = pytest.mark.redis

SLOW = QueueKeys("forgejobs", "slow")


def fetch(scripts: Scripts, slot: str, lease_ms: int = 10_000, finish: tuple[str, str, str, int] | None = None) -> Any:
    """One fetch.lua call for `slot` on the slow queue: optionally finish (mode, id, payload, ms), then take."""
    mode, job_id, payload, ms = finish or ("", "", "", 0)
    args = [SLOW.job_prefix, slot, lease_ms, mode, job_id, payload, ms, 5, "1", 0, "1", SLOW.ck_prefix, ""]
    args += [int(time.time() * 1000), 0, "slow", 0]  # no events
    return scripts.fetch(keys=[*SLOW.standard, "forgejobs:events"], args=args)


def recover(scripts: Scripts) -> list[int]:
    return scripts.recover(keys=[*SLOW.standard, SLOW.stalled], args=[SLOW.job_prefix, SLOW.ck_prefix])


def test_a_taken_job_is_in_the_active_hash_under_its_slot_never_in_no_structure(
    client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    handle = Slow.enqueue(path=str(tmp_path / "x"), seconds=0)
    lost, job_id, envelope, priority, _ck, status = fetch(Scripts(conn), "slot-a")
    assert (lost, job_id.decode(), status, priority) == (0, handle.id, b"ok", 5)
    assert json.loads(envelope)["id"] == handle.id
    assert conn.llen(SLOW.wait(5)) == 0
    assert conn.hget(SLOW.active, handle.id).startswith(b"slot-a|")
    assert handle.status() is Status.RUNNING


def test_recovery_takes_back_only_the_jobs_of_slots_whose_lease_ran_out(
    client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    scripts = Scripts(conn)
    alive = Slow.enqueue(path=str(tmp_path / "a"), seconds=0)
    dead = Slow.enqueue(path=str(tmp_path / "b"), seconds=0)
    fetch(scripts, "alive-slot", lease_ms=60_000)
    fetch(scripts, "dead-slot", lease_ms=1)
    time.sleep(0.01)

    moved, on_stalled = recover(scripts)

    assert (moved, on_stalled) == (1, 1)
    assert conn.lrange(SLOW.stalled, 0, -1) == [dead.id.encode()]
    assert conn.hexists(SLOW.active, alive.id) and not conn.hexists(SLOW.active, dead.id)
    assert recover(scripts) == [0, 1]  # a second pass (another worker) moves nothing twice


def test_a_slot_whose_lease_was_recovered_cannot_record_an_outcome(
    client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    scripts = Scripts(conn)
    handle = Slow.enqueue(path=str(tmp_path / "a"), seconds=0)
    fetch(scripts, "slow-slot", lease_ms=1)
    time.sleep(0.01)
    recover(scripts)  # the slot looked dead; its job is on the stalled list now
    waiting = Slow.enqueue(path=str(tmp_path / "b"), seconds=0)

    late = ("done", handle.id, '"late"', 1)
    lost, taken, _envelope, _priority, _ck, status = fetch(scripts, "slow-slot", finish=late)

    assert (lost, taken, status) == (1, None, b"lost")  # and it takes nothing under the identity taken for dead
    assert conn.lrange(SLOW.wait(5), 0, -1) == [waiting.id.encode()]
    assert conn.hget(SLOW.job(handle.id), "s") == b"queued"  # not "succeeded": it will run again
    assert conn.lrange(SLOW.stalled, 0, -1) == [handle.id.encode()]


def test_a_job_in_the_active_hash_of_a_slot_that_never_had_a_lease_is_recovered(
    client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    """Whatever wrote it, an active entry with no live lease behind it is taken back."""
    handle = Slow.enqueue(path=str(tmp_path / "a"), seconds=0)
    conn.lrem(SLOW.wait(5), 0, handle.id)
    conn.hset(SLOW.active, handle.id, "a-slot-nobody-knows|0")
    assert recover(Scripts(conn))[0] == 1


def test_stalled_jobs_are_settled_once_as_their_next_attempt(
    client: Client, registry: Registry, conn: redis.Redis, tmp_path: Path
) -> None:
    scripts = Scripts(conn)
    handle = Slow.enqueue(path=str(tmp_path / "a"), seconds=0)
    fetch(scripts, "dead-slot", lease_ms=1)
    time.sleep(0.01)
    recover(scripts)
    worker = Worker(Settings(), registry, queues=["slow"], connection=conn, resources=object())
    upkeep = Upkeep(worker)
    state = worker.states["slow"]

    upkeep.settle(state)
    upkeep.settle_one(state, handle.id.encode())  # a second settler finds nothing to do

    assert conn.llen(SLOW.stalled) == 0
    assert conn.lrange(SLOW.wait(5), 0, -1) == [handle.id.encode()]  # backoff fixed(0): straight back
    envelope = json.loads(conn.hget(SLOW.job(handle.id), "d"))
    assert envelope["attempt"] == 2 and envelope["history"][0]["error"] == STALL_ERROR
    worker.events.flush()
    kinds = [e.kind.value for e in client.backend.events.read() if e.job_id == handle.id]  # type: ignore[attr-defined]
    assert kinds == ["enqueued", "stalled", "retrying"]


def rewrite_envelope(conn: redis.Redis, job_id: str, **changes: Any) -> None:
    envelope = json.loads(conn.hget(SLOW.job(job_id), "d"))
    envelope.update(changes)
    conn.hset(SLOW.job(job_id), "d", json.dumps(envelope))


def slot_pids(conn: redis.Redis) -> set[int]:
    """The processes holding leases on the slow queue (a slot's id starts with host.pid.suffix/)."""
    return {slot_pid(m) for m in conn.zrange(SLOW.workers, 0, -1)}


def kill_worker_mid_job(
    conn: redis.Redis, start_worker: Callable[..., WorkerProcess], path: Path, *args: str, env: dict[str, str]
) -> None:
    """SIGKILL every process of one `forgejobs worker` (its supervisor and children, by PID) mid-job."""
    worker = start_worker("--queues", "slow", *args, env=env)
    wait_for(lambda: notes(path), timeout=15, what="the job to start")
    for pid in {worker.pid, *slot_pids(conn)}:
        os.kill(pid, signal.SIGKILL)
    worker.wait(10)


def kill_and_replace_until_failed(
    conn: redis.Redis, start_worker: Callable[..., WorkerProcess], path: Path, handle: JobHandle
) -> None:
    """Kill the worker running the job, start another, and wait for the job to end FAILED (saying what Redis
    holds and what the replacement logged if it does not)."""
    kill_worker_mid_job(conn, start_worker, path, env={"FORGEJOBS_STALL_TIMEOUT": "2"})
    replacement = start_worker("--queues", "slow", env={"FORGEJOBS_STALL_TIMEOUT": "2"})
    try:
        wait_for(lambda: handle.status() is Status.FAILED, timeout=20, what="the job to be dead-lettered")
    except AssertionError as exc:
        state = {k.decode(): conn.type(k).decode() for k in conn.scan_iter(match="forgejobs:{slow}:*")}
        raise AssertionError(f"{exc}; keys {state}; replacement's log:\n{replacement.log()}") from None


def test_a_job_on_its_last_attempt_whose_worker_was_killed_is_dead_lettered_as_stalled(
    client: Client, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "slow.jsonl"
    handle = Slow.with_options(job_id="stalls-once").enqueue(path=str(path), seconds=30)
    rewrite_envelope(conn, "stalls-once", attempt=2)  # pretend attempt 1 already failed: this is 2 of 2
    kill_and_replace_until_failed(conn, start_worker, path, handle)
    record = client.dead_letter("stalls-once")
    assert record.reason is Reason.STALLED
    assert record.payload == {"path": str(path), "seconds": 30.0}


def test_a_job_that_stalls_more_than_max_stalled_times_is_dead_lettered(
    client: Client, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "slow.jsonl"
    handle = SlowFirstAttempt.with_options(job_id="stalls-twice").enqueue(path=str(path))
    history = [{"attempt": 1, "at": "2026-01-01T00:00:00Z", "error": STALL_ERROR, "delay": 0}]
    rewrite_envelope(conn, "stalls-twice", history=history)  # attempt 1 already stalled once (max_stalled=1)
    kill_and_replace_until_failed(conn, start_worker, path, handle)
    assert client.dead_letter("stalls-twice").reason is Reason.STALLED


@pytest.mark.parametrize("mode", ["--threads", "--processes"])
def test_a_killed_worker_s_job_is_finished_by_another_within_the_lease(
    client: Client, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path, mode: str
) -> None:
    """The whole worker (every process of it) is SIGKILLed mid-job, as an OOM kill or a lost host would; a
    worker started at once finishes the job within the lease (3 s here) plus about a second."""
    path = tmp_path / "slow.jsonl"
    env = {"FORGEJOBS_STALL_TIMEOUT": "3"}
    handle = SlowFirstAttempt.enqueue(path=str(path))
    kill_worker_mid_job(conn, start_worker, path, mode, env=env)
    killed = time.monotonic()
    start_worker("--queues", "slow", env=env)

    assert handle.result(timeout=20) == 2
    recovery = time.monotonic() - killed
    print(f"stalled job finished by another worker {recovery:.2f} s after SIGKILL (lease 3 s)")
    # The lease, a recovery pass, start-up of the new worker and the run: under the default lease (10 s), which
    # a worker ignoring FORGEJOBS_STALL_TIMEOUT would wait out; the rest is margin for a loaded machine.
    assert recovery < 10
    assert [n["attempt"] for n in notes(path)] == [1, 2]


def test_the_runtime_package_gives_its_worker_on_first_use_and_nothing_else() -> None:
    import forgejobs.runtime as runtime

    assert runtime.Worker is Worker
    assert runtime.WorkerStats.__module__ == "forgejobs.runtime.worker"
    with pytest.raises(AttributeError, match="Nothing"):
        runtime.Nothing  # noqa: B018
