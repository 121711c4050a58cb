"""The worker runtime: forgejobs' own loop on its own Redis layout.

What it guarantees:

- **No instant in which a taken job is in no structure.** Taking a job (`scripts/fetch.lua`)
  moves its id from a wait list into the queue's active hash, owned by the taking slot, in one
  atomic step; finishing it records the outcome and releases it in one step, which also takes the
  next job ("finish and fetch next": one round trip per job).
- **Leases, not locks.** Each slot's lease is an entry in its queue's `workers` set, renewed by
  its process's heartbeat (every `stall_timeout / 5`) and by a fetch after idle. Any live worker, once a
  second per queue, moves the jobs of slots whose lease ran out to the stalled list and decides
  their fate (`forgejobs.execution.stalled`: retry, or dead-letter after `max_stalled`). A job of
  a killed worker runs again within `stall_timeout` (10 s by default) plus about a second.
- **Liveness is the loop's.** The heartbeat renews a slot only while its thread lives and is not
  stuck in a job past its timeout; a slot that fails mid-fetch takes a fresh identity, so what
  its old one may hold is recovered.
- **Delayed jobs without polling.** The process's waiter blocks on the queues' marker sets and
  wakes when a delayed job or retry falls due; any worker promotes due jobs (`promote.lua`).
- **Only envelopes run.** A record without a readable envelope is dead-lettered as `corrupt`
  (its raw bytes kept) and the loop goes on.

`Worker` runs a queue's slots as threads of one process; `ProcessWorker`
(`forgejobs.pool`) adds child processes for queues declared `mode: processes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]


def __getattr__(name: str) -> Any:
    # Lazy: the Redis backend loads `runtime.scripts`, and the worker imports that backend.
    if name in __all__:
        from . import worker

        return getattr(worker, name)
    raise AttributeError(name)
