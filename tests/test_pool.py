"""The process supervisor (`forgejobs worker` with `mode: processes` queues or `--processes`): a thread child
beside the process children, burst runs, a second signal, children that fail at start or die later.

Real `forgejobs worker` subprocesses on a real Redis (the test's database, or a redis-server of the test's
own where Redis has to go away); one test calls the supervisor's reaping in this process.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Registry, Settings, Status
from forgejobs.backends.redis import RedisBackend
from forgejobs.keys import QueueKeys
from forgejobs.options import EnqueueOptions
from forgejobs.pool import ProcessWorker, _Child
from forgejobs.runtime.worker import slot_pid
from tests.conftest import WorkerProcess, private_redis
from tests.helpers import SAMPLE_SPECS, notes, wait_for
from tests.samplejobs.basic import Echo, Slow

pytestmark = pytest.mark.redis

StartCli = Callable[..., WorkerProcess]
FAST = QueueKeys("forgejobs", "fast")
SLOW = QueueKeys("forgejobs", "slow")


def slot_pids(conn: redis.Redis, keys: QueueKeys) -> list[int]:
    """The process of each slot holding a lease on a queue."""
    members: list[bytes] = conn.zrange(keys.workers, 0, -1)  # type: ignore[assignment]
    return [slot_pid(m) for m in members]


def fast_in_process_mode(tmp_path: Path) -> Path:
    """The sample specs, with queue fast in `mode: processes` and slow at 2 slots (threads)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    queues = (SAMPLE_SPECS / "queues.yaml").read_text()
    queues = queues.replace("fast: {concurrency: 1}", "fast: {concurrency: 1, mode: processes}")
    queues = queues.replace("slow: {concurrency: 1}", "slow: {concurrency: 2}")
    assert queues != (SAMPLE_SPECS / "queues.yaml").read_text()
    (specs / "queues.yaml").write_text(queues)
    return specs


def test_a_queue_in_process_mode_gets_a_child_per_slot_and_the_other_queues_share_one_thread_child(
    client: Client, conn: redis.Redis, start_worker: StartCli, tmp_path: Path
) -> None:
    specs = fast_in_process_mode(tmp_path)
    worker = start_worker("--queues", "fast,slow", env={"FORGEJOBS_SPECS": str(specs)})
    wait_for(lambda: conn.zcard(FAST.workers) == 1 and conn.zcard(SLOW.workers) == 2, timeout=20, what="3 slots")

    assert "serving fast×1 (processes), slow×2" in worker.log()
    (fast_pid,) = slot_pids(conn, FAST)
    slow_pids = set(slot_pids(conn, SLOW))
    assert len(slow_pids) == 1 and fast_pid not in slow_pids and worker.pid not in {fast_pid, *slow_pids}
    assert Echo.enqueue(text="in its own process").result(timeout=20).text == "in its own process"
    path = tmp_path / "slow.jsonl"
    assert Slow.enqueue(path=str(path), seconds=0).result(timeout=20) == "slept"
    assert {n["pid"] for n in notes(path)} == slow_pids  # run by a slot thread of the thread child
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert "worker stopped: succeeded 2" in worker.log()  # both children reported what they ran


def test_sigterm_while_the_children_build_their_resources_stops_the_thread_child_too(
    start_cli: StartCli, tmp_path: Path
) -> None:
    """The signal reaches the children before their workers exist (they spend 2 s in the resources factory):
    each stops as soon as its worker is built, the thread-mode child as well as the process-mode one."""
    env = {
        "FORGEJOBS_SPECS": str(fast_in_process_mode(tmp_path)),
        "FORGEJOBS_RESOURCES": "tests.samplejobs.slowresources:build",
    }
    worker = start_cli("worker", "--queues", "fast,slow", env=env)
    wait_for(lambda: "(processes) serving" in worker.log(), timeout=20, what="the children to be forked")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0, worker.log()
    assert "aborting" not in worker.log()
    assert "worker stopped: no jobs run" in worker.log()


def test_a_burst_run_with_process_slots_exits_once_the_queue_is_empty_counting_what_the_children_ran(
    client: Client, start_cli: StartCli
) -> None:
    handles = [Echo.enqueue(text=f"burst {n}") for n in range(3)]

    worker = start_cli("worker", "--queues", "fast", "--processes", "--concurrency", "2", "--burst", "--horizon", "0")

    assert worker.wait(timeout=60) == 0, worker.log()
    assert [h.status() for h in handles] == [Status.SUCCEEDED] * 3
    assert "worker stopped: succeeded 3" in worker.log()


