"""Jobs for the runtime fault and concurrency-limit tests.

Each notes what it did as one line per `os.write` on a file opened with O_APPEND (whole lines even
when several processes write at once, and even if one of them is SIGKILLed): `<event> <job id>
<attempt> <pid> <time>`, plus the job's concurrency key where it has one.
"""

from __future__ import annotations

import os
import time

from forgejobs import Context, Job, backoff


def note_line(path: str, event: str, ctx: Context, *extra: str) -> None:
    line = " ".join([event, ctx.job_id, str(ctx.attempt), str(os.getpid()), f"{time.time():.6f}", *extra])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Tally(Job, queue="chaos", attempts=100, max_stalled=100, backoff=backoff.fixed(0), timeout=30):
    """Note start, sleep a little, note end. Survives many stalls (its worker may be killed repeatedly)."""

    path: str
    seconds: float = 0.0

    def perform(self, ctx: Context) -> int:
        note_line(self.path, "start", ctx)
        if self.seconds:
            time.sleep(self.seconds)
        note_line(self.path, "end", ctx)
        return ctx.attempt


class Gated(Job, queue="gate", attempts=1, timeout=30):
    """Note start, sleep, note end: its queue lets at most 2 run at once across all workers."""

    path: str
    seconds: float

    def perform(self, ctx: Context) -> None:
        note_line(self.path, "start", ctx)
        time.sleep(self.seconds)
        note_line(self.path, "end", ctx)


class OrgTask(Job, queue="perorg", attempts=1, timeout=30, concurrency_key="org", concurrency_limit=2):
    """Note start, sleep, note end: at most 2 of one organisation's tasks run at once."""

    path: str
    org: str
    seconds: float

    def perform(self, ctx: Context) -> None:
        note_line(self.path, "start", ctx, self.org)
        time.sleep(self.seconds)
        note_line(self.path, "end", ctx, self.org)
