"""`await Job.aenqueue(...)`: the sync client's validation, size guard and envelope, stored by the same
script through redis.asyncio; handles awaited with `aresult`; the fake queue captures it all."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from pydantic import ValidationError

from forgejobs import (
    BackendUnavailable,
    Client,
    Context,
    EnqueueOptions,
    Job,
    JobFailed,
    JobHandle,
    PayloadTooLarge,
    Registry,
    ResultTimeout,
    Settings,
    Status,
    set_client,
    use_client,
)
from forgejobs.aio import AsyncClient, AsyncRedisBackend, current_async_client, set_async_client, use_async_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.events import EventStream
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from forgejobs.worker import Worker
from tests.conftest import SAMPLE_JOBS, SAMPLE_SPECS
from tests.samplejobs.basic import Doomed, Echo, EchoResult

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Note(Job, queue="fast", attempts=1, max_payload_bytes=64):
    text: str

    def perform(self, ctx: Context[None]) -> str:
        return self.text


class Invoice(Job, queue="fast", unique_for=timedelta(minutes=5), dedupe_key=("account",)):
    account: str
    amount: int

    def perform(self, ctx: Context[None]) -> int:
        return self.amount


class Reindex(Job, queue="fast", debounce=timedelta(seconds=30), dedupe_key=("document",)):
    document: str
    revision: int

    def perform(self, ctx: Context[None]) -> int:
        return self.revision


JOBS: list[type[Job]] = [Echo, Doomed, Note, Invoice, Reindex]


@pytest.fixture
def sync_client(conn: redis.Redis) -> Client:
    return Client(RedisBackend(conn), Registry(JOBS, Specs(queues={"fast": QueueSpec()})))


def job_hash(conn: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    return conn.hgetall(f"forgejobs:{{fast}}:job:{job_id}")  # type: ignore[return-value]


# -- the fake queue: aenqueue runs the sync path in memory ------------------------------------


def test_the_fake_queue_captures_aenqueue_and_the_handle_is_awaited() -> None:
    async def scenario(queue: FakeQueue) -> None:
        handle = await Echo.aenqueue(text="hi")
        await Echo(text="there").aenqueue()
        many = await Echo.aenqueue_many([{"text": "a"}, Echo(text="b")])
        queue.assert_enqueued(Echo, text="hi")
        assert [e.text for e in queue.enqueued(Echo)] == ["hi", "there", "a", "b"]
        assert await handle.astatus() is Status.QUEUED
        with pytest.raises(ResultTimeout):
            await handle.aresult()
        queue.drain()
        assert await handle.aresult() == EchoResult(text="hi", attempt=1)
        assert [(await h.aresult()).text for h in many] == ["a", "b"]

    with FakeQueue() as queue:
        run(scenario(queue))


@pytest.mark.redis
def test_the_fake_queue_wins_over_an_installed_async_client(sync_client: Client) -> None:
    async def scenario() -> None:
        async_client = AsyncClient.for_client(sync_client)
        previous = set_async_client(async_client)
        try:
            with FakeQueue() as queue:
                assert current_async_client() is queue.client
                await Echo.aenqueue(text="captured")
                queue.assert_enqueued(Echo, text="captured", count=1)
        finally:
            set_async_client(previous)
            await async_client.aclose()

    run(scenario())
    assert sync_client.backend.counts(["fast"])[0].waiting == 0  # nothing reached Redis


def test_bad_payloads_are_refused_before_anything_is_sent_on_the_fake_queue() -> None:
    with FakeQueue() as queue:
        with pytest.raises(ValidationError, match="text"):
            run(Echo.aenqueue(text=["not", "text"]))
        with pytest.raises(PayloadTooLarge, match="fast.note"):
            run(Note.aenqueue(text="x" * 100))
        with pytest.raises(ValidationError):
            run(Echo.aenqueue_many([{"text": "fine"}, {"nope": 1}]))
        assert queue.enqueued(Echo) == [] and queue.enqueued(Note) == []


# -- Redis ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_aenqueue_stores_the_same_record_as_enqueue(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> str:
        client = AsyncClient.for_client(sync_client)
        try:
            handle = await Echo.with_options(client=client, priority=2).aenqueue(text="same")
            assert not handle.existing and handle.client is client
            return handle.id
        finally:
            await client.aclose()

    async_id = run(scenario())
    sync_id = Echo.with_options(client=sync_client, priority=2).enqueue(text="same").id
    stored_async, stored_sync = job_hash(conn, async_id), job_hash(conn, sync_id)
    assert stored_async.keys() == stored_sync.keys() == {b"d", b"p", b"s", b"q"}
    assert stored_async[b"p"] == b"2" and stored_async[b"s"] == b"queued"
    envelope = stored_async[b"d"].decode().replace(async_id, "ID")
    other = stored_sync[b"d"].decode().replace(sync_id, "ID")
    strip = lambda text: text.split(',"enqueued_at"')[0]  # noqa: E731 - the only part that differs
    assert strip(envelope) == strip(other)
    assert conn.lrange("forgejobs:{fast}:wait:p02", 0, -1) == [async_id.encode(), sync_id.encode()]
    kinds = [(e.kind.value, e.job_id) for e in EventStream(conn, "forgejobs:events").read()]
    assert kinds == [("enqueued", async_id), ("enqueued", sync_id)]


@pytest.mark.redis
def test_a_job_enqueued_from_a_coroutine_runs_and_its_result_is_awaited_typed(
    conn: redis.Redis, sync_client: Client, tmp_path: Path
) -> None:
    async def enqueue(client: AsyncClient) -> tuple[Any, Any, Any]:
        try:
            ok = await Echo.with_options(client=client).aenqueue(text="typed")
            doomed = await Doomed.with_options(client=client).aenqueue(path=str(tmp_path / "doomed.log"))
            delayed = await Echo.with_options(client=client, delay=timedelta(hours=1)).aenqueue(text="later")
            assert await delayed.astatus() is Status.SCHEDULED
            with pytest.raises(ResultTimeout, match="still queued"):
                await ok.aresult(timeout=0.05)
            return ok, doomed, delayed
        finally:
            await client.aclose()

    async def collect(client: AsyncClient, ok: Any, doomed: Any) -> EchoResult:
        try:
            with pytest.raises(JobFailed, match="the account was deleted"):
                await JobHandle(client, doomed.id, Doomed).aresult(timeout=5)
            return await JobHandle(client, ok.id, Echo).aresult(timeout=5)
        finally:
            await client.aclose()

    client = AsyncClient.for_client(sync_client)
    ok, doomed, delayed = asyncio.run(enqueue(client))
    Worker(Settings(), sync_client.registry, connection=conn, resources=None).run(burst=True, horizon=1)
    # A handle reads through its client, whose connections belong to the loop that opened them:
    # in another loop, a handle of a client of that loop.
    client = AsyncClient.for_client(sync_client)
    result = asyncio.run(collect(client, ok, doomed))
    assert result == EchoResult(text="typed", attempt=1) and isinstance(result, EchoResult)
    assert ok.result() == result  # the sync methods read through the sync sibling
    assert delayed.status() is Status.SCHEDULED


@pytest.mark.redis
def test_a_job_id_that_exists_is_not_stored_again(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> None:
        client = AsyncClient.for_client(sync_client)
        try:
            first = await Echo.with_options(client=client, job_id="order-7").aenqueue(text="one")
            again = await Echo.with_options(client=client, job_id="order-7").aenqueue(text="two")
            assert not first.existing and again.existing and again.id == "order-7"
            with pytest.raises(ValueError, match="job_id names one job"):
                await Echo.with_options(client=client, job_id="x").aenqueue_many([{"text": "a"}, {"text": "b"}])
        finally:
            await client.aclose()

    run(scenario())
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [b"order-7"]
    assert b'"text":"one"' in job_hash(conn, "order-7")[b"d"]


@pytest.mark.redis
def test_refused_payloads_never_reach_redis(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> None:
        client = AsyncClient.for_client(sync_client)
        try:
            with pytest.raises(PayloadTooLarge, match="largest fields: text"):
                await Note.with_options(client=client).aenqueue(text="x" * 100)
            with pytest.raises(ValidationError):
                await Echo.with_options(client=client).aenqueue_many([{"text": "ok"}, {"text": 3}])
        finally:
            await client.aclose()

    before = set(conn.keys("*"))
    run(scenario())
    assert set(conn.keys("*")) == before


@pytest.mark.redis
def test_many_jobs_go_in_batches_and_concurrent_tasks_each_get_their_own(
    conn: redis.Redis, sync_client: Client
) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        client = AsyncClient.for_client(sync_client)
        try:
            many = await Echo.with_options(client=client).aenqueue_many([{"text": str(i)} for i in range(1200)])
            with use_async_client(client):
                gathered = await asyncio.gather(*(Echo.aenqueue(text=f"t{i}") for i in range(50)))
            return [h.id for h in many], [h.id for h in gathered]
        finally:
            await client.aclose()

    many, gathered = run(scenario())
    waiting = [i.decode() for i in conn.lrange("forgejobs:{fast}:wait:p05", 0, -1)]
    assert waiting[:1200] == many  # three script calls of at most 500, in order
    assert sorted(waiting[1200:]) == sorted(gathered) and len(set(gathered)) == 50


@pytest.mark.redis
def test_a_lost_reply_is_retried_without_queueing_the_job_twice(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> str:
        client = AsyncClient.for_client(sync_client)
        real = client.backend._enqueue
        calls: list[int] = []

        async def lose_first_reply(*args: Any, **kwargs: Any) -> Any:
            reply = await real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                raise redis.TimeoutError("reply lost")
            return reply

        client.backend._enqueue = lose_first_reply  # type: ignore[assignment]
        try:
            handle = await Echo.with_options(client=client).aenqueue(text="once")
            assert len(calls) == 2 and not handle.existing
            return handle.id
        finally:
            await client.aclose()

    job_id = run(scenario())
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [job_id.encode()]
    kinds = [e.kind.value for e in EventStream(conn, "forgejobs:events").read() if e.job_id == job_id]
    assert kinds == ["enqueued"]


def test_without_redis_it_keeps_trying_for_the_enqueue_timeout_then_names_the_server() -> None:
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    settings = Settings(redis_url=f"redis://:secret@127.0.0.1:{port}/3", enqueue_timeout=0.3)
    sync = Client(RedisBackend.from_settings(settings), Registry(JOBS, Specs(queues={"fast": QueueSpec()})))

    async def scenario() -> None:
        client = AsyncClient.for_client(sync)
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await Echo.with_options(client=client).aenqueue(text="lost")
        finally:
            await client.aclose()
        message = str(caught.value)
        assert f"redis://127.0.0.1:{port}/3 did not answer within 0.3s" in message
        assert "secret" not in message
        tries = re.search(r"\((\d+) tries\)", message)
        assert tries is not None and int(tries.group(1)) >= 2, message

    run(scenario())


@pytest.mark.redis
def test_unique_for_keeps_the_first_job_of_a_key(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> tuple[str, str, str]:
        client = AsyncClient.for_client(sync_client)
        try:
            with use_async_client(client):
                first = await Invoice.aenqueue(account="acme", amount=1)
                second = await Invoice.aenqueue(account="acme", amount=2)
                other = await Invoice.aenqueue(account="globex", amount=3)
            assert not first.existing and second.existing and second.id == first.id
            assert not other.existing
            return first.id, other.id, second.id
        finally:
            await client.aclose()

    first, other, _ = run(scenario())
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [first.encode(), other.encode()]
    dedupes = [e for e in EventStream(conn, "forgejobs:events").read() if e.kind.value == "deduplicated"]
    assert len(dedupes) == 1 and dedupes[0].data == {"existing": first}


@pytest.mark.redis
def test_debounce_replaces_the_waiting_job_with_the_newest_payload(conn: redis.Redis, sync_client: Client) -> None:
    async def scenario() -> tuple[str, str]:
        client = AsyncClient.for_client(sync_client)
        try:
            with use_async_client(client):
                first = await Reindex.aenqueue(document="d1", revision=1)
                second = await Reindex.aenqueue(document="d1", revision=2)
                other = await Reindex.aenqueue(document="d2", revision=1)
                with pytest.raises(ValueError, match="debounced"):
                    await Reindex.with_options(delay=5).aenqueue(document="d1", revision=3)
            assert second.id == first.id and second.existing and not first.existing
            assert other.id != first.id
            assert await first.astatus() is Status.SCHEDULED
            return first.id, other.id
        finally:
            await client.aclose()

    first, other = run(scenario())
    assert b'"revision":2' in job_hash(conn, first)[b"d"]
    assert set(conn.zrange("forgejobs:{fast}:delayed", 0, -1)) == {first.encode(), other.encode()}


@pytest.mark.redis
def test_with_no_async_client_installed_aenqueue_follows_the_current_sync_client(
    conn: redis.Redis, sync_client: Client
) -> None:
    async def scenario() -> str:
        chosen = current_async_client()
        assert isinstance(chosen, AsyncClient) and chosen.sync is sync_client
        assert current_async_client() is chosen  # one per client and loop
        handle = await Echo.aenqueue(text="twin")
        assert handle.client is chosen
        from_sync = Echo.enqueue(text="sync")  # a sync handle awaited: read through the same counterpart
        assert from_sync.client is sync_client and await from_sync.astatus() is Status.QUEUED
        await chosen.aclose()
        return handle.id

    with use_client(sync_client):
        job_id = run(scenario())
        assert job_hash(conn, job_id)[b"s"] == b"queued"
        # A sync client given explicitly is served by its twin too.
        handle = run(_enqueue_through(sync_client))
        assert handle.status() is Status.QUEUED


async def _enqueue_through(client: Client) -> Any:
    handle = await Echo.with_options(client=client).aenqueue(text="explicit")
    assert isinstance(handle.client, AsyncClient) and handle.client.sync is client
    await handle.client.aclose()
    return handle


@pytest.mark.redis
def test_an_async_client_from_settings_uses_the_settings_redis_and_prefix(redis_url: str, conn: redis.Redis) -> None:
    settings = Settings(
        redis_url=redis_url, jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS, key_prefix="aioapp", enqueue_timeout=2
    )

    async def scenario() -> str:
        client = AsyncClient.from_settings(settings)
        assert isinstance(client.backend, AsyncRedisBackend)
        try:
            handle = await Echo.with_options(client=client).aenqueue(text="prefixed")
            assert await handle.astatus() is Status.QUEUED
            return handle.id
        finally:
            await client.aclose()

    previous = set_client(None)
    try:
        job_id = run(scenario())
    finally:
        set_client(previous)
    assert conn.hget(f"aioapp:{{fast}}:job:{job_id}", "s") == b"queued"
    assert conn.exists(f"forgejobs:{{fast}}:job:{job_id}") == 0


def test_an_async_client_needs_a_redis_backed_client() -> None:
    with FakeQueue() as queue, pytest.raises(TypeError, match="FakeBackend"):
        AsyncClient.for_client(queue.client)


def test_the_low_level_enqueue_mirrors_the_sync_client() -> None:
    with FakeQueue() as queue:
        handles = run(_low_level(queue.client))
        assert [h.id for h in handles] == [p.job_id for p in queue.backend.log]


async def _low_level(client: Client) -> list[Any]:
    from forgejobs.aio import enqueue_async

    return await enqueue_async(client, Echo, [{"text": "a"}, {"text": "b"}], EnqueueOptions(priority=3))


def test_the_asyncio_connection_points_where_the_sync_one_does() -> None:
    """No server needed: the pools are compared, nothing is connected."""
    import redis.asyncio.connection as aioconnection
    import redis.asyncio.sentinel as aiosentinel

    from forgejobs.aio import async_connection, describe
    from forgejobs.backends.redis import connect

    tcp = async_connection(connect("redis://:pw@10.0.0.5:6390/4", timeout=7), timeout=7)
    assert tcp.connection_pool.connection_class is aioconnection.Connection
    kwargs = tcp.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("10.0.0.5", 6390, 4, "pw")
    assert kwargs["socket_timeout"] == 7 and kwargs["socket_connect_timeout"] == 2
    assert describe(tcp) == "redis://10.0.0.5:6390/4"

    tls = async_connection(connect("rediss://10.0.0.5:6390/0"))
    assert tls.connection_pool.connection_class is aioconnection.SSLConnection
    unix = async_connection(connect("unix:///run/redis.sock?db=2"))
    assert unix.connection_pool.connection_class is aioconnection.UnixDomainSocketConnection
    assert describe(unix) == "unix:///run/redis.sock?db=2"

    sentinel = async_connection(connect("redis+sentinel://:pw@10.0.0.7:26379,10.0.0.8:26380/primary/3"))
    pool = sentinel.connection_pool
    assert isinstance(pool, aiosentinel.SentinelConnectionPool) and pool.service_name == "primary"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    hosts = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(h["host"], h["port"]) for h in hosts] == [("10.0.0.7", 26379), ("10.0.0.8", 26380)]
    assert describe(sentinel) == "redis+sentinel://primary/3 (primary from Sentinel)"
