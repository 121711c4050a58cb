"""The worker's upkeep passes when Redis answers with an error, and how stalled jobs are settled: what the dead
letter of a record that is not a job holds, where a retried job waits, what a failed one leaves in Redis, the
metrics and the exact log lines. Also a few neighbours of the upkeep in forgejobs/runtime/: how long a cancelled
job is kept, and how the waiter wakes idle slots after a promotion.

In this process, on a real Redis: a key of the wrong type makes Redis refuse a command (WRONGTYPE), as a
damaged database or another program writing under the prefix would; one test wraps the settle script so
that it fails for one job only. No worker threads are started: the upkeep's steps are called directly.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from forgejobs import Client, Reason, Registry, Settings
from forgejobs.keys import QueueKeys
from forgejobs.runtime.cancel import CannotCancel, cancel
from forgejobs.runtime.corrupt import read_record, shown_id
from forgejobs.runtime.state import Slot
from forgejobs.runtime.worker import Worker
from forgejobs.specs import QueueSpec
from tests.helpers import SAMPLE_JOBS, SAMPLE_SPECS, counters, failed_in_last_minutes, free_port, server_ms, worker_log
from tests.samplejobs.basic import Echo, Slow

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")
SLOW = QueueKeys("forgejobs", "slow")


@pytest.fixture
def worker(settings: Settings, registry: Registry, conn: redis.Redis) -> Iterator[Worker]:
    """A worker of the fast and slow queues on the test database, none of its threads started."""
    yield Worker(settings, registry, queues=["fast", "slow"], connection=conn, resources=object())


def strand(conn: redis.Redis, keys: QueueKeys, job_id: str) -> None:
    """Make `job_id` look taken by a slot that died: off its wait list, in the active hash under a slot with no
    lease (recover.lua takes such a job back)."""
    conn.lrem(keys.wait(5), 0, job_id)
    conn.hset(keys.active, job_id, "a-slot-that-died|0")


def envelope(conn: redis.Redis, keys: QueueKeys, job_id: str) -> dict[str, Any]:
    stored = conn.hget(keys.job(job_id), "d")
    assert isinstance(stored, bytes), f"no envelope stored for {job_id}"
    return dict(json.loads(stored))


def events_of(client: Client, job_id: str) -> list[str]:
    return [e.kind.value for e in client.backend.events.read() if e.job_id == job_id]  # type: ignore[attr-defined]


def test_a_queue_whose_recovery_redis_refuses_does_not_hold_up_the_other_queues(
    worker: Worker, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conn.set(FAST.stalled, "not a list")  # recover.lua's LLEN on it fails with WRONGTYPE
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    strand(conn, SLOW, handle.id)
    caplog.set_level(logging.WARNING, "forgejobs.worker")

    worker.upkeep.tick()

    assert "fast: recover failed; trying again" in worker_log(caplog) and "WRONGTYPE" in caplog.text
    assert "slow: 1 job(s) of dead workers taken back" in worker_log(caplog, logging.WARNING)
    # slow's dead slot was still recovered and its job settled: back on its wait list as attempt 2 (Slow has
    # attempts=2 and backoff fixed(0))
    assert conn.lrange(SLOW.wait(5), 0, -1) == [handle.id.encode()]
    assert not conn.hexists(SLOW.active, handle.id) and conn.llen(SLOW.stalled) == 0
    assert envelope(conn, SLOW, handle.id)["attempt"] == 2
    assert worker.outage.since is None  # an answer from Redis is no outage


def test_an_upkeep_pass_redis_refuses_is_logged_without_raising_or_counting_as_an_outage(
    worker: Worker, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conn.set(worker.keys.paused, "not a set")  # refresh's SMEMBERS fails with WRONGTYPE
    caplog.set_level(logging.ERROR, "forgejobs.worker")

    worker.upkeep.tick()  # does not raise: the upkeep thread must go on

    assert "worker upkeep failed; trying again" in caplog.text and "WRONGTYPE" in caplog.text
    assert worker.outage.since is None
    conn.delete(worker.keys.paused)
    conn.sadd(worker.keys.paused, "slow")
    worker.upkeep.refresh()
    assert worker.states["slow"].paused and not worker.states["fast"].paused


def test_a_clean_stop_gives_up_only_this_worker_s_leases(worker: Worker, conn: redis.Redis) -> None:
    """final() skips a queue where this worker holds no slot, and leaves other workers' leases alone."""
    worker.states["slow"].slots.append(Slot("slow", 0, "this-worker/slow/0/1"))
    worker.states["slow"].retired_idents.append("this-worker/slow/0/0")
    conn.zadd(SLOW.workers, {"this-worker/slow/0/1": 1, "this-worker/slow/0/0": 1, "another/slow/0/1": 1})
    conn.zadd(FAST.workers, {"another/fast/0/1": 1})

    worker.upkeep.final()

    assert conn.zrange(SLOW.workers, 0, -1) == [b"another/slow/0/1"]
    assert conn.zrange(FAST.workers, 0, -1) == [b"another/fast/0/1"]


