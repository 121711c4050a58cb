"""The dashboard's actions, each a thin call to the public API; each returns what it did, in a sentence.

A refused action raises `ActionError` with the reason (the job has started, is not delayed, ...), which
the page shows; nothing here knows a Redis key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ForgeJobsError, NoSuchJob, UnknownJob
from ..inspection import State
from ..logs import MASK, job_model, secret_fields
from ..options import EnqueueOptions
from ..runtime.cancel import CannotCancel, cancel

if TYPE_CHECKING:
    from ..client import Client
    from ..deadletter import DeadLetter

__all__ = ["ActionError", "cancel_job", "cancel_run", "delete_job", "promote_job", "retry_job", "run_schedule"]

RETRYABLE = (State.FAILED, State.DEAD, State.CANCELLED)


class ActionError(ForgeJobsError):
    """An action that was refused, with the reason."""


def retry_job(client: Client, job_id: str) -> str:
    """Run a failed, dead-lettered or cancelled job again from attempt 1, under the same id."""
    detail = client.backend.job_detail(job_id)  # as stored: the Inspector's view has its secrets masked
    if detail is None:
        raise NoSuchJob(f"no job with id {job_id!r} (never enqueued, or its record expired)")
    if detail.dead_letter is not None and detail.dead_letter.requeueable:
        client.requeue(job_id)
        return f"requeued {job_id} from its dead letter: it runs again from attempt 1"
    if detail.state not in RETRYABLE:
        raise ActionError(f"job {job_id} is {detail.state.value}: only failed, dead or cancelled jobs are retried")
    if detail.name is None or detail.payload is None:
        raise ActionError(f"job {job_id} has no readable payload to run again")
    try:
        entry = client.registry.resolve(detail.name)
    except UnknownJob as exc:
        raise ActionError(f"cannot retry {job_id}: {exc}") from None
    model = job_model(client.registry, detail.name)
    if model is not None and any(detail.payload.get(f) == MASK for f in secret_fields(model)):
        raise ActionError(f"job {job_id}'s secret fields are masked where it is stored: enqueue it anew instead")
    options = EnqueueOptions(priority=detail.priority, job_id=job_id)
    prepared = client.prepare(entry.job_type, entry.options, detail.payload, options, client.backend.now())
    client.backend.forget(job_id)
    client.backend.enqueue([prepared])
    return f"retried {job_id}: it runs again from attempt 1"


def delete_job(client: Client, job_id: str) -> str:
    """Delete a job that has not started (waiting, parked or delayed)."""
    outcome = client.backend.remove_waiting(job_id)
    if outcome == "removed":
        return f"deleted {job_id}: it will not run"
    if outcome == "unknown":
        raise NoSuchJob(f"no job with id {job_id!r} (never enqueued, or its record expired)")
    if outcome == "running":
        raise ActionError(f"job {job_id} is running: cancel it instead")
    raise ActionError(f"job {job_id} is neither waiting nor delayed any more: only those are deleted")


def promote_job(client: Client, job_id: str) -> str:
    """Make a delayed job ready now."""
    if not client.backend.promote(job_id):
        raise ActionError(f"job {job_id} is not delayed (any more): nothing to promote")
    return f"promoted {job_id}: it waits for a worker now"


def cancel_job(client: Client, job_id: str) -> str:
    try:
        result = cancel(client.backend, client.registry, job_id)
    except CannotCancel as exc:
        raise ActionError(str(exc)) from None
    if result.outcome == "cancelled":
        return f"cancelled {job_id}: it will not run"
    if result.outcome == "already":
        return f"a cancel of running job {job_id} was already requested"
    return f"cancel requested for running job {job_id}: its handler sees ctx.cancelled within a heartbeat"


def requeue_dead(client: Client, letters: list[DeadLetter]) -> tuple[int, list[str]]:
    """Requeue each dead letter that has a payload; returns how many, and why the others were not."""
    done, problems = 0, []
    for letter in letters:
        if not letter.requeueable:
            problems.append(f"{letter.id}: no readable payload ({letter.reason.value})")
            continue
        try:
            client.requeue(letter.id)
            done += 1
        except ForgeJobsError as exc:
            problems.append(f"{letter.id}: {exc}")
    return done, problems


def purge_dead(client: Client, letters: list[DeadLetter] | None) -> int:
    """Delete these dead letters (None: every one)."""
    if letters is None:
        return client.purge_dead_letters()
    return sum(1 for letter in letters if client.backend.dead_letters.remove(letter.id))


def run_schedule(client: Client, name: str) -> str:
    from ..backends.rqscheduler import RQSchedulerStore
    from ..scheduling import Repeater

    backend = client.backend
    store = RQSchedulerStore(backend.connection, backend.keys)  # type: ignore[attr-defined]
    try:
        handle = Repeater(client, store).run_now(name)
    except KeyError as exc:
        raise ActionError(str(exc.args[0])) from None
    return f"enqueued {name} now as {handle.id}"


def cancel_run(client: Client, run_id: str) -> str:
    """Cancel a workflow run through its handle (`WorkflowRun.cancel`): steps not started never start,
    running step jobs are asked to stop, completed steps with a compensation are compensated."""
    from ..workflows.run import run
    from ..workflows.store import TERMINAL

    handle = run(run_id, client)  # NoSuchRun when unknown
    if not handle.cancel():
        raise ActionError(f"workflow run {run_id} has already ended ({handle.status()}): nothing to cancel")
    status = handle.status()
    if status in TERMINAL:
        return f"cancelled workflow run {run_id}: {status}"
    return f"cancelled workflow run {run_id}: {status} (running steps are asked to stop; compensations follow)"
