"""Job types for `bench/throughput.py` and `bench/retention_memory.py`, in an importable package so a
worker can resolve them. Bench-only: nothing outside bench/ imports them.

The forgejobs side: `NoopJob` does nothing; `StartStamp` records when it started (pick-up latency,
delayed-job lateness); `SleepJob` sleeps 50 ms (an I/O-bound job) and records its start and end;
`WelcomeEmail` has the catalog's `email.welcome-email` name and payload (one `user_id` string), for
Redis bytes per waiting job. `rqfuncs` holds the raw-RQ counterparts. Timestamps go to
`benchjobs.timing.RECORDER` in this process.
"""

from __future__ import annotations

import time

from forgejobs import Context, Job
from forgejobs.registry import Registry
from forgejobs.specs import Keep, QueueSpec, Retention, Specs

from .timing import RECORDER, SLEEP_SECONDS

QUEUE = "bench"
EMAIL_QUEUE = "email"


class NoopJob(Job, queue=QUEUE):
    """Does nothing with one small int field."""

    n: int

    def perform(self, ctx: Context) -> None:
        return None


class StartStamp(Job, queue=QUEUE):
    """Records when it started, under `tag`."""

    tag: str

    def perform(self, ctx: Context) -> None:
        RECORDER.start(self.tag)


class SleepJob(Job, queue=QUEUE):
    """An I/O-bound job: sleeps 50 ms; records its start and end under `s<n>`."""

    n: int

    def perform(self, ctx: Context) -> None:
        tag = f"s{self.n}"
        RECORDER.start(tag)
        time.sleep(SLEEP_SECONDS)
        RECORDER.end(tag)


class WelcomeEmail(Job, queue=EMAIL_QUEUE):
    """The catalog's `email.welcome-email` as stored: same name, queue, priority and payload. Never run."""

    user_id: str

    def perform(self, ctx: Context) -> None:
        return None


def registry(keep_all: bool = False) -> Registry:
    """The registry the bench's client and workers share. `keep_all`: the bench queue keeps every
    succeeded job (no retention count) so that their finish times can be read back afterwards; by
    default it keeps the newest 1,000, as every queue does."""
    jobs = [NoopJob, StartStamp, SleepJob, WelcomeEmail]
    bench = QueueSpec(concurrency=1, retention=Retention(completed=Keep(count=None)) if keep_all else Retention())
    return Registry(jobs, Specs(queues={QUEUE: bench, EMAIL_QUEUE: QueueSpec(concurrency=1)}))
