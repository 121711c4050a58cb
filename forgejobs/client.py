"""The client: validate -> serialise -> size guard -> envelope -> backend.

`Job.enqueue(...)` reaches the *current* client: the one installed with
`set_client()` / `use_client()`, or else one built from `Settings()` on first
use. The fake queue installs its own for the length of a test.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, Prepared
from .deadletter import DeadLetter
from .envelope import VERSION
from .errors import ForgeJobsError, NoSuchJob, PayloadTooLarge, UnknownJob
from .job import Job
from .options import EnqueueOptions, JobOptions
from .registry import Registry
from .settings import Settings
from .tracing import enqueue_carrier

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .handle import JobHandle

EnqueueHook = Callable[
    ["Client | AsyncClient", type[Job], Sequence[Job | Mapping[str, Any]], EnqueueOptions], "list[JobHandle] | None"
]
enqueue_hook: ContextVar[EnqueueHook | None] = ContextVar("forgejobs_enqueue_hook", default=None)
"""Consulted by every enqueue: a hook returning handles has taken the jobs (held until a database commit by
`forgejobs.sqlalchemy` or `forgejobs.django`); None lets the enqueue go on."""


class Client:
    """Enqueues jobs onto a backend using a registry's effective options."""

    def __init__(self, backend: Backend, registry: Registry) -> None:
        self.backend = backend
        self.registry = registry
        backend.use_queues(registry.queues)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        from .backends.redis import RedisBackend

        settings = settings or Settings()
        return cls(RedisBackend.from_settings(settings), Registry.load(settings))

    # -- enqueue ---------------------------------------------------------------

    def enqueue(
        self, job_type: type[Job], items: Sequence[Job | Mapping[str, Any]], options: EnqueueOptions
    ) -> list[JobHandle]:
        from .handle import JobHandle

        if options.job_id is not None and len(items) > 1:
            raise ValueError("job_id names one job; it cannot be used with enqueue_many")
        if (hook := enqueue_hook.get()) is not None and (held := hook(self, job_type, items, options)) is not None:
            return held
        job_options = self.registry.ensure(job_type)
        if job_options.debounce is not None:
            return [self._debounce(job_type, job_options, item, options) for item in items]
        prepared = self.prepare_many(job_type, job_options, items, options, self.backend.now())
        taken = self.backend.claim(prepared) if job_options.unique_for is not None else {}
        fresh = [p for p in prepared if p.job_id not in taken]
        try:
            existing = self.backend.enqueue(fresh) if fresh else set()
        except Exception:
            self.backend.unclaim(fresh)
            raise
        return [
            JobHandle(self, taken[p.job_id], job_type, existing=True)
            if p.job_id in taken
            else JobHandle(self, p.job_id, job_type, existing=p.job_id in existing)
            for p in prepared
        ]

    def _debounce(
        self, job_type: type[Job], job_options: JobOptions, item: Job | Mapping[str, Any], options: EnqueueOptions
    ) -> JobHandle:
        from .handle import JobHandle

        assert job_options.debounce is not None
        if options.job_id is not None or options.delay is not None or options.at is not None:
            raise ValueError(f"{job_type.job_name()} is debounced: its start is set by debounce, not job_id/delay/at")
        now = self.backend.now()
        window = job_options.debounce
        probe = self.prepare_many(job_type, job_options, [item], EnqueueOptions(), now)[0]  # validates, sizes
        key = dedupe_key(probe.name, job_type.model_validate(json.loads(probe.envelope)["payload"]), job_options)
        delayed = EnqueueOptions(delay=window, priority=options.priority)

        def build(job_id: str) -> Prepared:
            with_id = delayed.model_copy(update={"job_id": job_id})
            return self.prepare_many(job_type, job_options, [item], with_id, now)[0]

        job_id, replaced = self.backend.debounce(key, build, probe.job_id, window.total_seconds() + 60)
        return JobHandle(self, job_id, job_type, existing=replaced)

    def prepare(
        self,
        job_type: type[Job],
        job_options: JobOptions,
        item: Job | Mapping[str, Any],
        options: EnqueueOptions,
        now: datetime,
    ) -> Prepared:
        return self.prepare_many(job_type, job_options, [item], options, now)[0]

    def prepare_many(
        self,
        job_type: type[Job],
        job_options: JobOptions,
        items: Sequence[Job | Mapping[str, Any]],
        options: EnqueueOptions,
        now: datetime,
    ) -> list[Prepared]:
        """Validate, serialise and size-check every item; build their envelopes. Sends nothing."""
        name = job_type.job_name()
        limit = job_options.max_payload_bytes
        priority = options.priority or job_options.priority
        queue = job_options.queue
        assert queue is not None
        # Everything but the id and the payload is the same for the whole batch. Names and ids
        # are validated against patterns without quotes or backslashes, so they need no escaping.
        head = f'{{"v":{VERSION},"id":"'
        middle = f'","name":"{name}","payload":'
        extra = f',"scheduled_for":"{options.scheduled_for.isoformat()}"' if options.scheduled_for else ""
        tail = (
            f',"options":{{"queue":"{queue}","priority":{priority}{extra}}},"attempt":1,'
            f'"history":[],"enqueued_at":"{now.isoformat()}"'
        )
        due_at = options.due_at(now)
        timeout = job_options.timeout.total_seconds()
        result_ttl = job_options.result_ttl.total_seconds()
        failure_ttl = job_options.failure_ttl.total_seconds()
        unique = options.job_id is not None
        window = job_options.unique_for.total_seconds() if job_options.unique_for is not None else 0.0
        prepared = []
        for item in items:
            if isinstance(item, job_type):
                instance = item
            elif isinstance(item, Job):
                raise TypeError(f"expected a {job_type.__qualname__}, got a {type(item).__qualname__}")
            else:
                instance = job_type.model_validate(item)  # the Pydantic error names the field
            # As the worker validates it: field aliases, and no computed fields (extra="forbid" refuses them).
            payload = instance.__pydantic_serializer__.to_json(instance, by_alias=True, exclude_computed_fields=True)
            if len(payload) > limit:
                raise PayloadTooLarge(name, len(payload), limit, largest_fields(instance))
            job_id = options.job_id or secrets.token_hex(16)
            prepared.append(
                Prepared(
                    job_id,
                    name,
                    queue,
                    priority,
                    f"{head}{job_id}{middle}{payload.decode()}{tail}{enqueue_carrier(queue, name, job_id)}}}",
                    due_at,
                    timeout,
                    result_ttl,
                    failure_ttl,
                    unique,
                    dedupe_key(name, instance, job_options) if window else None,
                    window,
                    concurrency_key(instance, job_options),
                    job_options.concurrency_limit or 0,
                )
            )
        return prepared

    def enqueue_raw(self, name: str, data: Mapping[str, Any], options: EnqueueOptions | None = None) -> JobHandle:
        """Enqueue by job name with a payload mapping (the CLI's `forgejobs enqueue`)."""
        entry = self.registry.resolve(name)
        return self.enqueue(entry.job_type, [data], options or EnqueueOptions())[0]

    # -- dead letters -------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self.backend.dead_letters.recent(limit, offset)

    def dead_letter(self, job_id: str) -> DeadLetter:
        record = self.backend.dead_letters.get(job_id)
        if record is None:
            raise NoSuchJob(f"no dead letter with id {job_id!r}")
        return record

    def requeue(self, job_id: str) -> JobHandle:
        """Enqueue a dead job again, from attempt 1, under the same id; remove its dead letter."""
        from .handle import JobHandle

        record = self.dead_letter(job_id)
        if not record.requeueable or record.name is None or record.payload is None:
            raise NoSuchJob(f"dead letter {job_id} ({record.reason.value}) has no readable payload to requeue")
        try:
            entry = self.registry.resolve(record.name)
        except UnknownJob as exc:
            raise UnknownJob(f"cannot requeue {job_id}: {exc}") from None
        options = EnqueueOptions(priority=record.priority, job_id=record.id)
        prepared = self.prepare(entry.job_type, entry.options, record.payload, options, self.backend.now())
        # Remove the dead letter first: once enqueued, the job may fail and be dead-lettered again
        # before a later remove, which would then delete the new record.
        self.backend.dead_letters.remove(job_id)
        try:
            self.backend.forget(job_id)  # the failed job's record, so the id is free again
            self.backend.enqueue([prepared])
        except Exception:
            self.backend.dead_letters.add(record)
            raise
        return JobHandle(self, job_id, entry.job_type)

    def requeue_all(self) -> list[JobHandle]:
        return [
            self.requeue(r.id)
            for r in self.backend.dead_letters.recent(self.backend.dead_letters.count() or 1)
            if r.requeueable
        ]

    def purge_dead_letters(self) -> int:
        return self.backend.dead_letters.purge()

    # -- queues ----------------------------------------------------------------------------

    def _declared(self, queue: str) -> str:
        if queue not in self.registry.queues:
            raise UnknownJob(f"no queue named {queue!r}; declared: {', '.join(sorted(self.registry.queues))}")
        return queue

    def pause(self, queue: str) -> None:
        """Workers of `queue`, in every process, stop taking new jobs (within about 1 s); enqueueing goes on."""
        self.backend.set_paused(self._declared(queue), True)

    def resume(self, queue: str) -> None:
        self.backend.set_paused(self._declared(queue), False)

    def paused(self) -> set[str]:
        return self.backend.paused()

    def drain(self, queue: str) -> int:
        """Delete the queue's waiting and scheduled jobs (running ones finish). Returns how many."""
        return self.backend.drain(self._declared(queue))

    def obliterate(self, queue: str, *, force: bool = False) -> int:
        """Delete every job, result and dead letter of `queue`. Refuses while jobs run, unless `force`."""
        running = getattr(self.backend, "running", lambda q: 0)(self._declared(queue))
        if running and not force:
            raise ForgeJobsError(f"{queue} has {running} running job(s); wait, or pass force=True (--force)")
        return self.backend.obliterate(queue)

    def close(self) -> None:
        self.backend.close()


