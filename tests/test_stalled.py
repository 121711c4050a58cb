"""A job whose worker dies mid-job is retried (or dead-lettered as stalled), never lost.

Two detectors: forgejobs' liveness keys (a reaper notices within the stall timeout),
and RQ's own maintenance pass (run here directly with a far-future clock).
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from forgejobs import Client, Reason, Registry, Status
from forgejobs.backends import rq as rq_backend
from forgejobs.execution import STALL_ERROR, Runtime
from forgejobs.worker import SlotWorker, make_slot
from tests.conftest import WorkerProcess, wait_for
from tests.samplejobs.basic import Slow

pytestmark = pytest.mark.redis


def notes(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_child_mid_job(conn: redis.Redis, start_worker: Callable[..., WorkerProcess], path: Path) -> None:
    from rq import Worker as RQWorker

    worker = start_worker("--queues", "slow")
    wait_for(lambda: notes(path), timeout=15, what="the job to start")
    (child,) = [w for w in RQWorker.all(connection=conn) if w.get_current_job_id()]
    os.kill(child.pid, signal.SIGKILL)
    worker.stop()


def run_rq_cleanup(conn: redis.Redis, registry: Registry, client: Client) -> None:
    rq_backend.install_runtime(Runtime(registry, client.backend.dead_letters))
    try:
        handler = make_slot(SlotWorker, conn, client.backend.dead_letters, "slow", "cleanup")._exc_handlers[0]
        StartedJobRegistry("slow:p05", connection=conn, serializer=JSONSerializer).cleanup(
            timestamp=time.time() + 100_000, exception_handlers=[handler]
        )
    finally:
        rq_backend.install_runtime(None)


def test_a_job_whose_worker_was_killed_runs_again_as_its_next_attempt(
    client: Client, registry: Registry, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "slow.jsonl"
    handle = Slow.enqueue(path=str(path), seconds=30)  # attempts=2, backoff fixed 0
    kill_child_mid_job(conn, start_worker, path)
    assert handle.status() is Status.RUNNING  # RQ has not noticed yet

    run_rq_cleanup(conn, registry, client)

    assert handle.status() is Status.SCHEDULED
    path.write_text("")  # let the second attempt be short: the test changes the file, not the job
    start_worker("--queues", "slow")
    wait_for(lambda: [n.get("attempt") for n in notes(path)] == [2], timeout=15, what="attempt 2 to start")


def test_a_job_stalled_on_its_last_attempt_is_dead_lettered_as_stalled(
    client: Client, registry: Registry, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "slow.jsonl"
    handle = Slow.with_options(job_id="stalls-once").enqueue(path=str(path), seconds=30)
    # Pretend attempt 1 already stalled: rewrite the stored envelope to attempt 2 of 2.
    data = json.loads(zlib.decompress(conn.hget("rq:job:stalls-once", "data")))
    envelope = json.loads(data[2][0])
    envelope["attempt"] = 2
    data[2][0] = json.dumps(envelope)
    conn.hset("rq:job:stalls-once", "data", zlib.compress(json.dumps(data).encode()))

    kill_child_mid_job(conn, start_worker, path)
    run_rq_cleanup(conn, registry, client)

    assert handle.status() is Status.FAILED
    record = client.dead_letter("stalls-once")
    assert record.reason is Reason.STALLED
    assert record.payload == {"path": str(path), "seconds": 30.0}


def test_a_sigkilled_worker_s_job_is_finished_by_another_within_the_stall_timeout(
    client: Client, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    from rq import Worker as RQWorker

    from tests.samplejobs.basic import SlowFirstAttempt

    path = tmp_path / "slow.jsonl"
    start_worker("--queues", "slow", "--concurrency", "2", env={"FORGEJOBS_STALL_TIMEOUT": "3"})
    handle = SlowFirstAttempt.enqueue(path=str(path))
    wait_for(lambda: notes(path), timeout=15, what="attempt 1 to start")
    (child,) = [w for w in RQWorker.all(connection=conn) if w.get_current_job_id() == handle.id]
    killed = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    assert handle.result(timeout=20) == 2
    recovery = time.monotonic() - killed
    print(f"stalled job finished by another worker {recovery:.2f} s after SIGKILL (stall timeout 3 s)")
    assert recovery < 3 + 3  # the lease's TTL, plus a reaper pass and the run
    assert [n["attempt"] for n in notes(path)] == [1, 2]


def test_a_job_that_stalls_more_than_max_stalled_times_is_dead_lettered(
    client: Client, registry: Registry, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    from tests.samplejobs.basic import SlowFirstAttempt

    # attempt 1 already stalled once (max_stalled=1): the next stall is one too many
    path = tmp_path / "slow.jsonl"
    handle = SlowFirstAttempt.with_options(job_id="stalls-twice").enqueue(path=str(path))
    data = json.loads(zlib.decompress(conn.hget("rq:job:stalls-twice", "data")))
    envelope = json.loads(data[2][0])
    envelope["history"] = [{"attempt": 1, "at": "2026-01-01T00:00:00Z", "error": STALL_ERROR, "delay": 0}]
    data[2][0] = json.dumps(envelope)
    conn.hset("rq:job:stalls-twice", "data", zlib.compress(json.dumps(data).encode()))
    kill_child_mid_job(conn, start_worker, path)
    run_rq_cleanup(conn, registry, client)
    assert handle.status() is Status.FAILED
    assert client.dead_letter("stalls-twice").reason is Reason.STALLED


def test_a_job_between_dequeue_and_start_keeps_its_registry_entry(
    client: Client, registry: Registry, conn: redis.Redis, tmp_path: Path
) -> None:
    """RQ adds the registry entry (with its execution record) before the job hash says "started" and names its
    worker; a reaper pass in that window once crashed the scheduler, then dropped the entry of a live job."""
    from forgejobs.backends.stalls import Heartbeat, reap
    from forgejobs.keys import Keys

    Slow.enqueue(path=str(tmp_path / "slow.jsonl"), seconds=0)
    heartbeat = Heartbeat(conn, Keys(), ttl=20)
    slot = make_slot(SlotWorker, conn, client.backend.dead_letters, "slow", "slot-a", heartbeat=heartbeat)
    try:
        job, queue = slot.dequeue_job_and_maintain_ttl(1)
        slot.prepare_execution(job)
        started = StartedJobRegistry(queue=queue)
        (entry,) = conn.zrange(started.key, 0, -1)
        assert conn.hget(f"rq:job:{job.id}", "status") == b"queued"  # the window

        recovered = reap(conn, [queue], Runtime(registry, client.backend.dead_letters), Keys(), stall_timeout=0)

        assert recovered == [] and conn.zrange(started.key, 0, -1) == [entry]
    finally:
        heartbeat.close()


def test_an_old_entry_of_a_dead_worker_whose_job_is_not_running_is_dropped(
    client: Client, registry: Registry, conn: redis.Redis
) -> None:
    from forgejobs.backends.stalls import reap
    from forgejobs.keys import Keys

    started = StartedJobRegistry("slow:p05", connection=conn, serializer=JSONSerializer)
    conn.hset("rq:job:odd", mapping={"worker_name": "a-worker-long-gone", "started_at": "", "status": "finished"})
    conn.zadd(started.key, {"odd": time.time() - 3600})
    queue = rq_backend.RQBackend(conn).rq_queue("slow:p05")

    recovered = reap(conn, [queue], Runtime(registry, client.backend.dead_letters), Keys(), stall_timeout=1)

    assert recovered == [] and conn.zscore(started.key, "odd") is None
