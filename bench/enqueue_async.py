#!/usr/bin/env python
"""Async enqueue/s against sync enqueue/s, in one run, on the same Redis.

    python bench/enqueue_async.py [--jobs 5000] [--tasks 10,100] [--batch 1000] [--repeat 3] [--redis-url URL]

Each row enqueues `--jobs` `NoopJob`s (bench/benchjobs) and times it:

- sync: `NoopJob.enqueue(n=i)` one after another (the baseline of every ratio);
- async, sequential: `await NoopJob.aenqueue(n=i)` one after another in one task;
- async, N tasks: the same jobs split over N tasks started with `asyncio.gather`, each awaiting its
  share one after another (one connection per task from the pool);
- many: `enqueue_many` against `await aenqueue_many` in batches of `--batch` (items built inside the
  timing on both sides).

Both clients are made on one Settings (the async one is `AsyncClient.for_client` of the sync one:
same server, registry, prefix and timeouts). Every row runs `--repeat` times after an unrecorded
warm-up, sync and async alternating which goes first; the table shows the median jobs/s and its
ratio to the sync row of its kind. Validation, the size guard and the envelope are the same code on
both sides, so the difference is the transport: a blocking socket against the event loop.

Safety: the bench refuses to start unless the database in `--redis-url` (default
redis://127.0.0.1:6379/13) is empty. Because it was empty at start, every key in it was made by the
bench, so FLUSHDB of that one database (never FLUSHALL) resets it between runs and removes
everything the bench made at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchjobs import NoopJob, registry  # noqa: E402

from forgejobs import Client  # noqa: E402
from forgejobs.aio import AsyncClient  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.settings import Settings  # noqa: E402


def sync_one_by_one(client: Client, jobs: int) -> None:
    enqueuer = NoopJob.with_options(client=client)
    for i in range(jobs):
        enqueuer.enqueue(n=i)


def sync_many(client: Client, jobs: int, batch: int) -> None:
    enqueuer = NoopJob.with_options(client=client)
    for start in range(0, jobs, batch):
        enqueuer.enqueue_many([{"n": i} for i in range(start, min(jobs, start + batch))])


async def async_one_by_one(client: AsyncClient, jobs: range) -> None:
    enqueuer = NoopJob.with_options(client=client)
    for i in jobs:
        await enqueuer.aenqueue(n=i)


async def async_tasks(client: AsyncClient, jobs: int, tasks: int) -> None:
    await asyncio.gather(*(async_one_by_one(client, range(t, jobs, tasks)) for t in range(tasks)))


async def async_many(client: AsyncClient, jobs: int, batch: int) -> None:
    enqueuer = NoopJob.with_options(client=client)
    for start in range(0, jobs, batch):
        await enqueuer.aenqueue_many([{"n": i} for i in range(start, min(jobs, start + batch))])


class Bench:
    """Timed runs on one database, emptied before each (it was empty when the bench started)."""

    def __init__(self, conn: redis.Redis, sync: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.sync = sync
        self.loop = loop
        self.aclient = AsyncClient.for_client(sync)

    def time_sync(self, work: Callable[[], None]) -> float:
        self.conn.flushdb()
        started = time.perf_counter()
        work()
        return time.perf_counter() - started

    def time_async(self, work: Callable[[], Awaitable[None]]) -> float:
        self.conn.flushdb()

        async def timed() -> float:
            started = time.perf_counter()
            await work()
            return time.perf_counter() - started

        return self.loop.run_until_complete(timed())


def rows(args: argparse.Namespace) -> list[tuple[str, str, Callable[[Bench], float]]]:
    """(kind, label, measure): the first row of each kind is the sync baseline of that kind."""
    jobs = args.jobs
    table: list[tuple[str, str, Callable[[Bench], float]]] = [
        ("one", "sync enqueue, one by one", lambda b: b.time_sync(lambda: sync_one_by_one(b.sync, jobs))),
        (
            "one",
            "async aenqueue, one by one",
            lambda b: b.time_async(lambda: async_one_by_one(b.aclient, range(jobs))),
        ),
    ]
    for tasks in args.tasks:
        table.append(
            (
                "one",
                f"async aenqueue, {tasks} tasks (gather)",
                lambda b, t=tasks: b.time_async(lambda: async_tasks(b.aclient, jobs, t)),
            )
        )
    table += [
        (
            "many",
            f"sync enqueue_many, batches of {args.batch}",
            lambda b: b.time_sync(lambda: sync_many(b.sync, jobs, args.batch)),
        ),
        (
            "many",
            f"async aenqueue_many, batches of {args.batch}",
            lambda b: b.time_async(lambda: async_many(b.aclient, jobs, args.batch)),
        ),
    ]
    return table


def run(conn: redis.Redis, args: argparse.Namespace) -> int:
    settings = Settings(redis_url=args.redis_url)
    sync = Client(RedisBackend.from_settings(settings), registry())
    loop = asyncio.new_event_loop()
    bench = Bench(conn, sync, loop)
    table = rows(args)
    seconds: dict[str, list[float]] = {label: [] for _, label, _ in table}
    try:
        for run_number in range(args.repeat + 1):  # run 0 warms up and is not recorded
            order = table if run_number % 2 == 0 else list(reversed(table))
            for _, label, measure in order:
                took = measure(bench)
                if run_number:
                    seconds[label].append(took)
    finally:
        loop.run_until_complete(bench.aclient.aclose())
        loop.close()
        sync.close()
    print(f"{args.jobs} NoopJob enqueues per row, median of {args.repeat} runs, {args.redis_url}")
    print(f"{'':<44}{'jobs/s':>10}{'vs sync':>10}")
    baseline: dict[str, float] = {}
    for kind, label, _ in table:
        rate = args.jobs / statistics.median(seconds[label])
        baseline.setdefault(kind, rate)
        print(f"{label:<44}{rate:>10,.0f}{rate / baseline[kind]:>9.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument(
        "--tasks", type=lambda text: [int(t) for t in text.split(",")], default=[10, 100], help="e.g. 10,100"
    )
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    conn = redis.Redis.from_url(args.redis_url)
    if conn.dbsize():
        print(f"refusing to run: {args.redis_url} is not empty; pick an empty database with --redis-url")
        return 2
    try:
        return run(conn, args)
    finally:
        conn.flushdb()  # empty at start (checked in main): everything here was the bench's


if __name__ == "__main__":
    raise SystemExit(main())