def dedupe_key(name: str, instance: Job, options: JobOptions) -> str:
    """The key two enqueues share when they are "the same job" for `unique_for`."""
    spec = options.dedupe_key
    if callable(spec):
        material: Any = str(spec(instance))
    else:
        data = instance.model_dump(mode="json")
        material = {f: data.get(f) for f in spec} if spec else data
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f"{name}:{digest}"


def concurrency_key(instance: Job, options: JobOptions) -> str | None:
    """The value of the job's `concurrency_key` (a field name or a function of the job), or None."""
    spec = options.concurrency_key
    if spec is None:
        return None
    return str(spec(instance) if callable(spec) else getattr(instance, spec))


def largest_fields(instance: Job, top: int = 3) -> list[tuple[str, int]]:
    """The payload fields that weigh most once serialised."""
    data = instance.model_dump(mode="json")
    sizes = [(key, len(json.dumps(value, separators=(",", ":")).encode())) for key, value in data.items()]
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:top]


# -- the current client -------------------------------------------------------------

_lock = threading.Lock()
_current: Client | None = None


def current_client() -> Client:
    """The client `Job.enqueue` uses; built from `Settings()` the first time if none was set."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = Client.from_settings()
    return _current


def set_client(client: Client | None) -> Client | None:
    """Install `client` as the current one; returns the previous one."""
    global _current
    with _lock:
        previous, _current = _current, client
    return previous


@contextmanager
def use_client(client: Client) -> Iterator[Client]:
    """Make `client` current inside the block (tests, scripts, the worker)."""
    previous = set_client(client)
    try:
        yield client
    finally:
        set_client(previous)
