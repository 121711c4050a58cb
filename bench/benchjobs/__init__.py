"""Job types for `bench/throughput.py`, in an importable module so a worker can resolve them.

`NoopJob` is the forgejobs side; `rqfuncs.noop` is the raw-RQ side. Both do nothing,
so a benchmark of them measures only the framework and Redis round trips.
"""

from __future__ import annotations

from forgejobs import Context, Job
from forgejobs.registry import Registry
from forgejobs.specs import QueueSpec, Specs

QUEUE = "bench"


class NoopJob(Job, queue=QUEUE):
    """Does nothing with one small int field."""

    n: int

    def perform(self, ctx: Context) -> None:
        return None


def registry() -> Registry:
    """The registry the bench's client and worker share: one job on one queue."""
    return Registry([NoopJob], Specs(queues={QUEUE: QueueSpec(concurrency=1)}))
