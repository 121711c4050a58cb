"""Cancel: a waiting or delayed job is taken off its queue; a running one sees ctx.cancelled and ends cancelled.

The job classes below are this module's own (FORGEJOBS_JOBS=tests.test_cancel), on a queue the test's
own spec file declares, so the worker subprocesses load nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Context, Job, Registry, Settings, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.errors import NoSuchJob
from forgejobs.events import EventStream
from forgejobs.inspection import Inspector, State
from forgejobs.keys import QueueKeys
from forgejobs.metrics import MetricsReader
from forgejobs.runtime.cancel import CannotCancel, cancel
from forgejobs.runtime.worker import Worker
from forgejobs.status import Status
from tests.conftest import WorkerProcess
from tests.helpers import ROOT, cli_env, notes, wait_for

pytestmark = pytest.mark.redis

QUEUE = QueueKeys("forgejobs", "cancels")


def _note(path: str, what: str) -> None:
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"what": what, "pid": os.getpid(), "t": time.time()}) + "\n")


class Waits(Job, queue="cancels", attempts=3, timeout=120):
    """Wait until cancelled (or `seconds` pass), noting what it saw; with `raise_on_cancel`, raise then."""

    path: str
    seconds: float = 60
    raise_on_cancel: bool = False

    def perform(self, ctx: Context) -> str:
        _note(self.path, "start")
        if ctx.wait_cancelled(self.seconds):
            _note(self.path, "saw cancel")
            if self.raise_on_cancel:
                ctx.raise_if_cancelled()
            return "stopped early"
        return "waited"


class WaitsAsync(Job, queue="cancels", attempts=1, timeout=120):
    """`Waits` for `async def perform`."""

    path: str
    seconds: float = 60

    async def perform(self, ctx: Context) -> str:
        _note(self.path, "start")
        if await ctx.wait_cancelled_async(self.seconds):
            _note(self.path, "saw cancel")
            return "stopped early"
        return "waited"


class Ignores(Job, queue="cancels", attempts=1, timeout=120):
    """Sleep without looking at ctx.cancelled."""

    path: str
    seconds: float

    def perform(self, ctx: Context) -> str:
        _note(self.path, "start")
        time.sleep(self.seconds)
        _note(self.path, "end")
        return "slept"


def seen(path: Path) -> list[str]:
    """What a `Waits` job noted, in order ("start", "saw cancel", "end")."""
    return [note["what"] for note in notes(path)]


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "queues.yaml").write_text("queues:\n  cancels: {concurrency: 3}\n")
    return folder


@pytest.fixture
def cancel_settings(redis_url: str, specs: Path) -> Settings:
    return Settings(redis_url=redis_url, jobs="tests.test_cancel", specs=specs, stall_timeout=2)


@pytest.fixture
def cancel_client(conn: redis.Redis, cancel_settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(cancel_settings))
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture
def worker_env(redis_url: str, specs: Path) -> dict[str, str]:
    """This module's jobs and specs, for `forgejobs` subprocesses on the test's database."""
    # a heartbeat every 0.4 s: cancels are noticed that often
    return cli_env(redis_url, jobs="tests.test_cancel", specs=specs, FORGEJOBS_STALL_TIMEOUT="2")


@pytest.fixture
def start_cancel_worker(
    start_worker: Callable[..., WorkerProcess], worker_env: dict[str, str]
) -> Callable[[], WorkerProcess]:
    """A worker on every queue of this module's specs, started and registered."""
    return lambda: start_worker(env=worker_env)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`forgejobs ARGS...` as a process of its own, its output and errors apart."""
    return subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def kinds(conn: redis.Redis, job_id: str) -> list[str]:
    return [e.kind.value for e in EventStream(conn, "forgejobs:events").read(count=10_000) if e.job_id == job_id]


def test_a_waiting_and_a_delayed_job_are_taken_off_their_queue_and_never_run(
    cancel_client: Client, conn: redis.Redis, cancel_settings: Settings, tmp_path: Path
) -> None:
    waiting = Waits.enqueue(path=str(tmp_path / "w"), seconds=0)
    delayed = Waits.with_options(delay=3600).enqueue(path=str(tmp_path / "d"), seconds=0)

    assert cancel(cancel_client.backend, cancel_client.registry, waiting.id).outcome == "cancelled"
    assert cancel(cancel_client.backend, cancel_client.registry, delayed.id).outcome == "cancelled"

    assert waiting.status() is Status.CANCELLED and delayed.status() is Status.CANCELLED
    assert conn.llen(QUEUE.wait(5)) == 0 and conn.zcard(QUEUE.delayed) == 0
    assert cancel_client.backend.dead_letters.count() == 0
    assert kinds(conn, waiting.id) == ["enqueued", "cancelled"]
    detail = Inspector(cancel_client.backend, cancel_client.registry).job(delayed.id)
    assert detail.state is State.CANCELLED and detail.finished_at is not None and detail.expires_at is not None
    listed = Inspector(cancel_client.backend, cancel_client.registry).jobs("cancels", "cancelled")
    assert {j.id for j in listed} == {waiting.id, delayed.id}

    Worker(cancel_settings, cancel_client.registry, connection=conn).run(burst=True, horizon=0)
    assert seen(tmp_path / "w") == [] and seen(tmp_path / "d") == []
    assert MetricsReader(conn, queues=["cancels"]).snapshot().total("cancelled", "cancels") == 2


def test_running_jobs_see_ctx_cancelled_and_end_cancelled_whether_they_return_or_raise(
    cancel_client: Client, conn: redis.Redis, start_cancel_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    worker = start_cancel_worker()
    returns = Waits.enqueue(path=str(tmp_path / "returns"))
    raises = Waits.enqueue(path=str(tmp_path / "raises"), raise_on_cancel=True)
    awaits = WaitsAsync.enqueue(path=str(tmp_path / "awaits"))
    jobs = {"returns": returns, "raises": raises, "awaits": awaits}
    wait_for(lambda: all(seen(tmp_path / name) == ["start"] for name in jobs), timeout=30, what="all three to start")

    for handle in jobs.values():
        result = cancel(cancel_client.backend, cancel_client.registry, handle.id)
        assert result.outcome == "requested", result
    assert cancel(cancel_client.backend, cancel_client.registry, returns.id).outcome == "already"

    wait_for(
        lambda: all(h.status() is Status.CANCELLED for h in jobs.values()),
        timeout=30,
        what=f"every job to end cancelled; worker log:\n{worker.log()}",
    )
    for name in jobs:
        assert seen(tmp_path / name) == ["start", "saw cancel"], name
    assert cancel_client.backend.dead_letters.count() == 0
    assert kinds(conn, raises.id) == ["enqueued", "started", "cancelled"]
    assert conn.scard(QUEUE.cancels) == 0 and conn.hlen(QUEUE.active) == 0
    detail = Inspector(cancel_client.backend, cancel_client.registry).job(raises.id)
    assert detail.state is State.CANCELLED and detail.attempts == [] and detail.started_at is not None
    snapshot = MetricsReader(conn, queues=["cancels"]).snapshot()
    assert snapshot.total("cancelled", "cancels") == 3 and snapshot.total("retried", "cancels") == 0


def test_a_running_job_cancelled_in_a_worker_of_this_process_ends_cancelled_and_its_job_line_says_so(
    cancel_client: Client,
    conn: redis.Redis,
    cancel_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.worker")
    worker = Worker(cancel_settings, cancel_client.registry, connection=conn, resources=object())
    handle = Waits.enqueue(path=str(tmp_path / "w"))
    worker.start(give_up_after=10)
    try:
        wait_for(lambda: seen(tmp_path / "w") == ["start"], timeout=30, what="the job to start")
        assert cancel(cancel_client.backend, cancel_client.registry, handle.id).outcome == "requested"
        wait_for(lambda: handle.status() is Status.CANCELLED, timeout=30, what="the job to end cancelled")
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    lines = [(r.job_id, r.attempt, r.outcome) for r in caplog.records if hasattr(r, "outcome")]  # type: ignore[attr-defined]
    assert lines == [(handle.id, 1, "cancelled")]
    assert worker.stats.counts == {"cancelled": 1}


def test_a_handler_that_never_looks_still_ends_cancelled(
    cancel_client: Client, start_cancel_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    start_cancel_worker()
    handle = Ignores.enqueue(path=str(tmp_path / "i"), seconds=4)
    wait_for(lambda: seen(tmp_path / "i") == ["start"], timeout=30, what="the job to start")
    assert cancel(cancel_client.backend, cancel_client.registry, handle.id).outcome == "requested"
    wait_for(lambda: handle.status() is Status.CANCELLED, timeout=30, what="the job to end cancelled")
    assert seen(tmp_path / "i") == ["start", "end"]  # it ran to its end: nothing interrupts a handler


def test_cancel_refuses_a_finished_or_unknown_job_and_the_cli_says_what_it_did(
    cancel_client: Client, cancel_settings: Settings, conn: redis.Redis, worker_env: dict[str, str], tmp_path: Path
) -> None:
    done = Waits.enqueue(path=str(tmp_path / "done"), seconds=0)
    Worker(cancel_settings, cancel_client.registry, connection=conn).run(burst=True, horizon=0)
    assert done.status() is Status.SUCCEEDED
    with pytest.raises(CannotCancel, match=r"has already finished \(succeeded\)"):
        cancel(cancel_client.backend, cancel_client.registry, done.id)
    with pytest.raises(NoSuchJob, match="no job with id 'nope'"):
        cancel(cancel_client.backend, cancel_client.registry, "nope")

    pending = Waits.enqueue(path=str(tmp_path / "pending"), seconds=0)
    ok = run_cli(worker_env, "job", "cancel", pending.id)
    assert ok.returncode == 0, ok.stderr
    assert f"cancelled {pending.id} (cancels.waits on cancels): it will not run" in ok.stdout
    again = run_cli(worker_env, "job", "cancel", pending.id)
    assert again.returncode == 1
    assert f"error: job {pending.id} has already finished (cancelled): there is nothing to cancel" in again.stderr
    unknown = run_cli(worker_env, "job", "cancel", "nope")
    assert unknown.returncode == 1 and "no job with id 'nope' to cancel" in unknown.stderr
    shown = run_cli(worker_env, "job", pending.id, "--json")
    assert json.loads(shown.stdout)["status"] == "cancelled"
