"""Pause, resume, drain and obliterate: across processes, on a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from forgejobs import Client, ForgeJobsError, Status, UnknownJob
from forgejobs.cli import cli
from tests.conftest import WorkerProcess
from tests.helpers import cli_env, wait_for
from tests.samplejobs.basic import Doomed, Echo, Mark, Slow

pytestmark = pytest.mark.redis


def test_a_paused_queue_keeps_accepting_jobs_and_workers_take_none_until_resumed(
    client: Client, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    client.pause("fast")
    assert client.paused() == {"fast"}
    # A worker reads the paused queues before its slots start (and about once a second after that), so one
    # started now has seen the pause before the job exists: no waiting for it to notice.
    start_worker("--queues", "fast")
    path = tmp_path / "marks.jsonl"
    handle = Mark.enqueue(path=str(path), label="held")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # a worker that ignored the pause would run it within milliseconds
        assert handle.status() is Status.QUEUED
        time.sleep(0.1)
    client.resume("fast")
    wait_for(lambda: handle.status() is Status.SUCCEEDED, timeout=10, what="the job to run after resume")
    assert json.loads(path.read_text())["label"] == "held"


def test_drain_deletes_waiting_and_scheduled_jobs_only(client: Client, conn: redis.Redis) -> None:
    waiting = Echo.enqueue_many([{"text": str(i)} for i in range(3)])
    later = Echo.with_options(delay=60).enqueue(text="later")
    other = Slow.enqueue(path="/dev/null", seconds=0)  # another queue: untouched
    assert client.drain("fast") == 4
    assert all(h.status() is Status.UNKNOWN for h in [*waiting, later])
    assert other.status() is Status.QUEUED


def test_obliterate_removes_everything_the_queue_holds_and_refuses_while_jobs_run(
    client: Client, conn: redis.Redis, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker("--queues", "fast,slow")
    done = Echo.enqueue(text="done")
    done.result(timeout=10)
    dead = Doomed.enqueue(path=str(tmp_path / "d.jsonl"))
    wait_for(lambda: dead.status() is Status.FAILED, timeout=10, what="a dead letter")
    running = Slow.enqueue(path=str(tmp_path / "s.jsonl"), seconds=3)
    wait_for(lambda: running.status() is Status.RUNNING, timeout=10, what="the slow job to start")
    with pytest.raises(ForgeJobsError, match="slow has 1 running job"):
        client.obliterate("slow")
    assert client.obliterate("fast") == 2
    assert done.status() is Status.UNKNOWN and dead.status() is Status.UNKNOWN
    assert client.dead_letters() == []
    for kind in ("wait:*", "delayed", "done", "failed", "job:*"):  # the workers' leases stay
        assert not conn.keys(f"forgejobs:{{fast}}:{kind}"), kind
    running.result(timeout=10)  # the other queue was not touched


def test_queue_commands(client: Client, redis_url: str) -> None:
    env = cli_env(redis_url)
    runner = CliRunner()
    assert "paused fast" in runner.invoke(cli, ["queue", "pause", "fast"], env=env).output
    info = runner.invoke(cli, ["info"], env=env).output
    assert "paused" in next(line for line in info.splitlines() if "fast" in line)
    assert "resumed fast" in runner.invoke(cli, ["queue", "resume", "fast"], env=env).output
    Echo.enqueue(text="x")
    assert "1 job(s) deleted" in runner.invoke(cli, ["queue", "drain", "fast"], env=env).output
    result = runner.invoke(cli, ["queue", "pause", "nope"], env=env)
    assert result.exit_code == 1 and "no queue named 'nope'" in result.output
    with pytest.raises(UnknownJob):
        client.pause("nope")
