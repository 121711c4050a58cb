"""Cancelling a job: `cancel(backend, registry, job_id)`, what `Client.cancel` and `forgejobs job cancel` call.

- A job waiting (on its list, parked behind its concurrency key, or stalled) or delayed is taken off
  its queue and recorded as `cancelled` at once, with a `cancelled` event. No dead letter.
- A running job is marked: its worker learns of it with its next heartbeat (every `stall_timeout / 5`,
  2 s by default), the handler sees `ctx.cancelled`, and the job ends as `cancelled` whether the
  handler then returns or raises. A handler that never looks runs to its end, and is still recorded as
  cancelled if the worker learned of the cancel before it ended; if it ended first, it keeps its
  outcome (a retry it scheduled is cancelled when a worker takes it again).
- A finished job (succeeded, failed, cancelled) or an unknown id is refused with an error that says so.

A cancelled job's record is kept for its job type's result TTL (and the queue's completed retention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ForgeJobsError, NoSuchJob

if TYPE_CHECKING:
    from ..backends.base import Backend, Cancellation
    from ..registry import Registry

__all__ = ["DEFAULT_KEEP", "CannotCancel", "cancel"]

DEFAULT_KEEP = 3600.0
"""Seconds a cancelled job of a type not declared here is kept (the default result TTL)."""


class CannotCancel(ForgeJobsError):
    """The job has already finished: there is nothing left to cancel."""


def cancel(backend: Backend, registry: Registry | None, job_id: str) -> Cancellation:
    """Cancel `job_id`. Returns what was done (`outcome` "cancelled" or "requested"/"already" for a running
    job); raises `NoSuchJob` for an unknown id and `CannotCancel` for a finished job."""

    def keep_for(name: str | None) -> float:
        if registry is not None and name is not None and name in registry:
            return registry.resolve(name).options.result_ttl.total_seconds()
        return DEFAULT_KEEP

    result = backend.cancel(job_id, keep_for=keep_for)
    if result.outcome == "unknown":
        raise NoSuchJob(f"no job with id {job_id!r} to cancel (never enqueued, or its record expired)")
    if result.outcome == "finished":
        status = result.status.value if result.status is not None else "finished"
        raise CannotCancel(f"job {job_id} has already finished ({status}): there is nothing to cancel")
    return result