def test_a_burst_run_does_not_end_while_redis_is_unreachable_and_ends_once_it_answers_with_nothing_pending(
    registry: Registry, start_cli: StartCli, tmp_path: Path
) -> None:
    (tmp_path / "first").mkdir()
    with private_redis(tmp_path / "first") as (server, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        private = Client(RedisBackend(redis.Redis.from_url(url)), registry)
        private.enqueue(Echo, [{"text": "later"}], EnqueueOptions(delay=300))  # pending within the horizon
        worker = start_cli(
            "worker", "--queues", "fast", "--processes", "--burst", "--horizon", "600", env={"FORGEJOBS_REDIS_URL": url}
        )
        wait_for(lambda: "(processes) serving" in worker.log(), timeout=20, what="the supervisor to start")
        server.kill()
        server.wait(10)
    wait_for(lambda: "cannot be reached" in worker.log(), timeout=20, what="the child to notice the outage")
    # the supervisor's own checks have failed meanwhile (it polls every 0.1 s): it waits on
    assert worker.process.poll() is None, worker.log()

    (tmp_path / "second").mkdir()
    with private_redis(tmp_path / "second", port=port):  # back, and empty: nothing pending
        assert worker.wait(timeout=60) == 0, worker.log()
    assert "worker stopped: no jobs run" in worker.log()


def test_a_second_signal_to_the_supervisor_aborts_the_job_running_in_a_child(
    client: Client, start_worker: StartCli, tmp_path: Path
) -> None:
    worker = start_worker("--queues", "slow", "--processes")
    path = tmp_path / "slow.jsonl"
    handle = Slow.enqueue(path=str(path), seconds=60)
    wait_for(lambda: notes(path), timeout=20, what="the job to start")

    worker.signal(signal.SIGTERM)
    # the supervisor's line and the child's (the signal it forwarded): two distinct signals follow
    wait_for(lambda: worker.log().count("finishing running jobs") >= 2, timeout=20, what="the warm shutdown")
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0, worker.log()
    assert "signal 15 again: aborting running jobs; they will run again" in worker.log()
    assert [n["event"] for n in notes(path)] == ["start"]
    assert handle.status() is Status.QUEUED  # put back to run the same attempt again


def test_a_child_that_fails_at_start_is_started_again_after_a_pause_and_sigterm_still_stops_the_supervisor(
    client: Client, start_cli: StartCli, tmp_path: Path
) -> None:
    starts = tmp_path / "starts.txt"
    (tmp_path / "pool_failing_resources.py").write_text(
        "import time\n"
        "def build(settings):\n"
        f"    with open({str(starts)!r}, 'a') as fh:\n"
        "        fh.write(f'{time.monotonic()}\\n')\n"
        "    raise RuntimeError('the database is down')\n"
    )
    env = {
        "FORGEJOBS_RESOURCES": "pool_failing_resources:build",
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p),
    }
    worker = start_cli("worker", "--queues", "fast", "--processes", env=env)

    # each child dies at start; the supervisor logs it, pauses a second and forks another
    wait_for(
        lambda: worker.log().count("exited with 1; starting another") >= 2,
        timeout=30,
        what="two children to fail",
        explain=worker.log,
    )
    worker.signal(signal.SIGTERM)  # most likely during the pause: no child is started after it

    assert worker.wait(timeout=30) == 0, worker.log()
    log = worker.log()
    assert "RuntimeError: the database is down" in log  # the child's traceback
    assert "worker stopped: no jobs run" in log
    moments = [float(line) for line in starts.read_text().split()]
    assert len(moments) >= 2
    assert all(b - a >= 0.9 for a, b in zip(moments, moments[1:])), moments  # no spinning


def test_a_child_killed_after_it_ran_a_while_is_replaced(
    client: Client, conn: redis.Redis, start_worker: StartCli, tmp_path: Path
) -> None:
    worker = start_worker("--queues", "slow", "--processes")
    path = tmp_path / "slow.jsonl"
    assert Slow.enqueue(path=str(path), seconds=1.2).result(timeout=20) == "slept"  # the child is > 1 s old
    (child,) = {n["pid"] for n in notes(path)}

    os.kill(child, signal.SIGKILL)

    wait_for(lambda: f"child {child} (slow #0) exited with -9; starting another" in worker.log(), timeout=20)
    assert Slow.enqueue(path=str(path), seconds=0).result(timeout=20) == "slept"
    assert notes(path)[-1]["pid"] not in {child, worker.pid}


def reap_after_a_stranger(settings: Settings, registry: Registry) -> dict[str, object]:
    """In a process with no other children: a supervisor that believes in one child (reaped elsewhere) reaps
    after a process it did not start has exited. What it is left with, as JSON values."""
    supervisor = ProcessWorker(settings, registry, queues=["fast"], processes=True)
    stranger = os.fork()
    if stranger == 0:  # the child leaves at once
        os._exit(0)
    os.waitid(os.P_PID, stranger, os.WEXITED | os.WNOWAIT)  # it has exited; not reaped yet
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    gone = _Child(pid=2**22 + 1, queue="fast", index=0, report_fd=read_fd, started=0.0)
    supervisor._children[gone.pid] = gone
    supervisor._reap()
    try:
        os.waitpid(stranger, os.WNOHANG)
        stranger_reaped = False
    except ChildProcessError:
        stranger_reaped = True
    return {"children": len(supervisor._children), "counts": dict(supervisor.stats.counts), "reaped": stranger_reaped}


def test_the_supervisor_skips_a_process_it_did_not_start_and_forgets_children_once_none_is_left(
    settings: Settings, registry: Registry
) -> None:
    """Run in a forked process of its own: waitpid(-1) there sees only the processes the test makes (pytest's
    own children, e.g. a browser driver, would answer it here)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 1
        try:
            os.write(write_fd, json.dumps(reap_after_a_stranger(settings, registry)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        reply = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked test process failed (its traceback is above)"

    left = json.loads(reply)
    assert left["reaped"]  # _reap took the stranger's exit status, and went on
    assert left["counts"] == {}  # nothing was collected from it
    assert left["children"] == 0  # none left to wait for: the supervisor's run loop ends instead of waiting forever
