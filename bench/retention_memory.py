#!/usr/bin/env python
"""Redis memory over a long burst: forgejobs (with its retention) against raw RQ, same run, same Redis.

    python bench/retention_memory.py [--waves 12] [--wave-size 1000] [--redis-url redis://127.0.0.1:6379/14]

Each side runs `--waves` waves of `--wave-size` no-op jobs through one worker and samples
Redis's `used_memory` after each wave. forgejobs runs with its defaults except smaller caps so
the steady state shows within the run: queue retention keeps the newest 1,000 completed jobs
(the default) and the event stream keeps 5,000 events (FORGEJOBS_EVENTS_MAX; default 100,000).
Raw RQ keeps every result for its default 500 s. Memory is measured on one database that must
be empty (refused otherwise); each side's keys are deleted before the other runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import redis
from rq import Queue, SimpleWorker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchjobs import QUEUE, NoopJob, registry  # noqa: E402
from benchjobs.rqfuncs import noop  # noqa: E402

from forgejobs import Client, Settings, use_client  # noqa: E402
from forgejobs import worker as worker_module  # noqa: E402
from forgejobs.backends.rq import RQBackend  # noqa: E402
from forgejobs.worker import Worker  # noqa: E402


def used_mb(conn: redis.Redis) -> float:
    return int(conn.info("memory")["used_memory"]) / 1e6


def forgejobs_side(conn: redis.Redis, url: str, waves: int, size: int) -> list[float]:
    settings = Settings(redis_url=url, events_max=5_000, scheduler_interval=0.1)
    reg = registry()
    client = Client(RQBackend.for_connection(conn, settings), reg)
    worker_module.TRIM_SECONDS = 0.5  # trim as often as the run needs (default 5 s)
    samples = []
    with use_client(client):
        for _ in range(waves):
            for start in range(0, size, 500):
                NoopJob.enqueue_many([{"n": i} for i in range(start, min(size, start + 500))])
            Worker(settings, reg, queues=[QUEUE], concurrency=1, connection=conn).run(burst=True, horizon=0)
            samples.append(used_mb(conn))
    return samples


def rq_side(conn: redis.Redis, waves: int, size: int) -> list[float]:
    queue = Queue("rqmem", connection=conn)
    samples = []
    for _ in range(waves):
        with conn.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(size)], pipeline=pipe)
            pipe.execute()
        SimpleWorker([queue], connection=conn).work(burst=True, logging_level="WARNING")
        samples.append(used_mb(conn))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=12)
    parser.add_argument("--wave-size", type=int, default=1000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    conn = redis.Redis.from_url(args.redis_url)
    if conn.dbsize():
        print(f"refusing to run: {args.redis_url} is not empty")
        return 2
    try:
        base = used_mb(conn)
        fj = forgejobs_side(conn, args.redis_url, args.waves, args.wave_size)
        conn.flushdb()  # empty at start (checked above): everything here is the bench's
        rq = rq_side(conn, args.waves, args.wave_size)
    finally:
        conn.flushdb()
    print(f"used_memory above the empty database ({base:.1f} MB), MB, after each wave of {args.wave_size} jobs:")
    print(f"{'wave':>4} {'jobs':>7} {'forgejobs':>10} {'raw RQ':>8}")
    for i, (a, b) in enumerate(zip(fj, rq), start=1):
        print(f"{i:>4} {i * args.wave_size:>7} {a - base:>10.2f} {b - base:>8.2f}")
    half = len(fj) // 2
    print(
        f"forgejobs: last wave {fj[-1] - base:.2f} MB, mid-run {fj[half] - base:.2f} MB "
        f"(growth over the second half {(fj[-1] - fj[half]):+.2f} MB); "
        f"raw RQ: {rq[-1] - base:.2f} MB (second half {(rq[-1] - rq[half]):+.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
