#!/usr/bin/env python
"""Workflows: how soon a fan-in starts after its fan-out's last step finishes, and what a step costs
against a plain job.

    python bench/workflow_latency.py [--runs 30] [--width 50] [--jobs 2000] [--redis-url redis://127.0.0.1:6379/13]

One in-process `Worker` (queue "wfbench", 8 thread slots) on an empty database.
- Fan-in latency: `--runs` runs of a workflow whose `for_each` step has `--width` no-op instances and
  whose fan-in step takes their outputs; latency = the fan-in job's start (`st` in its hash) - the
  latest finish (`ft`) of the fan-out's jobs. Both times come from the worker's clock.
- Overhead per step: `--jobs` no-op jobs enqueued in one call and drained, against one workflow with a
  `--jobs`-wide fan-out of the same job (plus one fan-in step); (workflow time - plain time) / jobs.
Prints p50/p99/max of the latency and both times. The database must be empty (the bench refuses
otherwise; it is claimed as tests/conftest.py claims one) and is flushed at the end (FLUSHDB of that database only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import redis
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forgejobs import Client, Context, Job, Settings, set_client  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.keys import QueueKeys  # noqa: E402
from forgejobs.registry import Registry  # noqa: E402
from forgejobs.runtime.worker import Worker  # noqa: E402
from forgejobs.specs import QueueSpec, Specs  # noqa: E402
from forgejobs.workflows import Step, Workflow  # noqa: E402


class Items(BaseModel):
    items: list[int]


class Noop(Job, queue="wfbench"):
    n: int

    def perform(self, ctx: Context) -> int:
        return self.n


class Gather(Job, queue="wfbench"):
    values: list[int]

    def perform(self, ctx: Context) -> int:
        return len(self.values)


class FanOutIn(Workflow, input=Items, name="bench_fan_out_in"):
    each = Step(Noop, {"n": "item"}, for_each="input.items")
    gather = Step(Gather, {"values": "steps.each.output"}, after=[each])


def wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    conn = redis.Redis.from_url(args.redis_url)
    # claimed as the test suite claims its databases (tests/conftest.py), so no test starts in it meanwhile
    if not conn.set("forgejobs-test:claimed-by", "bench", nx=True, ex=900) or conn.dbsize() != 1:
        raise SystemExit(f"{args.redis_url} is not empty; give --redis-url an empty database")
    settings = Settings(redis_url=args.redis_url, specs=Path("."))
    registry = Registry([Noop, Gather], Specs(queues={"wfbench": QueueSpec(concurrency=8)}))
    client = Client(RedisBackend(conn), registry)
    set_client(client)
    worker = Worker(settings, registry, connection=redis.Redis.from_url(args.redis_url), resources=object())
    worker.start()
    keys = QueueKeys("forgejobs", "wfbench")
    try:
        latencies = []
        for _ in range(args.runs):
            run = FanOutIn.start(items=list(range(args.width)))
            run.wait(timeout=120, poll=0.01)
            ids = [s for state in run.steps().values() for s in state.job_ids]
            *fan_out, fan_in = ids
            last = max(int(conn.hget(keys.job(j), "ft") or 0) for j in fan_out)
            latencies.append(int(conn.hget(keys.job(fan_in), "st") or 0) - last)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        print(
            f"fan-in latency over {args.runs} runs of width {args.width}: p50 {statistics.median(latencies):.0f} ms, "
            f"p99 {p99} ms, max {latencies[-1]} ms"
        )

        started = time.monotonic()
        handles = Noop.enqueue_many([{"n": i} for i in range(args.jobs)])
        wait(lambda: conn.zcard(keys.done) >= args.jobs + args.runs * (args.width + 1), 600)
        plain = time.monotonic() - started
        assert len(handles) == args.jobs

        started = time.monotonic()
        run = FanOutIn.start(items=list(range(args.jobs)))
        run.wait(timeout=600, poll=0.01)
        flow = time.monotonic() - started
        print(
            f"{args.jobs} plain jobs: {plain:.2f} s ({plain / args.jobs * 1000:.2f} ms/job); a {args.jobs}-wide "
            f"workflow fan-out + fan-in: {flow:.2f} s ({flow / args.jobs * 1000:.2f} ms/step); overhead "
            f"{(flow - plain) / args.jobs * 1000:.2f} ms/step"
        )
    finally:
        worker.stop()
        worker.join(10)
        conn.flushdb()


if __name__ == "__main__":
    main()
