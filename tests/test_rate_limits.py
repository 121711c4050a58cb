"""Rate limits: per queue across worker processes, per key without slowing other keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from forgejobs import Client, Context, Job, OptionsError, Status
from forgejobs.ratelimit import RateLimit
from forgejobs.testing import FakeQueue
from tests.conftest import WorkerProcess
from tests.helpers import notes, wait_for
from tests.samplejobs.basic import CallEndpoint, LimitedMark


class Ping(Job, queue="hooks", rate_limit=RateLimit(max=2, per=1), rate_limit_key="endpoint"):
    endpoint: str

    def perform(self, ctx: Context) -> int:
        return ctx.attempt


def test_a_limited_job_waits_on_the_fake_clock_without_using_attempts() -> None:
    with FakeQueue() as queue:
        start = queue.clock.now()
        slow = [Ping.enqueue(endpoint="a") for _ in range(6)]
        fast = [Ping.enqueue(endpoint="b") for _ in range(2)]
        result = queue.drain()
        assert result.succeeded == 8 and result.failed == 0
        assert all(h.result() == 1 for h in slow + fast)  # every run was attempt 1
        # endpoint a: 2 now, 2 a second later, 2 a second after that
        assert queue.clock.now() - start == timedelta(seconds=2)


def test_rate_limit_key_must_name_a_field() -> None:
    with pytest.raises(OptionsError, match="rate_limit_key 'nope' is not one of its fields"):

        class Bad(Job, queue="q", rate_limit=RateLimit(max=1, per=1), rate_limit_key="nope"):
            def perform(self, ctx: Context) -> None: ...


@pytest.mark.redis
def test_a_queue_limit_holds_across_two_worker_processes(
    client: Client, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "limited.jsonl"
    handles = [LimitedMark.enqueue(path=str(path), label=str(i)) for i in range(15)]
    start_worker("--queues", "limited")  # 2 slots each: 4 at once, limited to 5 a second together
    start_worker("--queues", "limited")
    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in handles), timeout=30, what="all 15 jobs")
    times = sorted(float(n["t"]) for n in notes(path))  # type: ignore[arg-type]
    pids = {n["pid"] for n in notes(path)}
    assert len(pids) >= 2, "both worker processes took jobs"
    # 15 runs at 5 a second cannot fit in less than 2 s; unlimited, 4 slots would take milliseconds
    span = times[-1] - times[0]
    assert span >= 1.9, span
    # Runs are timed by the handler, a little after Redis counted them: allow that jitter with 0.9 s windows.
    busiest = max(sum(1 for t in times if start <= t < start + 0.9) for start in times)
    assert busiest <= 5, busiest
    print(f"15 jobs, limit 5/s, two worker processes: at most {busiest} runs in any 0.9 s, span {span:.2f} s")
    assert all(h.result() == 1 for h in handles)  # waiting did not use attempts


@pytest.mark.redis
def test_a_busy_key_does_not_slow_another(
    client: Client, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "keyed.jsonl"
    busy = [CallEndpoint.enqueue(path=str(path), endpoint="busy") for _ in range(8)]
    quiet = [CallEndpoint.enqueue(path=str(path), endpoint="quiet") for _ in range(2)]
    start_worker("--queues", "keyed")
    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in busy + quiet), timeout=30, what="all jobs")
    runs = notes(path)
    first = min(float(n["t"]) for n in runs)  # type: ignore[arg-type]
    quiet_done = max(float(n["t"]) for n in runs if n["endpoint"] == "quiet") - first  # type: ignore[arg-type]
    busy = sorted(float(n["t"]) - first for n in runs if n["endpoint"] == "busy")  # type: ignore[arg-type]
    assert busy[-1] >= 2.9, busy  # 8 runs at 2 a second
    # The quiet key's 2 runs fit its own limit at once: they do not queue behind the busy key, whose
    # fifth run cannot start before 2 s (enqueued first, the busy jobs would all run before them otherwise).
    assert quiet_done < busy[4], (quiet_done, busy)
