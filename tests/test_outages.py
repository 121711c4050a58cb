"""Workers and producers against a Redis that is not there, goes away, or comes back.

Each test runs its own `redis-server` on a free port (never the shared one) and stops it by PID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Registry, Settings, Status
from forgejobs.backends.redis import RedisBackend
from tests.conftest import WorkerProcess, free_port, private_redis, wait_for
from tests.samplejobs.basic import Echo

pytestmark = pytest.mark.redis

StartCli = Callable[..., WorkerProcess]
UNREACHABLE = "cannot be reached"


def client_for(url: str, registry: Registry) -> Client:
    return Client(RedisBackend.from_settings(Settings(redis_url=url, enqueue_timeout=2)), registry)


def test_a_burst_worker_without_redis_exits_non_zero_with_one_line_naming_the_server(start_cli: StartCli) -> None:
    port = free_port()
    worker = start_cli(
        "worker", "--queues", "fast", "--burst",
        env={"FORGEJOBS_REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0", "FORGEJOBS_ENQUEUE_TIMEOUT": "1"},
    )  # fmt: skip
    assert worker.wait(timeout=20) == 1
    log = worker.log()
    assert f"Redis at redis://127.0.0.1:{port}/0 cannot be reached" in log
    assert "s3cret" not in log and "Traceback" not in log
    assert log.count(UNREACHABLE) <= 2  # the outage line, and the error it exits with


def test_a_worker_started_before_redis_waits_for_it_and_then_works(
    start_cli: StartCli, registry: Registry, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = start_cli("worker", "--queues", "fast", env={"FORGEJOBS_REDIS_URL": url})
    wait_for(lambda: UNREACHABLE in worker.log(), timeout=15, what="the worker to say Redis cannot be reached")
    time.sleep(1.5)  # a while without Redis: it must not fill the log meanwhile
    with private_redis(tmp_path, port):
        handle = client_for(url, registry).enqueue_raw("fast.echo", {"text": "late redis"})
        assert handle.result(timeout=20).text == "late redis"
        log = worker.log()
        assert worker.process.poll() is None
        assert log.count(UNREACHABLE) == 1 and log.count("answers again") == 1, log
        assert "Traceback" not in log


def test_a_redis_restart_costs_one_line_each_way_and_no_job(
    start_cli: StartCli, registry: Registry, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with private_redis(tmp_path, port):
        worker = start_cli("worker", "--queues", "fast", env={"FORGEJOBS_REDIS_URL": url})
        assert client_for(url, registry).enqueue_raw("fast.echo", {"text": "before"}).result(timeout=20)
    # the server is gone (killed by PID); the worker rides it out
    wait_for(lambda: UNREACHABLE in worker.log(), timeout=15, what="the worker to notice")
    time.sleep(1.0)
    with private_redis(tmp_path, port):
        handle = client_for(url, registry).enqueue_raw("fast.echo", {"text": "after"})
        assert handle.result(timeout=20)
        wait_for(lambda: "answers again" in worker.log(), timeout=10, what="the worker to say Redis is back")
        log = worker.log()
        assert log.count(UNREACHABLE) == 1 and log.count("answers again") == 1, log
        assert "Traceback" not in log


def test_a_burst_worker_on_a_paused_queue_says_so_and_exits(
    client: Client, start_cli: StartCli, conn: redis.Redis
) -> None:
    client.pause("fast")
    handle = Echo.enqueue(text="waits for resume")
    worker = start_cli("worker", "--queues", "fast", "--burst", "--horizon", "0")
    assert worker.wait(timeout=20) == 0
    assert "fast is paused: 1 job(s) left for when it is resumed" in worker.log()
    assert handle.status() is Status.QUEUED


def test_a_scheduler_rides_a_redis_restart_and_syncs_repeats_that_were_lost(
    start_cli: StartCli, tmp_path: Path
) -> None:
    """The sample specs repeat `fast.echo` every second. The scheduler's Redis is killed (no persistence: its
    repeats are gone) and started again: the scheduler says so once each way, stays up, notices the repeats
    are missing, stores them again, and ticks go on."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    wait_list = "forgejobs:{fast}:wait:p05"
    with private_redis(tmp_path, port):
        scheduler = start_cli("scheduler", "--interval", "0.1", env={"FORGEJOBS_REDIS_URL": url})
        conn = redis.Redis.from_url(url)
        wait_for(lambda: conn.llen(wait_list) >= 1, timeout=15, what="a first tick")
    wait_for(lambda: UNREACHABLE in scheduler.log(), timeout=15, what="the scheduler to notice")
    time.sleep(1.0)
    with private_redis(tmp_path, port):
        conn = redis.Redis.from_url(url)
        wait_for(lambda: conn.llen(wait_list) >= 1, timeout=15, what="ticks after the restart")
        log = scheduler.log()
        assert scheduler.process.poll() is None, log
        assert log.count(UNREACHABLE) == 1 and log.count("answers again") == 1, log
        assert "the repeats were gone from Redis" in log and "Traceback" not in log
