"""End to end on a real Redis: enqueue here, a `forgejobs worker` subprocess runs it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from pydantic import ValidationError

from forgejobs import Client, PayloadTooLarge, Reason, Status
from forgejobs.cli import cli
from forgejobs.keys import QueueKeys
from forgejobs.runtime.worker import slot_pid
from tests.conftest import WorkerProcess
from tests.helpers import notes, wait_for
from tests.samplejobs.basic import Doomed, Echo, EchoResult, Flaky, Mark, Progressing, Slow, Snooze, TimesOut

pytestmark = pytest.mark.redis

StartWorker = Callable[..., WorkerProcess]


def client_url(client: Client) -> str:
    kwargs = client.backend.connection.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"


def test_enqueued_job_runs_in_a_worker_and_returns_a_typed_result(client: Client, start_worker: StartWorker) -> None:
    start_worker("--queues", "fast")
    handle = Echo.enqueue(text="hello")
    result = handle.result(timeout=15)
    assert result == EchoResult(text="hello", attempt=1)
    assert handle.status() is Status.SUCCEEDED


def test_instance_enqueue_and_bulk_enqueue_reach_the_worker(client: Client, start_worker: StartWorker) -> None:
    handles = [Echo(text="one").enqueue(), *Echo.enqueue_many([{"text": str(i)} for i in range(20)])]
    start_worker("--queues", "fast")
    assert [h.result(timeout=15).text for h in handles] == ["one", *[str(i) for i in range(20)]]


def test_invalid_or_oversized_payloads_never_reach_redis(client: Client, conn: redis.Redis) -> None:
    keys_before = set(conn.keys("*"))
    with pytest.raises(ValidationError):
        Echo.enqueue(text=123)  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge) as err:
        Echo.enqueue(text="x" * 20_000)
    assert "fast.echo" in str(err.value) and "16384" in str(err.value) and "text" in str(err.value)
    with pytest.raises(ValidationError):
        Echo.enqueue_many([{"text": "fine"}, {"text": None}])  # one bad item: none is sent
    assert set(conn.keys("*")) == keys_before


def test_only_json_is_stored(client: Client, conn: redis.Redis) -> None:
    handle = Echo.enqueue(text="stored as json")
    data = conn.hget(QueueKeys("forgejobs", "fast").job(handle.id), "d")
    assert data is not None
    envelope = json.loads(data)
    assert envelope["name"] == "fast.echo" and envelope["payload"] == {"text": "stored as json"}
    assert envelope["attempt"] == 1


def test_retries_wait_out_the_declared_backoff(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    path = tmp_path / "flaky.jsonl"
    start_worker("--queues", "fast")
    handle = Flaky.enqueue(path=str(path), failures=2)  # backoff.exponential(1): waits 1 s, then 2 s
    assert handle.result(timeout=20) == 3
    times = [n["t"] for n in notes(path)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 2
    # The waits are the declared ones (1 s, then 2 s), recorded with each failed attempt ...
    envelope = json.loads(conn.hget(QueueKeys("forgejobs", "fast").job(handle.id), "d"))
    assert [(a["attempt"], a["delay"]) for a in envelope["history"]] == [(1, 1.0), (2, 2.0)]
    # ... and never cut short (how late a retry starts depends on the machine's load, not on forgejobs).
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps


def test_exhausted_attempts_are_dead_lettered_with_history(
    client: Client, start_worker: StartWorker, tmp_path: Path
) -> None:
    start_worker("--queues", "fast")
    path = tmp_path / "flaky.jsonl"
    handle = Flaky.with_options(job_id="always-fails").enqueue(path=str(path), failures=99)
    wait_for(lambda: handle.status() is Status.FAILED, timeout=30, what="the job to fail for good")
    record = client.dead_letter("always-fails")
    assert record.reason is Reason.EXHAUSTED
    assert [a.attempt for a in record.attempts] == [1, 2, 3, 4]
    assert all("planned failure" in a.error for a in record.attempts)
    assert record.payload == {"path": str(path), "failures": 99}
    assert "RuntimeError" in record.traceback


def test_unrecoverable_goes_straight_to_dead_letters(client: Client, start_worker: StartWorker, tmp_path: Path) -> None:
    start_worker("--queues", "fast")
    path = tmp_path / "doomed.jsonl"
    handle = Doomed.enqueue(path=str(path))
    wait_for(lambda: handle.status() is Status.FAILED, timeout=15, what="the job to be dead-lettered")
    assert len(notes(path)) == 1  # one attempt of five
    record = client.dead_letter(handle.id)
    assert record.reason is Reason.UNRECOVERABLE and "account was deleted" in record.error


def test_retry_later_runs_again_without_spending_an_attempt(
    client: Client, start_worker: StartWorker, tmp_path: Path
) -> None:
    start_worker("--queues", "fast")
    path = tmp_path / "snooze.jsonl"
    handle = Snooze.enqueue(path=str(path))  # attempts=1, yet it runs twice
    assert handle.result(timeout=15) == "done"
    assert [n["attempt"] for n in notes(path)] == [1, 1]


def test_higher_priority_is_taken_first(client: Client, start_worker: StartWorker, tmp_path: Path) -> None:
    path = tmp_path / "order.jsonl"
    for label, priority in [("low-a", 9), ("mid", 5), ("high", 1), ("low-b", 9), ("urgent", 1)]:
        Mark.with_options(priority=priority).enqueue(path=str(path), label=label)
    start_worker("--queues", "fast", "--concurrency", "1")
    wait_for(lambda: len(notes(path)) == 5, timeout=15, what="five marks")
    assert [n["label"] for n in notes(path)] == ["high", "urgent", "mid", "low-a", "low-b"]


def test_delayed_job_does_not_run_early(client: Client, start_worker: StartWorker, tmp_path: Path) -> None:
    start_worker("--queues", "fast")
    path = tmp_path / "delayed.jsonl"
    enqueued_at = time.time()
    handle = Mark.with_options(delay=timedelta(seconds=2)).enqueue(path=str(path), label="later")
    assert handle.status() is Status.SCHEDULED
    wait_for(lambda: notes(path), timeout=10, what="the delayed job")
    lateness = notes(path)[0]["t"] - (enqueued_at + 2)
    assert lateness >= 0, lateness  # how late is the machine's load; early would be forgejobs' fault


def test_unknown_job_and_corrupt_entries_are_dead_lettered_and_the_worker_goes_on(
    client: Client, conn: redis.Redis, start_worker: StartWorker
) -> None:
    fast = QueueKeys("forgejobs", "fast")

    def plant(job_id: str, data: bytes | str) -> None:
        conn.hset(fast.job(job_id), mapping={"d": data, "p": 5, "s": "queued"})
        conn.rpush(fast.wait(5), job_id)

    # An envelope naming a job type no worker knows.
    plant("unknown-1", json.dumps({"v": 1, "id": "unknown-1", "name": "fast.gone", "payload": {}, "attempt": 1}))
    # Bytes that are not an envelope at all.
    plant("corrupt-1", "{not json")
    # A record with no envelope: an RQ job hash naming a function, written where a job would be.
    conn.hset(fast.job("corrupt-2"), mapping={"data": b"os.system('touch /tmp/owned')", "status": "queued"})
    conn.rpush(fast.wait(5), "corrupt-2")
    after = Echo.enqueue(text="still alive")

    start_worker("--queues", "fast")
    assert after.result(timeout=15).text == "still alive"
    wait_for(lambda: client.backend.dead_letters.count() == 3, timeout=10, what="three dead letters")
    assert client.dead_letter("unknown-1").reason is Reason.UNKNOWN_JOB
    corrupt = client.dead_letter("corrupt-1")
    assert corrupt.reason is Reason.CORRUPT and corrupt.raw == "{not json"
    assert client.dead_letter("corrupt-2").reason is Reason.CORRUPT


def test_sigterm_lets_the_running_job_finish(client: Client, start_worker: StartWorker, tmp_path: Path) -> None:
    worker = start_worker("--queues", "slow")
    path = tmp_path / "slow.jsonl"
    handle = Slow.enqueue(path=str(path), seconds=1.5)
    wait_for(lambda: notes(path), timeout=10, what="the job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert [n["event"] for n in notes(path)] == ["start", "finish"]
    assert handle.status() is Status.SUCCEEDED


def test_second_sigterm_aborts_the_job_and_it_runs_again_as_the_same_attempt(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """An abort is the worker's doing, not the job's: the job goes back to its queue and its next run is the
    same attempt (Slow has attempts=2, so a spent attempt would show as attempt 2)."""
    worker = start_worker("--queues", "slow")
    path = tmp_path / "slow.jsonl"
    handle = Slow.enqueue(path=str(path), seconds=5)
    wait_for(lambda: notes(path), timeout=10, what="the job to start")
    worker.signal(signal.SIGTERM)
    # two distinct signals, not one delivered twice: the second is sent once the first was seen
    wait_for(lambda: "finishing running jobs" in worker.log(), timeout=10, what="the warm shutdown to begin")
    worker.signal(signal.SIGTERM)
    worker.wait(timeout=20)
    assert [n["event"] for n in notes(path)] == ["start"]
    assert handle.status() is Status.QUEUED  # back on its queue, not lost
    envelope = json.loads(conn.hget(QueueKeys("forgejobs", "slow").job(handle.id), "d"))
    assert envelope["attempt"] == 1 and not envelope.get("history")
    start_worker("--queues", "slow")
    assert handle.result(timeout=30) == "slept"
    assert [(n["event"], n["attempt"]) for n in notes(path)] == [("start", 1), ("start", 1), ("finish", 1)]


@pytest.mark.parametrize(("mode", "spin"), [("--processes", False), ("--threads", True)])
def test_a_job_over_its_timeout_is_stopped_and_retried(
    client: Client, start_worker: StartWorker, tmp_path: Path, mode: str, spin: bool
) -> None:
    """A process slot's timeout (SIGALRM) stops even a sleep in C; a thread slot's stops Python code."""
    start_worker("--queues", "slow", mode)
    path = tmp_path / "timeout.jsonl"
    handle = TimesOut.enqueue(path=str(path), spin=spin)
    assert handle.result(timeout=20) == 2
    assert [n["attempt"] for n in notes(path)] == [1, 2]


def test_progress_is_readable_from_the_handle(client: Client, start_worker: StartWorker) -> None:
    start_worker("--queues", "fast")
    handle = Progressing.enqueue()
    handle.result(timeout=15)
    assert handle.progress() == {"done": 2, "total": 2}
    assert [line.split(" ", 2)[2] for line in handle.logs()] == ["halfway", "done"]
    out = CliRunner().invoke(cli, ["job", handle.id], env={"FORGEJOBS_REDIS_URL": client_url(client)}).output
    assert "succeeded" in out and 'progress:    {"done": 2, "total": 2}' in out and out.rstrip().endswith("#1 done")


def test_dead_letters_can_be_requeued_and_purged(client: Client, start_worker: StartWorker, tmp_path: Path) -> None:
    start_worker("--queues", "fast")
    path = tmp_path / "doomed.jsonl"
    handles = [Doomed.enqueue(path=str(path)) for _ in range(3)]
    wait_for(lambda: client.backend.dead_letters.count() == 3, timeout=15, what="three dead letters")
    requeued = client.requeue(handles[0].id)
    assert requeued.id == handles[0].id
    wait_for(lambda: len(notes(path)) == 4, timeout=15, what="the requeued job to run")
    wait_for(lambda: client.backend.dead_letters.count() == 3, timeout=15, what="it to die again")
    assert len(client.requeue_all()) == 3
    wait_for(lambda: len(notes(path)) == 7, timeout=15, what="all requeued jobs to run")
    wait_for(lambda: client.backend.dead_letters.count() == 3, timeout=15, what="them to die again")
    assert client.purge_dead_letters() == 3
    assert client.dead_letters() == []


def test_process_mode_runs_jobs_and_finishes_the_running_one_on_sigterm(
    client: Client, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker("--queues", "fast,slow", "--processes")
    assert Echo.enqueue(text="threads").result(timeout=15).text == "threads"
    path = tmp_path / "slow.jsonl"
    handle = Slow.enqueue(path=str(path), seconds=1)
    wait_for(lambda: notes(path), timeout=10, what="the job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert handle.status() is Status.SUCCEEDED


def test_a_killed_child_process_is_replaced(client: Client, start_worker: StartWorker, conn: redis.Redis) -> None:
    import os

    def child_pids() -> set[int]:
        members = conn.zrange(QueueKeys("forgejobs", "fast").workers, 0, -1)
        return {slot_pid(m) for m in members}

    start_worker("--queues", "fast", "--processes")
    (old_pid,) = child_pids()
    os.kill(old_pid, signal.SIGKILL)

    def replaced() -> bool:
        return bool(child_pids() - {old_pid})

    wait_for(replaced, timeout=15, what="a replacement child")
    assert Echo.enqueue(text="after the crash").result(timeout=20).text == "after the crash"


def test_an_explicit_job_id_is_enqueued_once(client: Client, conn: redis.Redis) -> None:
    first = Echo.with_options(job_id="order-42-receipt").enqueue(text="first")
    again = Echo.with_options(job_id="order-42-receipt").enqueue(text="second")
    assert not first.existing and again.existing
    assert conn.llen(QueueKeys("forgejobs", "fast").wait(5)) == 1
    delayed = Echo.with_options(job_id="later-1", delay=60).enqueue(text="a")
    assert Echo.with_options(job_id="later-1", delay=60).enqueue(text="b").existing
    assert delayed.status() is Status.SCHEDULED
