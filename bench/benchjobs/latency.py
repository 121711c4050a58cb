"""Job types for `bench/schedule_latency.py`."""

from __future__ import annotations

from forgejobs import Context, Job, backoff


class Stamp(Job, queue="latency", attempts=1):
    """Does nothing; RQ's `started_at` says when it started."""

    n: int = 0

    def perform(self, ctx: Context) -> None:
        return None


class FailOnce(Job, queue="latency", attempts=2, backoff=backoff.fixed(2)):
    """Fails its first attempt; the second starts after the 2 s backoff."""

    n: int = 0

    def perform(self, ctx: Context) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt
