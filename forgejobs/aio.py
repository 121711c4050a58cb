"""asyncio producers: `await WelcomeEmail.aenqueue(...)` on redis-py's asyncio client.

An enqueue from a coroutine goes through the same steps as `Job.enqueue`: the registry's
effective options, validation, the size guard and the envelope are the sync client's own
(`Client.prepare_many`), and the jobs are stored by the same script (`runtime/scripts/enqueue.lua`)
with the same grouping, the same retries while Redis cannot be reached (a retry never stores a
job twice) and the same `existing` answer for a `job_id` that already exists. `unique_for` and
`debounce` work as in the sync client. Only the waiting differs: nothing blocks the event loop.

An `AsyncClient` is the asyncio face of a sync `Client`: it shares that client's registry and
key prefix, and stores through a `redis.asyncio` connection to the same server. Which client an
`aenqueue` uses, first match wins:

1. the client given to `Job.with_options(client=...)`;
2. the current sync client (`forgejobs.client`) when it is installed and is not Redis-backed:
   the fake queue's. Its enqueue runs as is (in memory, nothing to await), so `fake_queue`
   captures `aenqueue` with no set-up of its own;
3. the client installed with `use_async_client()` (for a block and the tasks it starts) or
   `set_async_client()` (process-wide);
4. the asyncio twin of the current sync client (`current_client()`, built from `Settings()` if
   none was installed): same server, registry and prefix; one per event loop, as redis.asyncio
   connections belong to the loop that opened them.

`JobHandle.aresult()` and its siblings read through the same rules (`read_state`).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
import redis.asyncio.sentinel as aiosentinel
import redis.connection
from redis.sentinel import SentinelConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from .backends.base import JobState, Prepared
from .backends.redis import (
    BATCH,
    SENTINEL_SCHEME,
    STATE_FIELDS,
    RedisBackend,
    enqueue_script_call,
    epoch_ms,
    state_from,
    state_needs_dead_letter,
)
from .client import Client, current_client, dedupe_key, enqueue_hook
from .deadletter import DeadLetter
from .errors import BackendError, BackendUnavailable
from .events import Event, EventKind
from .job import Job
from .keys import Keys
from .options import EnqueueOptions, JobOptions
from .runtime.scripts import source
from .settings import Settings
from .status import Status

if TYPE_CHECKING:
    from .handle import JobHandle

__all__ = [
    "AsyncClient",
    "AsyncRedisBackend",
    "current_async_client",
    "enqueue_async",
    "read_state",
    "set_async_client",
    "use_async_client",
]

# Connection settings carried over from a sync connection; timeouts are set from enqueue_timeout.
_COPIED = {"host", "port", "path", "db", "username", "password", "client_name", "protocol"}
_CONNECTION_CLASSES: dict[type[Any], type[aioconnection.AbstractConnection]] = {
    redis.connection.Connection: aioconnection.Connection,
    redis.connection.SSLConnection: aioconnection.SSLConnection,
    redis.connection.UnixDomainSocketConnection: aioconnection.UnixDomainSocketConnection,
}


def async_connection(connection: redis.Redis, timeout: float = 5.0) -> aioredis.Redis:
    """A redis.asyncio connection to the server (or Sentinel service) `connection` points at.

    Like producers' sync connections, no call waits on a silent Redis longer than `timeout`."""
    pool = connection.connection_pool
    kwargs: dict[str, Any] = {k: v for k, v in pool.connection_kwargs.items() if k in _COPIED or k.startswith("ssl_")}
    kwargs.update(socket_timeout=max(timeout, 2.0), socket_connect_timeout=min(timeout, 2.0))
    if isinstance(pool, SentinelConnectionPool):
        hosts = [
            (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels
        ]
        options = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
        sentinel = aiosentinel.Sentinel(hosts, sentinel_kwargs=options, **options)  # type: ignore[no-untyped-call]
        primary = sentinel.master_for(
            pool.service_name, db=kwargs.get("db", 0), password=kwargs.get("password"), health_check_interval=30
        )
        return cast(aioredis.Redis, primary)
    connection_class = _CONNECTION_CLASSES.get(pool.connection_class)
    if connection_class is None:
        raise BackendError(
            f"no asyncio counterpart for a {pool.connection_class.__name__} connection; "
            "install an AsyncClient with forgejobs.aio.set_async_client()"
        )
    return aioredis.Redis.from_pool(
        aioredis.ConnectionPool(connection_class=connection_class, health_check_interval=30, **kwargs)
    )


def describe(connection: aioredis.Redis) -> str:
    """Where an asyncio connection points, for messages; never a password."""
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, aiosentinel.SentinelConnectionPool):
        return f"{SENTINEL_SCHEME}://{pool.service_name}/{kwargs.get('db', 0)} (primary from Sentinel)"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class AsyncRedisBackend:
    """The producer half of `RedisBackend` on redis.asyncio: enqueue (plain, unique, debounced) and reads."""

    def __init__(
        self,
        connection: aioredis.Redis,
        keys: Keys | None = None,
        events_max: int = 100_000,
        queues: Sequence[str] = (),
        enqueue_timeout: float = 5.0,
    ) -> None:
        self.connection = connection
        self.keys = keys or Keys()
        self.events_max = events_max
        self.enqueue_timeout = enqueue_timeout
        self.queues: set[str] = set(queues)
        self._enqueue = connection.register_script(source("enqueue"))
        self._claim = connection.register_script(RedisBackend._CLAIM)

    @classmethod
    def for_backend(cls, backend: RedisBackend) -> AsyncRedisBackend:
        """The asyncio counterpart of `backend`: same server, key prefix, event cap and enqueue timeout."""
        return cls(
            async_connection(backend.connection, backend.enqueue_timeout),
            backend.keys,
            backend.events.maxlen,
            sorted(backend.queues),
            backend.enqueue_timeout,
        )

    def use_queues(self, queues: Iterable[str]) -> None:
        self.queues.update(queues)

    def now(self) -> datetime:
        return datetime.now(UTC)

    # -- enqueue ----------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        """`RedisBackend.enqueue`, awaited: the same groups, script calls and retries.

        Returns the ids of `unique` jobs that were not stored because they exist."""
        groups = RedisBackend._groups(jobs)
        tries = 1
        started = time.monotonic()
        try:
            try:
                return await self._enqueue_groups(groups, retry=False)
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            retrying = AsyncRetrying(
                retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
                stop=stop_after_delay(max(0.0, self.enqueue_timeout - (time.monotonic() - started))),
                wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    tries += 1
                    return await self._enqueue_groups(groups, retry=True)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(
                f"could not enqueue {len(jobs)} job(s): Redis at {describe(self.connection)} did not answer within "
                f"{self.enqueue_timeout:g}s ({tries} tries): {exc}"
            ) from exc
        except redis.RedisError as exc:
            raise BackendError(f"could not enqueue {len(jobs)} job(s): {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying re-raises

    async def _enqueue_groups(self, groups: list[list[Prepared]], *, retry: bool) -> set[str]:
        if len(groups) == 1:
            return {i.decode() for i in await self._call(groups[0], self.connection, retry=retry)}
        async with self.connection.pipeline(transaction=False) as pipe:
            for group in groups:
                await self._call(group, pipe, retry=retry)
            replies = await pipe.execute()
        return {i.decode() for reply in replies for i in reply}

    async def _call(self, group: list[Prepared], client: Any, *, retry: bool = False) -> Any:
        """One enqueue.lua call, with the KEYS and ARGV the sync backend sends."""
        assert len(group) <= BATCH
        keys, args = enqueue_script_call(self.keys, group, self.events_max, retry=retry)
        return await self._enqueue(keys=keys, args=args, client=client)

    # -- unique_for and debounce ----------------------------------------------------------

    async def claim(self, jobs: Sequence[Prepared]) -> dict[str, str]:
        """`RedisBackend.claim`: job id -> the id already holding its dedupe key, for jobs not to store."""
        wanted = [job for job in jobs if job.dedupe is not None]
        if not wanted:
            return {}
        async with self.connection.pipeline(transaction=False) as pipe:
            for job in wanted:
                assert job.dedupe is not None
                ttl_ms = max(1, int(job.dedupe_ttl * 1000))
                await self._claim(keys=[self.keys.dedupe(job.dedupe)], args=[job.job_id, ttl_ms], client=pipe)
            holders = await pipe.execute()
        taken = {job.job_id: h.decode() for job, h in zip(wanted, holders) if h and h.decode() != job.job_id}
        if taken:
            async with self.connection.pipeline(transaction=False) as pipe:
                for job in wanted:
                    if job.job_id in taken:
                        event = Event(
                            kind=EventKind.DEDUPLICATED,
                            job_id=job.job_id,
                            name=job.name,
                            queue=job.queue,
                            data={"existing": taken[job.job_id]},
                        )
                        fields: dict[Any, Any] = event.to_fields()
                        pipe.xadd(self.keys.events, fields, maxlen=self.events_max, approximate=True)
                await pipe.execute()
        return taken

    async def unclaim(self, jobs: Sequence[Prepared]) -> None:
        keys = [self.keys.dedupe(job.dedupe) for job in jobs if job.dedupe is not None]
        if keys:
            await self.connection.delete(*keys)

    async def debounce(self, key: str, build: Callable[[str], Prepared], new_id: str, ttl: float) -> tuple[str, bool]:
        """`RedisBackend.debounce`, awaited: replace the waiting job `key` points at, or store a new one."""
        pointer = self.keys.debounce(key)
        ttl_ms = max(1, int(ttl * 1000))

        async def transaction(pipe: Any) -> tuple[str, bool]:
            raw = await pipe.get(pointer)
            if raw:
                current = raw.decode()
                job = build(current)
                qk = self.keys.queue(job.queue)
                await pipe.watch(qk.job(current))  # a worker promoting it meanwhile makes us try again
                if await pipe.hget(qk.job(current), "s") == b"scheduled":
                    assert job.due_at is not None
                    pipe.multi()
                    pipe.hset(qk.job(current), "d", job.envelope)
                    pipe.zadd(qk.delayed, {current: epoch_ms(job.due_at)})
                    pipe.pexpire(pointer, ttl_ms)
                    return current, True
            job = build(new_id)
            pipe.multi()
            await self._call([job], pipe)
            pipe.set(pointer, new_id, px=ttl_ms)
            return new_id, False

        result = await self.connection.transaction(transaction, pointer, value_from_callable=True)
        return cast(tuple[str, bool], result)

    # -- reading ------------------------------------------------------------------------

    async def find_queue(self, job_id: str) -> str | None:
        """`RedisBackend.find_queue`: the known queues first, then a SCAN."""
        queues = sorted(self.queues)
        if queues:
            async with self.connection.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.exists(self.keys.queue(queue).job(job_id))
                found = await pipe.execute()
            hit = next((q for q, exists in zip(queues, found) if exists), None)
            if hit is not None:
                return hit
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in job_id)
        async for key in self.connection.scan_iter(match=f"{self.keys.prefix}:{{*}}:job:{escaped}", count=1000):
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            start, end = text.find(":{") + 2, text.find("}:job:")
            if start > 1 and end > start:
                return text[start:end]
        return None

    async def state(self, job_id: str, queue: str | None = None) -> JobState:
        """`RedisBackend.state`, awaited."""
        queue = queue or await self.find_queue(job_id)
        if queue is None:
            return JobState(Status.UNKNOWN)
        qk = self.keys.queue(queue)
        async with self.connection.pipeline(transaction=False) as pipe:
            pipe.hmget(qk.job(job_id), STATE_FIELDS)
            pipe.hexists(qk.active, job_id)
            fields, running = await pipe.execute()
        record = None
        if state_needs_dead_letter(fields, running):
            raw = await self.connection.get(self.keys.dead_record(job_id))
            record = DeadLetter.model_validate_json(raw) if raw else None
        return state_from(queue, fields, running, record)

    async def logs(self, job_id: str) -> list[str]:
        queue = await self.find_queue(job_id)
        if queue is None:
            return []
        lines = await cast(Awaitable[list[bytes]], self.connection.lrange(self.keys.queue(queue).log(job_id), 0, -1))
        return [b.decode() for b in lines]

    async def aclose(self) -> None:
        await self.connection.aclose()


class AsyncClient:
    """Enqueues from coroutines: the asyncio face of the sync client `sync`.

    It uses `sync`'s registry and its `prepare_many` (validation, size guard, envelopes), and
    stores through `backend`, a redis.asyncio connection to the same Redis. Handles it returns
    answer both `await handle.aresult()` and, through `sync`, `handle.result()`."""

    def __init__(self, backend: AsyncRedisBackend, sync: Client) -> None:
        self.backend = backend
        self.sync = sync
        self.registry = sync.registry
        backend.use_queues(self.registry.queues)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AsyncClient:
        """A client on `FORGEJOBS_REDIS_URL` (redis://, rediss://, unix:// or redis+sentinel://) with the
        registry of `FORGEJOBS_JOBS` and `FORGEJOBS_SPECS`. Opens no connection until the first enqueue."""
        return cls.for_client(Client.from_settings(settings or Settings()))

    @classmethod
    def for_client(cls, client: Client) -> AsyncClient:
        """The asyncio counterpart of a Redis-backed sync `client`: same server, registry and prefix."""
        if not isinstance(client.backend, RedisBackend):
            raise TypeError(
                f"an AsyncClient needs a Redis-backed client, not one on {type(client.backend).__name__}; "
                "a client on another backend (the fake queue's) serves aenqueue itself"
            )
        return cls(AsyncRedisBackend.for_backend(client.backend), client)

    async def enqueue(
        self, job_type: type[Job], items: Sequence[Job | Mapping[str, Any]], options: EnqueueOptions
    ) -> list[JobHandle[Any]]:
        """`Client.enqueue`, awaited: validate and prepare every item, then store them in one round trip."""
        from .handle import JobHandle

        if options.job_id is not None and len(items) > 1:
            raise ValueError("job_id names one job; it cannot be used with enqueue_many")
        job_options = self.registry.ensure(job_type)
        if job_options.debounce is not None:
            return [await self._debounce(job_type, job_options, item, options) for item in items]
        prepared = self.sync.prepare_many(job_type, job_options, items, options, self.backend.now())
        taken = await self.backend.claim(prepared) if job_options.unique_for is not None else {}
        fresh = [p for p in prepared if p.job_id not in taken]
        try:
            existing = await self.backend.enqueue(fresh) if fresh else set()
        except BaseException:  # a cancelled task too: a claim without its job would hold the key
            await asyncio.shield(self.backend.unclaim(fresh))
            raise
        return [
            JobHandle(self, taken[p.job_id], job_type, existing=True)
            if p.job_id in taken
            else JobHandle(self, p.job_id, job_type, existing=p.job_id in existing)
            for p in prepared
        ]

    async def _debounce(
        self, job_type: type[Job], job_options: JobOptions, item: Job | Mapping[str, Any], options: EnqueueOptions
    ) -> JobHandle[Any]:
        from .handle import JobHandle

        assert job_options.debounce is not None
        if options.job_id is not None or options.delay is not None or options.at is not None:
            raise ValueError(f"{job_type.job_name()} is debounced: its start is set by debounce, not job_id/delay/at")
        now = self.backend.now()
        window = job_options.debounce
        probe = self.sync.prepare_many(job_type, job_options, [item], EnqueueOptions(), now)[0]
        key = dedupe_key(probe.name, job_type.model_validate(json.loads(probe.envelope)["payload"]), job_options)
        delayed = EnqueueOptions(delay=window, priority=options.priority)

        def build(job_id: str) -> Prepared:
            with_id = delayed.model_copy(update={"job_id": job_id})
            return self.sync.prepare_many(job_type, job_options, [item], with_id, now)[0]

        job_id, replaced = await self.backend.debounce(key, build, probe.job_id, window.total_seconds() + 60)
        return JobHandle(self, job_id, job_type, existing=replaced)

    async def aclose(self) -> None:
        """Close the asyncio connection (the sync sibling's is closed with `sync.close()`)."""
        await self.backend.aclose()


# -- the current async client ----------------------------------------------------------------

_scoped: contextvars.ContextVar[AsyncClient | None] = contextvars.ContextVar("forgejobs_async_client", default=None)
_global: AsyncClient | None = None
_lock = threading.Lock()
_twins: weakref.WeakKeyDictionary[Client, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def set_async_client(client: AsyncClient | None) -> AsyncClient | None:
    """Install `client` for every `aenqueue` of the process (below the fake queue); returns the previous one."""
    global _global
    with _lock:
        previous, _global = _global, client
    return previous


@contextmanager
def use_async_client(client: AsyncClient) -> Iterator[AsyncClient]:
    """Make `client` current inside the block, for this task and the tasks it starts there."""
    token = _scoped.set(client)
    try:
        yield client
    finally:
        _scoped.reset(token)


def _installed_sync() -> Client | None:
    from . import client as client_module

    # Read without building one: a sync client must not be made just to learn that none is installed.
    return client_module._current


def twin(client: Client) -> AsyncClient:
    """The asyncio counterpart of a Redis-backed `client` for the running event loop (made once per loop)."""
    loop = asyncio.get_running_loop()
    with _lock:
        per_loop = _twins.setdefault(client, weakref.WeakKeyDictionary())
        found = per_loop.get(loop)
        if found is None:
            found = per_loop[loop] = AsyncClient.for_client(client)
    return found


def current_async_client() -> AsyncClient | Client:
    """The client `aenqueue` uses (see the module docstring); a `Client` means "enqueue in memory, as is"."""
    installed = _installed_sync()
    if installed is not None and not isinstance(installed.backend, RedisBackend):
        return installed
    chosen = _scoped.get() or _global
    if chosen is not None:
        return chosen
    return twin(current_client())


def _resolve(client: Client | AsyncClient | None) -> AsyncClient | Client:
    if client is None:
        return current_async_client()
    if isinstance(client, Client) and isinstance(client.backend, RedisBackend):
        return twin(client)
    return client


async def enqueue_async(
    client: Client | AsyncClient | None,
    job_type: type[Job],
    items: Sequence[Job | Mapping[str, Any]],
    options: EnqueueOptions,
) -> list[JobHandle[Any]]:
    """What `aenqueue` does: through `client`, or the current async client when None."""
    target = _resolve(client)
    if (hook := enqueue_hook.get()) is not None and (held := hook(target, job_type, items, options)) is not None:
        return held  # held until a database commit (forgejobs.sqlalchemy, forgejobs.django)
    if isinstance(target, AsyncClient):
        return await target.enqueue(job_type, items, options)
    return target.enqueue(job_type, items, options)  # in memory: nothing to await


async def read_state(client: Client | AsyncClient, job_id: str, queue: str | None) -> JobState:
    """A job's state, awaited: through redis.asyncio for Redis, in memory for the fake queue."""
    target = _resolve(client)
    if isinstance(target, AsyncClient):
        return await target.backend.state(job_id, queue)
    return target.backend.state(job_id, queue)


async def read_logs(client: Client | AsyncClient, job_id: str) -> list[str]:
    target = _resolve(client)
    if isinstance(target, AsyncClient):
        return await target.backend.logs(job_id)
    return target.backend.logs(job_id)
