"""Job types for `bench/schedule_latency.py`, run by a `forgejobs worker` subprocess.

Each records when it started in Redis (the bench reads it back): the worker's `ctx.resources` is
the connection `build` makes (the bench sets FORGEJOBS_RESOURCES=benchjobs.latency:build).

- `bench:latency:started:<attempt>`: hash, job id -> start time (time.time())
- `bench:latency:ticks`: hash, job id -> the repeat tick it ran for (cron jobs only)
"""

from __future__ import annotations

import time

import redis

from forgejobs import Context, Job, Settings, backoff

STARTED = "bench:latency:started:"
TICKS = "bench:latency:ticks"


def build(settings: Settings) -> redis.Redis:
    """`ctx.resources` of the bench's worker: a connection to the bench's database."""
    return redis.Redis.from_url(settings.redis_url_or_default())


def record(ctx: Context[redis.Redis]) -> None:
    started = time.time()
    with ctx.resources.pipeline(transaction=False) as pipe:
        pipe.hset(f"{STARTED}{ctx.attempt}", ctx.job_id, repr(started))
        if ctx.scheduled_for is not None:
            pipe.hset(TICKS, ctx.job_id, repr(ctx.scheduled_for.timestamp()))
        pipe.execute()


class Stamp(Job, queue="latency", attempts=1):
    """Does nothing but record when it started."""

    n: int = 0

    def perform(self, ctx: Context[redis.Redis]) -> None:
        record(ctx)


class FailOnce(Job, queue="latency", attempts=2, backoff=backoff.fixed(2)):
    """Fails its first attempt; the second starts after the 2 s backoff. Records each start."""

    n: int = 0

    def perform(self, ctx: Context[redis.Redis]) -> int:
        record(ctx)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt
