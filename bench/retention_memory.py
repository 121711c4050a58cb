#!/usr/bin/env python
"""Redis memory over a long burst: forgejobs (with its retention) against raw RQ, same run, same Redis.

    python bench/retention_memory.py [--waves 12] [--wave-size 1000] [--redis-url redis://127.0.0.1:6379/14]

Each side runs `--waves` waves of `--wave-size` no-op jobs through one worker and samples
Redis's `used_memory` after each wave. forgejobs runs its own runtime (`forgejobs.runtime.Worker`,
one slot, `run(burst=True, horizon=0)`) with its defaults except a smaller event-stream cap so the
steady state shows within the run: queue retention keeps the newest 1,000 succeeded jobs (the
default; their ids are in the `forgejobs:{bench}:done` sorted set) and the event stream keeps about
5,000 events (FORGEJOBS_EVENTS_MAX; default 100,000). A live worker applies retention every 5 s
(`trim.lua`, from its upkeep thread, at most once per queue per 5 s across workers); a wave is
shorter than that, so after each wave the bench runs the same retention pass itself until it has
nothing left to delete: what a worker converges to within seconds. Raw RQ keeps every result for
its default 500 s. Memory is measured on one database that must be empty (refused otherwise); each
side's keys are deleted (FLUSHDB of that database only) before the other runs, and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import redis
from rq import Queue, SimpleWorker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchjobs import QUEUE, NoopJob, registry  # noqa: E402
from benchjobs.rqfuncs import noop  # noqa: E402

from forgejobs import Client, Settings, use_client  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.runtime.upkeep import trim  # noqa: E402
from forgejobs.runtime.worker import Worker  # noqa: E402


def used_mb(conn: redis.Redis) -> float:
    return int(conn.info("memory")["used_memory"]) / 1e6


@contextlib.contextmanager
def restored_signals() -> Iterator[None]:
    """Both workers install SIGINT/SIGTERM handlers in the main thread; put ours back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def forgejobs_side(conn: redis.Redis, url: str, waves: int, size: int) -> tuple[list[float], str]:
    settings = Settings(redis_url=url, events_max=5_000, hooks=None, key_prefix="forgejobs")
    reg = registry()
    client = Client(RedisBackend.for_connection(conn, settings), reg)
    samples = []
    worker: Worker | None = None
    with use_client(client):
        for _ in range(waves):
            for start in range(0, size, 500):
                NoopJob.enqueue_many([{"n": i} for i in range(start, min(size, start + 500))])
            # resources: not the catalog's (load_resources would build its SQLite database).
            worker = Worker(settings, reg, queues=[QUEUE], concurrency=1, connection=conn, resources=object())
            with restored_signals():
                stats = worker.run(burst=True, horizon=0)
            if stats.counts.get("succeeded") != size:
                raise RuntimeError(f"wave: {dict(stats.counts)}, expected {size} succeeded")
            state = worker.states[QUEUE]
            while trim(worker.scripts, state.keys, state.spec):
                pass
            samples.append(used_mb(conn))
    assert worker is not None
    keys = worker.states[QUEUE].keys
    kept = (
        f"kept: {conn.zcard(keys.done)} succeeded jobs in {keys.done}, "
        f"{conn.xlen(settings.key_prefix + ':events')} events"
    )
    return samples, kept


def rq_side(conn: redis.Redis, waves: int, size: int) -> list[float]:
    queue = Queue("rqmem", connection=conn)
    samples = []
    for _ in range(waves):
        with conn.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(size)], pipeline=pipe)
            pipe.execute()
        with restored_signals():
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
        fj, kept = forgejobs_side(conn, args.redis_url, args.waves, args.wave_size)
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
        f"(growth over the second half {(fj[-1] - fj[half]):+.2f} MB; {kept}); "
        f"raw RQ: {rq[-1] - base:.2f} MB (second half {(rq[-1] - rq[half]):+.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