def test_a_clean_stop_without_redis_says_so_and_does_not_raise(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    worker = Worker(settings, registry, queues=["slow"], connection=unreachable, resources=object())
    worker.states["slow"].slots.append(Slot("slow", 0, "this-worker/slow/0/1"))
    caplog.set_level(logging.WARNING, "forgejobs.worker")

    worker.upkeep.final()

    [line] = worker_log(caplog)
    assert line.startswith("could not write the last events or release the leases: ")
    assert "127.0.0.1:1" in line  # the connection error, which says where Redis was looked for


def test_one_stalled_job_redis_refuses_to_settle_does_not_hold_up_the_jobs_behind_it(
    worker: Worker, client: Client, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = (Slow.enqueue(path="/nonexistent/never-run", seconds=0) for _ in range(2))
    for handle in (first, second):
        conn.lrem(SLOW.wait(5), 0, handle.id)
        conn.rpush(SLOW.stalled, handle.id)
    real = worker.scripts.settle

    def refuse_the_first(*, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        if args[1] == first.id.encode():
            raise redis.ResponseError("ERR injected: settle refused")
        return real(keys=keys, args=args, client=client)

    monkeypatch.setattr(worker.scripts, "settle", refuse_the_first)
    caplog.set_level(logging.ERROR, "forgejobs.worker")

    worker.upkeep.settle(worker.states["slow"])

    assert f"slow: could not settle stalled job {first.id.encode()!r}; going on" in worker_log(caplog)
    assert conn.lrange(SLOW.stalled, 0, -1) == [first.id.encode()]  # kept for the next pass
    assert conn.lrange(SLOW.wait(5), 0, -1) == [second.id.encode()]  # settled: retried as attempt 2
    assert envelope(conn, SLOW, second.id)["attempt"] == 2


def test_a_corrupt_stalled_record_is_dead_lettered_once_when_two_workers_settle_it(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    conn.set(FAST.job("garbled"), "not a hash")
    conn.rpush(FAST.stalled, "garbled")
    state = worker.states["fast"]

    worker.upkeep.settle_one(state, b"garbled")
    worker.upkeep.settle_one(state, b"garbled")  # a second worker, too late: settle.lua finds it gone

    assert client.backend.dead_letters.count() == 1
    letter = client.dead_letter("garbled")
    assert letter.reason is Reason.CORRUPT and letter.error == "corrupt record: a string, not a hash"
    assert conn.llen(FAST.stalled) == 0


def test_a_stalled_job_whose_record_is_gone_is_dropped_without_a_dead_letter(
    worker: Worker, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conn.rpush(FAST.stalled, "expired-meanwhile")
    caplog.set_level(logging.WARNING, "forgejobs.worker")

    worker.upkeep.settle(worker.states["fast"])

    assert conn.llen(FAST.stalled) == 0
    assert client.backend.dead_letters.count() == 0
    assert "fast: stalled job expired-meanwhile has no record left; dropped" in caplog.text


def test_a_stalled_job_whose_hash_holds_no_envelope_is_dead_lettered_as_corrupt(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    conn.hset(FAST.job("hollow"), mapping={"s": "active", "p": "3"})
    conn.rpush(FAST.stalled, "hollow")

    worker.upkeep.settle(worker.states["fast"])
    worker.upkeep.settle_one(worker.states["fast"], b"hollow")  # a second worker, too late

    assert conn.llen(FAST.stalled) == 0
    assert client.backend.dead_letters.count() == 1
    letter = client.dead_letter("hollow")
    assert letter.reason is Reason.CORRUPT and letter.error == "corrupt record: no envelope"
    assert letter.raw is not None and "active" in letter.raw


def test_a_stalled_job_of_an_unknown_type_goes_back_to_its_queue_for_execution_to_dead_letter(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    """Upkeep does not decide about a job type it does not know: the job is requeued as it is (no stall
    counted, no `stalled` event), and the slot that takes it dead-letters it as an unknown job."""
    handle = Echo.enqueue(text="renamed")
    renamed = {**envelope(conn, FAST, handle.id), "name": "fast.no-such-job"}
    conn.hset(FAST.job(handle.id), "d", json.dumps(renamed))
    strand(conn, FAST, handle.id)

    worker.upkeep.recover(worker.states["fast"])

    assert conn.llen(FAST.stalled) == 0
    assert conn.lrange(FAST.wait(5), 0, -1) == [handle.id.encode()]
    stored = envelope(conn, FAST, handle.id)
    assert stored["name"] == "fast.no-such-job" and stored["attempt"] == 1 and not stored["history"]
    assert client.backend.dead_letters.count() == 0
    worker.events.flush()
    assert "stalled" not in events_of(client, handle.id)


def _string(conn: redis.Redis, key: str) -> None:
    conn.set(key, "not a hash")


def _binary(conn: redis.Redis, key: str) -> None:
    conn.set(key, b"\xff\xfe\x00")


def _long_list(conn: redis.Redis, key: str) -> None:
    conn.rpush(key, *[str(i) for i in range(1001)])


def _unicode_list(conn: redis.Redis, key: str) -> None:
    conn.rpush(key, "日本", "é")


def _set(conn: redis.Redis, key: str) -> None:
    conn.sadd(key, "b", "c", "a")


def _zset(conn: redis.Redis, key: str) -> None:
    conn.zadd(key, {"m": 1.5, "n": 2})


def _stream(conn: redis.Redis, key: str) -> None:
    conn.xadd(key, {"k": "v"}, id="1-1")


def _long_zset(conn: redis.Redis, key: str) -> None:
    conn.zadd(key, {f"m{i:04}": i for i in range(1001)})


def _long_stream(conn: redis.Redis, key: str) -> None:
    for i in range(1, 1002):
        conn.xadd(key, {"n": str(i)}, id=f"{i}-0")


@pytest.mark.parametrize(
    ("write", "kind", "raw"),
    [
        (_string, "string", "not a hash"),
        (_binary, "string", "base64:" + base64.b64encode(b"\xff\xfe\x00").decode()),
        (_long_list, "list", json.dumps([str(i) for i in range(1000)])),  # the first 1000 elements, in order
        (_unicode_list, "list", '["日本", "é"]'),  # as written, not as \\u escapes
        (_set, "set", '["a", "b", "c"]'),
        (_zset, "zset", '[["m", 1.5], ["n", 2.0]]'),
        (_stream, "stream", '[["1-1", {"k": "v"}]]'),
        (_long_zset, "zset", json.dumps([[f"m{i:04}", float(i)] for i in range(1000)])),  # the lowest 1000
        (_long_stream, "stream", json.dumps([[f"{i}-0", {"n": str(i)}] for i in range(1, 1001)])),  # the first 1000
    ],
    ids=[
        "string",
        "binary-string",
        "list-of-1001",
        "unicode-list",
        "set",
        "zset",
        "stream",
        "zset-of-1001",
        "stream-of-1001",
    ],
)
def test_a_stalled_record_that_is_not_a_hash_is_dead_lettered_with_its_queue_type_and_content(
    worker: Worker,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    write: Callable[[redis.Redis, str], None],
    kind: str,
    raw: str,
) -> None:
    write(conn, FAST.job("garbled"))
    conn.rpush(FAST.stalled, "garbled")
    caplog.set_level(logging.ERROR, "forgejobs.worker")

    worker.upkeep.settle(worker.states["fast"])

    letter = client.dead_letter("garbled")
    assert letter.queue == "fast" and letter.reason is Reason.CORRUPT
    assert letter.error == f"corrupt record: a {kind}, not a hash"
    assert letter.raw == raw
    assert worker_log(caplog) == [f"dead-lettered garbled from fast: corrupt record: a {kind}, not a hash"]
    assert conn.llen(FAST.stalled) == 0


def test_a_stalled_set_record_s_dead_letter_holds_1000_of_its_members_sorted(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    members = {f"m{i:04}" for i in range(1001)}
    conn.sadd(FAST.job("garbled"), *members)
    conn.rpush(FAST.stalled, "garbled")

    worker.upkeep.settle(worker.states["fast"])

    raw = client.dead_letter("garbled").raw
    assert raw is not None
    kept = json.loads(raw)
    assert len(kept) == 1000 and set(kept) < members and kept == sorted(kept)


def test_the_record_read_at_a_missing_key_is_of_type_none_and_empty(conn: redis.Redis) -> None:
    assert read_record(conn, FAST.job("never-written")) == ("none", "")


def test_a_corrupt_record_counts_as_one_corrupt_dead_letter_and_one_failed_attempt_of_an_unknown_job(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    conn.set(FAST.job("garbled"), "not a hash")
    conn.hset(FAST.job("hollow"), mapping={"s": "active"})
    conn.rpush(FAST.stalled, "garbled", "hollow")

    worker.upkeep.settle(worker.states["fast"])

    assert counters(conn, "fast") == {("dead_lettered", "?", "corrupt"): 2}
    assert failed_in_last_minutes(conn, "fast") == 2
    hollow = client.dead_letter("hollow")
    assert hollow.queue == "fast" and hollow.raw == '{"s": "active"}'


def test_a_stalled_job_whose_record_is_gone_leaves_no_metrics_behind(worker: Worker, conn: redis.Redis) -> None:
    conn.rpush(FAST.stalled, "expired-meanwhile")

    worker.upkeep.settle(worker.states["fast"])

    assert conn.llen(FAST.stalled) == 0
    assert conn.exists(FAST.metrics, FAST.minutes) == 0


def test_one_settling_pass_takes_the_first_fifty_stalled_jobs_and_leaves_the_rest_for_the_next(
    worker: Worker, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"gone-{i}" for i in range(52)]
    conn.rpush(FAST.stalled, *ids)
    caplog.set_level(logging.WARNING, "forgejobs.worker")

    worker.upkeep.settle(worker.states["fast"])

    assert conn.lrange(FAST.stalled, 0, -1) == [b"gone-50", b"gone-51"]
    assert worker_log(caplog) == [f"fast: stalled job {i} has no record left; dropped" for i in ids[:50]]


@pytest.mark.parametrize(
    ("stored", "wait_list"),
    [("1", 1), ("3", 3), ("10", 10), ("11", 5), ("0", 5), ("high", 5), (None, 5)],
)
def test_a_stalled_job_retried_at_once_waits_at_its_stored_priority_or_at_5_when_that_is_not_1_to_10(
    worker: Worker, client: Client, conn: redis.Redis, stored: str | None, wait_list: int
) -> None:
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    conn.lrem(SLOW.wait(5), 0, handle.id)
    conn.rpush(SLOW.stalled, handle.id)
    if stored is None:
        conn.hdel(SLOW.job(handle.id), "p")
    else:
        conn.hset(SLOW.job(handle.id), "p", stored)

    worker.upkeep.settle(worker.states["slow"])

    assert conn.lrange(SLOW.wait(wait_list), 0, -1) == [handle.id.encode()]
    assert envelope(conn, SLOW, handle.id)["attempt"] == 2


def test_a_stalled_job_of_an_unknown_type_is_requeued_ahead_of_the_waiting_jobs_and_counted_nowhere(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    handle = Echo.enqueue(text="renamed")
    waiting = Echo.enqueue(text="waiting")
    renamed = {**envelope(conn, FAST, handle.id), "name": "fast.no-such-job"}
    conn.hset(FAST.job(handle.id), "d", json.dumps(renamed))
    strand(conn, FAST, handle.id)
    metrics_before, minutes_before = conn.hgetall(FAST.metrics), conn.hgetall(FAST.minutes)

    worker.upkeep.recover(worker.states["fast"])

    assert conn.lrange(FAST.wait(5), 0, -1) == [handle.id.encode(), waiting.id.encode()]  # taken next
    assert conn.hget(FAST.job(handle.id), "s") == b"queued"
    assert conn.hgetall(FAST.metrics) == metrics_before and conn.hgetall(FAST.minutes) == minutes_before


@pytest.fixture
def tuned(settings: Settings, conn: redis.Redis, tmp_path: Path) -> Worker:
    """A worker of the slow queue whose specs give slow.slow a 600 s backoff, a 2-day failure TTL and a 2-hour
    result TTL."""
    shutil.copy(SAMPLE_SPECS / "queues.yaml", tmp_path / "queues.yaml")
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  slow.slow:\n    backoff: {kind: fixed, seconds: 600}\n    failure_ttl: 2d\n    result_ttl: 2h\n"
    )
    tuned_settings = Settings(redis_url=settings.redis_url, jobs=SAMPLE_JOBS, specs=tmp_path)
    registry = Registry.load(tuned_settings)
    return Worker(tuned_settings, registry, queues=["slow"], connection=conn, resources=object())


def test_a_stalled_job_with_a_backoff_is_scheduled_that_long_after_the_stall_and_counted_as_stalled_and_retried(
    tuned: Worker, client: Client, conn: redis.Redis
) -> None:
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    strand(conn, SLOW, handle.id)
    before = server_ms(conn)

    tuned.upkeep.recover(tuned.states["slow"])

    after = server_ms(conn)
    due = conn.zscore(SLOW.delayed, handle.id)
    assert due is not None and before + 600_000 <= due <= after + 600_000
    assert conn.hget(SLOW.job(handle.id), "s") == b"scheduled"
    assert conn.llen(SLOW.wait(5)) == 0 and conn.llen(SLOW.stalled) == 0
    stored = envelope(conn, SLOW, handle.id)
    assert stored["id"] == handle.id and stored["attempt"] == 2
    assert counters(conn, "slow") == {
        ("enqueued", "slow.slow", None): 1,
        ("stalled", "slow.slow", None): 1,
        ("retried", "slow.slow", None): 1,
    }
    assert failed_in_last_minutes(conn, "slow") == 1


def test_a_stalled_job_on_its_last_attempt_fails_for_its_failure_ttl_and_is_dead_lettered_from_its_queue(
    tuned: Worker, client: Client, conn: redis.Redis
) -> None:
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    last = {**envelope(conn, SLOW, handle.id), "attempt": 2}
    conn.hset(SLOW.job(handle.id), "d", json.dumps(last))
    strand(conn, SLOW, handle.id)
    before = server_ms(conn)

    tuned.upkeep.recover(tuned.states["slow"])

    after = server_ms(conn)
    two_days = 2 * 86_400_000
    expires = conn.zscore(SLOW.failed, handle.id)
    assert expires is not None and before + two_days <= expires <= after + two_days
    assert conn.hget(SLOW.job(handle.id), "s") == b"failed"
    assert conn.llen(SLOW.wait(5)) == 0 and conn.zcard(SLOW.delayed) == 0
    letter = client.dead_letter(handle.id)
    assert letter.queue == "slow" and letter.reason is Reason.STALLED and letter.name == "slow.slow"
    assert counters(conn, "slow") == {
        ("enqueued", "slow.slow", None): 1,
        ("stalled", "slow.slow", None): 1,
        ("dead_lettered", "slow.slow", "stalled"): 1,
    }
    assert failed_in_last_minutes(conn, "slow") == 1


def test_jobs_promoted_during_a_local_wait_wake_one_idle_slot_once(worker: Worker) -> None:
    """After the waiter's local wait, a queue whose delayed jobs were promoted has one idle slot woken; the next
    local wait, with nothing promoted since, wakes no other."""
    state = worker.states["fast"]
    first, second = Slot("fast", 0, "w/fast/0/1"), Slot("fast", 1, "w/fast/1/1")
    state.idle.extend([first, second])
    state.promoted = True

    worker.waiter.wake_waiting([state])
    worker.waiter.wake_waiting([state])

    assert first.wake.is_set() and not second.wake.is_set()
    assert list(state.idle) == [second]


def test_a_cancelled_waiting_job_is_kept_for_its_type_s_result_ttl(
    tuned: Worker, client: Client, conn: redis.Redis
) -> None:
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    before = time.time() * 1000

    done = cancel(client.backend, tuned.registry, handle.id)

    after = time.time() * 1000
    assert done.outcome == "cancelled"
    kept_until = conn.zscore(SLOW.cancelled, handle.id)
    assert kept_until is not None and before + 7_200_000 - 1 <= kept_until <= after + 7_200_000 + 1


def test_cancelling_a_record_that_has_no_status_is_refused_as_finished(
    client: Client, registry: Registry, conn: redis.Redis
) -> None:
    conn.hset(FAST.job("statusless"), mapping={"d": "not an envelope", "p": "5"})  # on no list, no "s"

    with pytest.raises(CannotCancel) as refused:
        cancel(client.backend, registry, "statusless")

    assert str(refused.value) == "job statusless has already finished (finished): there is nothing to cancel"


def test_a_queue_another_worker_checked_within_the_second_is_not_recovered_again(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    handle = Slow.enqueue(path="/nonexistent/never-run", seconds=0)
    strand(conn, SLOW, handle.id)
    conn.set(SLOW.check, "another-worker", px=60_000)

    worker.upkeep.recover(worker.states["slow"])

    assert conn.hexists(SLOW.active, handle.id) and conn.llen(SLOW.wait(5)) == 0  # left to that worker
    assert conn.get(SLOW.check) == b"another-worker"


def test_a_recovery_pass_marks_its_queue_as_checked_for_one_second(worker: Worker, conn: redis.Redis) -> None:
    worker.upkeep.recover(worker.states["slow"])

    assert conn.get(SLOW.check) == worker.name.encode()
    assert 0 < conn.pttl(SLOW.check) <= 1000


# -- leases, the view of the queues, retention, and how often each runs ----------------------------------------


def test_a_beat_renews_the_lease_of_each_live_slot_of_each_queue_for_the_lease_time(
    worker: Worker, conn: redis.Redis, live_thread: threading.Thread
) -> None:
    worker.states["fast"].slots += [Slot("fast", 0, "fast-live", thread=live_thread), Slot("fast", 1, "fast-none")]
    worker.states["slow"].slots += [Slot("slow", 0, "slow-live", thread=live_thread)]
    before = server_ms(conn)
    worker.upkeep.beat()
    after = server_ms(conn)
    for keys, ident in ((FAST, "fast-live"), (SLOW, "slow-live")):
        expiry = conn.zscore(keys.workers, ident)
        assert expiry is not None and before + worker.lease_ms <= expiry <= after + worker.lease_ms
    assert conn.zscore(FAST.workers, "fast-none") is None  # a slot without a running thread is not renewed
    assert worker.lease_ms == 10_000  # the default stall timeout


def test_a_beat_with_no_live_slot_writes_nothing(worker: Worker, conn: redis.Redis) -> None:
    worker.states["fast"].slots.append(Slot("fast", 0, "no-thread"))
    worker.upkeep.beat()
    assert conn.exists(FAST.workers, SLOW.workers) == 0


def test_a_beat_tells_the_slot_running_a_job_someone_asked_to_cancel_once(
    worker: Worker, conn: redis.Redis, live_thread: threading.Thread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    asked = Slot("fast", 0, "running-asked", thread=live_thread, job_id=b"job-asked")
    other = Slot("fast", 1, "running-other", thread=live_thread, job_id=b"job-other")
    worker.states["fast"].slots += [asked, other]
    conn.hset(FAST.active, mapping={"job-asked": "running-asked|0", "job-other": "running-other|0"})
    conn.sadd(FAST.cancels, "job-asked")
    worker.upkeep.beat()
    worker.upkeep.beat()
    assert asked.cancel.is_set() and not other.cancel.is_set()
    assert worker_log(caplog) == ["fast job-asked: cancel asked for; its handler sees ctx.cancelled"]


def test_a_refresh_reads_paused_queues_due_times_and_the_server_clock(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    fast, slow = worker.states["fast"], worker.states["slow"]
    client.pause("slow")
    later = Echo.with_options(delay=3600).enqueue(text="later")
    worker.clock.set_server_ms(0)  # far off, to see it set again
    worker.upkeep.refresh()
    assert (fast.paused, slow.paused) == (False, True)
    assert fast.next_due == conn.zscore(FAST.delayed, later.id) and slow.next_due == math.inf
    assert abs(worker.clock.now_ms() - server_ms(conn)) < 1000
    client.resume("slow")
    conn.zrem(FAST.delayed, later.id)
    worker.upkeep.refresh()
    assert (fast.paused, slow.paused) == (False, False)
    assert fast.next_due == math.inf


def test_a_refresh_that_finds_a_job_due_sooner_than_known_makes_the_waiter_look_again(
    worker: Worker, client: Client, conn: redis.Redis
) -> None:
    poked = worker.waiter._local
    worker.upkeep.refresh()
    assert not poked.is_set()  # nothing delayed: nothing sooner
    later = Echo.with_options(delay=3600).enqueue(text="later")
    worker.upkeep.refresh()
    assert poked.is_set()
    poked.clear()
    worker.upkeep.refresh()  # the same due time again: nothing new
    assert not poked.is_set()
    conn.zadd(FAST.delayed, {later.id: server_ms(conn) + 1_800_000})
    worker.upkeep.refresh()
    assert poked.is_set()


def finished(conn: redis.Redis, keys: QueueKeys, job_id: str, expires_ms: int) -> None:
    """A succeeded job record that expires at `expires_ms` (server ms)."""
    conn.hset(keys.job(job_id), mapping={"s": "succeeded", "ft": str(expires_ms - 3_600_000)})
    conn.zadd(keys.done, {job_id: expires_ms})


def test_a_retention_pass_runs_once_in_five_seconds_per_queue_across_workers(worker: Worker, conn: redis.Redis) -> None:
    state = worker.states["fast"]
    finished(conn, FAST, "expired-1", server_ms(conn) - 1000)
    worker.upkeep.trim(state)
    assert not conn.exists(FAST.job("expired-1")) and conn.zcard(FAST.done) == 0
    assert conn.get(FAST.trim) == worker.name.encode()
    assert 4000 < conn.pttl(FAST.trim) <= 5000
    finished(conn, FAST, "expired-2", server_ms(conn) - 1000)
    worker.upkeep.trim(state)  # within the five seconds: left for the next pass
    assert conn.exists(FAST.job("expired-2"))


def test_a_tick_beats_every_fifth_of_the_lease_checks_every_second_and_trims_every_five_seconds(
    worker: Worker, conn: redis.Redis, live_thread: threading.Thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forgejobs.runtime.upkeep as upkeep_module

    now = [1000.0]
    monkeypatch.setattr(upkeep_module.time, "monotonic", lambda: now[0])
    worker.states["fast"].slots.append(Slot("fast", 0, "live", thread=live_thread))
    calls: list[str] = []
    for step in ("beat", "refresh"):
        real = getattr(worker.upkeep, step)
        monkeypatch.setattr(worker.upkeep, step, lambda real=real, step=step: (calls.append(step), real())[1])
    real_trim, real_recover = worker.upkeep.trim, worker.upkeep.recover
    monkeypatch.setattr(worker.upkeep, "trim", lambda state: (calls.append(f"trim {state.name}"), real_trim(state)))
    monkeypatch.setattr(
        worker.upkeep, "recover", lambda state: (calls.append(f"recover {state.name}"), real_recover(state))
    )

    def tick_at(t: float) -> list[str]:
        now[0] = t
        calls.clear()
        worker.upkeep.tick()
        return list(calls)

    checks = ["refresh", "recover fast", "recover slow"]
    trims = ["trim fast", "trim slow"]
    assert worker.upkeep.beat_every == 2.0  # a fifth of the 10 s lease
    assert tick_at(1000.0) == ["beat", *checks, *trims]
    assert tick_at(1000.5) == []
    assert tick_at(1001.0) == checks
    assert tick_at(1001.9) == []
    assert tick_at(1002.0) == ["beat", *checks]
    assert tick_at(1004.9) == ["beat", *checks]
    assert tick_at(1005.0) == trims


def test_an_id_that_is_not_utf8_is_shown_as_bytes_and_its_hex(conn: redis.Redis) -> None:
    assert shown_id(b"job-1") == "job-1"
    assert shown_id(b"\xff\x00j") == "bytes:ff006a"


def test_a_retention_pass_deletes_a_job_finished_just_longer_ago_than_its_queue_s_age(conn: redis.Redis) -> None:
    from forgejobs.runtime.scripts import Scripts
    from forgejobs.runtime.upkeep import trim
    from forgejobs.specs import Keep, Retention

    spec = QueueSpec(retention=Retention(completed=Keep(count=None, age=timedelta(hours=1))))
    now = server_ms(conn)
    for job_id, age_ms in (("older", 3_601_000), ("younger", 3_599_000)):
        conn.hset(FAST.job(job_id), mapping={"s": "succeeded", "ft": str(now - age_ms)})
        conn.zadd(FAST.done, {job_id: now + 86_400_000})
    assert trim(Scripts(conn), FAST, spec) == 1
    assert conn.zrange(FAST.done, 0, -1) == [b"younger"] and not conn.exists(FAST.job("older"))


def test_an_upkeep_pass_that_cannot_reach_redis_reports_the_outage_with_its_error_after_half_a_second(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS)
    worker = Worker(settings, registry, queues=["fast"], resources=object())
    worker.upkeep.tick()
    time.sleep(0.6)  # an outage is reported once it has lasted half a second (Outage.QUIET)
    worker.upkeep.tick()
    said = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith(f"worker {worker.name}: Redis at redis://127.0.0.1:{port}/0 cannot be reached (Error ")


def test_an_upkeep_pass_that_fails_otherwise_is_logged_with_its_traceback_and_the_next_goes_on(
    worker: Worker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("a bug in supervise")

    monkeypatch.setattr(worker, "supervise", broken)
    worker.upkeep.tick()  # does not raise
    [record] = [r for r in caplog.records if r.name == "forgejobs.worker" and r.levelno == logging.ERROR]
    assert record.getMessage() == "worker upkeep failed; trying again"
    assert record.exc_info is not None and "a bug in supervise" in str(record.exc_info[1])
