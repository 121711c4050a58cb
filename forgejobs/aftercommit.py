"""Enqueues held until a database transaction commits: the core of `forgejobs.sqlalchemy` and `forgejobs.django`.

While `forgejobs.client.enqueue_hook` names a holder that takes the enqueue, `Job.enqueue(...)`,
`enqueue_many` and `await Job.aenqueue(...)` do everything but store the jobs: the payloads are validated,
size-checked and turned into envelopes at once (so a bad payload raises at the call, inside the transaction,
and nothing is held), each job gets its id, and the call returns `HeldHandle`s. At the commit the held jobs
are stored, in the order they were made, through the client each was meant for; at a rollback they are
dropped. A held job's envelope, id and due time are the ones made at the call: `delay` counts from the call.

What a `HeldHandle` says before the commit: `held` is True, `status()` is `Status.UNKNOWN` without asking
Redis (the job is not there yet) and `result(timeout)` waits like any handle, so it times out unless another
thread commits. After the commit `sent` is True and the handle reads the job as any handle does (for a
`unique_for` job that matched an existing one, `id` becomes that job's and `existing` is True). After a
rollback `dropped` is True, `status()` stays `UNKNOWN` and `result()` raises `NoSuchJob` at once, saying
why (also when storing the jobs after the commit failed: `error` holds that failure).

Debounced jobs (`debounce=`) are the exception: their id is chosen when they are stored, so a held
handle's `id` is a placeholder until `sent`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backends.base import JobState, Prepared
from .client import Client, enqueue_hook
from .errors import NoSuchJob
from .handle import JobHandle
from .job import Job
from .options import EnqueueOptions, JobOptions
from .status import Status

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["HeldEnqueue", "HeldHandle", "asend_held", "drop_held", "hold", "send_held", "send_soon", "store_prepared"]

log = logging.getLogger("forgejobs.aftercommit")


class HeldHandle(JobHandle[Any]):
    """A handle to a job held until its transaction commits (see the module docstring for what it answers)."""

    def __init__(self, client: Client | AsyncClient, job_id: str, job_type: type[Job]) -> None:
        super().__init__(client, job_id, job_type)
        self.held = True
        """True until the transaction ends."""
        self.sent = False
        """True once the commit stored the job."""
        self.dropped = False
        """True when the transaction rolled back (or the store after the commit failed: see `error`)."""
        self.error: BaseException | None = None
        """Why storing the job after the commit failed, for jobs stored by a background task (asyncio)."""

    def __repr__(self) -> str:
        state = "sent" if self.sent else "dropped" if self.dropped else "held"
        name = self.job_type.job_name() if self.job_type else "?"
        return f"<HeldHandle {name} {self.id} {state}>"

    def refresh(self) -> JobState:
        if not self.sent:
            self._state = JobState(Status.UNKNOWN)
            return self._state
        return super().refresh()

    async def arefresh(self) -> JobState:
        if not self.sent:
            self._state = JobState(Status.UNKNOWN)
            return self._state
        return await super().arefresh()

    def result(self, timeout: float = 0) -> Any:
        self._refuse_dropped()
        return super().result(timeout)

    async def aresult(self, timeout: float = 0) -> Any:
        self._refuse_dropped()
        return await super().aresult(timeout)

    def _refuse_dropped(self) -> None:
        if self.dropped:
            why = f"storing it after the commit failed: {self.error}" if self.error else "its transaction rolled back"
            raise NoSuchJob(f"job {self.id} was never enqueued: {why}")

    def _stored(self, job_id: str, existing: bool) -> None:
        self.id, self.existing, self.held, self.sent = job_id, existing, False, True

    def _dropped(self, error: BaseException | None = None) -> None:
        self.held, self.dropped, self.error = False, True, error


@dataclass
class HeldEnqueue:
    """One held enqueue call: its jobs, prepared at the call, and the handles it returned."""

    client: Client | AsyncClient
    job_type: type[Job]
    job_options: JobOptions
    prepared: list[Prepared]
    handles: list[HeldHandle]
    items: list[Mapping[str, Any]] = field(default_factory=list)  # debounced jobs: payloads, stored at send
    options: EnqueueOptions = field(default_factory=EnqueueOptions)

    def drop(self, error: BaseException | None = None) -> None:
        for handle in self.handles:
            handle._dropped(error)


def _sync(client: Client | AsyncClient) -> Client:
    return client if isinstance(client, Client) else client.sync


def hold(
    client: Client | AsyncClient,
    job_type: type[Job],
    items: Sequence[Job | Mapping[str, Any]],
    options: EnqueueOptions,
) -> HeldEnqueue:
    """Validate and prepare one enqueue call without storing it; raises what the enqueue would."""
    sync = _sync(client)
    job_options = sync.registry.ensure(job_type)
    prepared = sync.prepare_many(job_type, job_options, items, options, sync.backend.now())
    handles = [HeldHandle(client, p.job_id, job_type) for p in prepared]
    if job_options.debounce is None:
        return HeldEnqueue(client, job_type, job_options, prepared, handles)
    if options.job_id is not None or options.delay is not None or options.at is not None:
        raise ValueError(f"{job_type.job_name()} is debounced: its start is set by debounce, not job_id/delay/at")
    payloads = [json.loads(p.envelope)["payload"] for p in prepared]
    return HeldEnqueue(client, job_type, job_options, [], handles, payloads, options)


def store_prepared(client: Client, job_options: JobOptions, prepared: Sequence[Prepared]) -> list[tuple[str, bool]]:
    """Store jobs `Client.prepare_many` built, as `Client.enqueue` does (claims for `unique_for` first).

    Returns, per job, the id that holds it and whether that job already existed."""
    backend = client.backend
    taken = backend.claim(prepared) if job_options.unique_for is not None else {}
    fresh = [p for p in prepared if p.job_id not in taken]
    try:
        existing = backend.enqueue(fresh) if fresh else set()
    except Exception:
        backend.unclaim(fresh)
        raise
    return [(taken[p.job_id], True) if p.job_id in taken else (p.job_id, p.job_id in existing) for p in prepared]


async def astore_prepared(
    client: AsyncClient, job_options: JobOptions, prepared: Sequence[Prepared]
) -> list[tuple[str, bool]]:
    """`store_prepared` through an `AsyncClient`."""
    backend = client.backend
    taken = await backend.claim(prepared) if job_options.unique_for is not None else {}
    fresh = [p for p in prepared if p.job_id not in taken]
    try:
        existing = await backend.enqueue(fresh) if fresh else set()
    except BaseException:
        await asyncio.shield(backend.unclaim(fresh))
        raise
    return [(taken[p.job_id], True) if p.job_id in taken else (p.job_id, p.job_id in existing) for p in prepared]


def _bind(batch: HeldEnqueue, stored: Iterable[tuple[str, bool]]) -> None:
    for handle, (job_id, existing) in zip(batch.handles, stored):
        handle._stored(job_id, existing)


def send_held(batches: Sequence[HeldEnqueue]) -> None:
    """Store held jobs, in order, with the hook off. The first failure drops the rest and is raised."""
    token = enqueue_hook.set(None)
    try:
        for index, batch in enumerate(batches):
            try:
                sync = _sync(batch.client)
                if batch.items:  # debounced: stored as a fresh enqueue
                    _bind(batch, ((h.id, h.existing) for h in sync.enqueue(batch.job_type, batch.items, batch.options)))
                else:
                    _bind(batch, store_prepared(sync, batch.job_options, batch.prepared))
            except BaseException as exc:
                for rest in batches[index:]:
                    rest.drop(exc)
                raise
    finally:
        enqueue_hook.reset(token)


async def asend_held(batches: Sequence[HeldEnqueue]) -> None:
    """`send_held` awaiting asyncio clients (sync ones, e.g. the fake queue's, are called as they are)."""
    from .aio import AsyncClient

    token = enqueue_hook.set(None)
    try:
        for index, batch in enumerate(batches):
            try:
                client = batch.client
                if batch.items:
                    if isinstance(client, AsyncClient):
                        handles = await client.enqueue(batch.job_type, batch.items, batch.options)
                    else:
                        handles = client.enqueue(batch.job_type, batch.items, batch.options)
                    _bind(batch, ((h.id, h.existing) for h in handles))
                elif isinstance(client, AsyncClient):
                    _bind(batch, await astore_prepared(client, batch.job_options, batch.prepared))
                else:
                    _bind(batch, store_prepared(client, batch.job_options, batch.prepared))
            except BaseException as exc:
                for rest in batches[index:]:
                    rest.drop(exc)
                raise
    finally:
        enqueue_hook.reset(token)


def needs_await(batches: Iterable[HeldEnqueue]) -> bool:
    """Whether any batch goes through an `AsyncClient` (and so must be sent from the event loop)."""
    return any(not isinstance(b.client, Client) for b in batches)


def drop_held(batches: Iterable[HeldEnqueue], why: str) -> int:
    """Drop held jobs; logs how many and why. Returns how many jobs."""
    count = 0
    for batch in batches:
        batch.drop()
        count += len(batch.handles)
    if count:
        log.info("dropped %d held enqueue(s): %s", count, why)
    return count


_tasks: set[asyncio.Task[None]] = set()  # stores started at a commit, kept until done


def send_soon(batches: list[HeldEnqueue], tasks: list[asyncio.Task[None]]) -> None:
    """Store committed jobs: at once for sync clients; for asyncio ones, by a task on the running event loop
    (appended to `tasks`), or through their sync sibling when no loop runs in this thread."""
    if not batches:
        return
    if needs_await(batches):
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(asend_held(batches))
            _tasks.add(task)
            tasks.append(task)
            task.add_done_callback(_finished)
            return
    send_held(batches)


def _finished(task: asyncio.Task[None]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("storing jobs held until a commit failed", exc_info=task.exception())
