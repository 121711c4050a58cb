"""Enqueue after commit: SQLAlchemy sessions and connections (SQLite and PostgreSQL), asyncio, and Django.

Every test stores through a real Redis (the test's own database) and reads back what Redis holds; each
database test works in a table (SQLite file) or schema (PostgreSQL) of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pydantic
import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session, sessionmaker

from forgejobs import Client, Context, Job, Registry, use_client
from forgejobs.aftercommit import HeldEnqueue, HeldHandle, drop_held, hold, send_held, send_soon
from forgejobs.aio import AsyncClient
from forgejobs.backends.redis import RedisBackend
from forgejobs.errors import BackendError, BackendUnavailable, ForgeJobsError, NoSuchJob, ResultTimeout
from forgejobs.handle import JobHandle
from forgejobs.options import EnqueueOptions
from forgejobs.specs import QueueSpec, Specs
from forgejobs.sqlalchemy import begin, enqueue_after_commit, install
from forgejobs.status import Status
from forgejobs.testing import FakeQueue
from tests.conftest import free_port
from tests.samplejobs.basic import Echo

POSTGRES_URL = os.environ.get("FORGEJOBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("text", sa.String(50)))


def _sqlite_engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}")

    # pysqlite begins transactions itself and breaks SAVEPOINT; let SQLAlchemy say BEGIN (its documented recipe).
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: object, record: object) -> None:
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _postgres_engine() -> Iterator[sa.Engine]:
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            schema = f"fj_after_{uuid.uuid4().hex[:12]}"
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc.orig}")
    engine = sa.create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        made = _sqlite_engine(tmp_path / "notes.db")
        metadata.create_all(made)
        yield made
        made.dispose()
    else:
        for made in _postgres_engine():
            metadata.create_all(made)
            yield made


@pytest.fixture
def postgres() -> Iterator[sa.Engine]:
    for made in _postgres_engine():
        metadata.create_all(made)
        yield made


def stored(conn: redis.Redis, handle: JobHandle[Any]) -> bool:
    """Whether Redis holds the job (its hash in the sample registry's `fast` queue)."""
    return bool(conn.exists(f"forgejobs:{{fast}}:job:{handle.id}"))


def waiting(conn: redis.Redis) -> list[str]:
    """The ids in the `fast` queue's wait list, first out first."""
    return [i.decode() for i in cast(list[bytes], conn.lrange("forgejobs:{fast}:wait:p05", 0, -1))]


def rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(notes.c.text).order_by(notes.c.id)).scalars())


# -- sessions -----------------------------------------------------------------------------------------


def test_a_session_commit_sends_what_was_held(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="a"))
        handle = Echo.enqueue(text="a")
        assert isinstance(handle, HeldHandle) and handle.held and not handle.sent
        assert handle.status() is Status.UNKNOWN  # not asked of Redis: the job is not there yet
        assert not stored(conn, handle)
        session.commit()
        assert handle.sent and not handle.held and stored(conn, handle)
        assert handle.status() is Status.QUEUED
    assert rows(engine) == ["a"]


def test_a_session_rollback_or_close_drops_what_was_held(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="rolled back"))
        first = Echo.enqueue(text="rolled back")
        session.rollback()
        session.execute(notes.insert().values(text="closed"))
        second = Echo.enqueue(text="closed")
    assert first.dropped and second.dropped  # type: ignore[attr-defined]
    assert not stored(conn, first) and not stored(conn, second)
    assert second.status() is Status.UNKNOWN
    with pytest.raises(NoSuchJob, match="was never enqueued: its transaction rolled back"):
        second.result(timeout=30)  # raised at once: nothing to wait for
    assert rows(engine) == []
    assert conn.llen("forgejobs:{fast}:wait:p05") == 0


def test_a_rolled_back_savepoint_drops_only_its_own_jobs(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="outer"))
        outer = Echo.enqueue(text="outer")
        with session.begin_nested():
            session.execute(notes.insert().values(text="kept"))
            kept = Echo.enqueue(text="kept")
        savepoint = session.begin_nested()
        session.execute(notes.insert().values(text="inner"))
        inner = Echo.enqueue(text="inner")
        with session.begin_nested():
            deeper = Echo.enqueue(text="deeper")
        savepoint.rollback()
        assert inner.dropped and deeper.dropped  # type: ignore[attr-defined]
        assert outer.held and kept.held  # type: ignore[attr-defined]
        session.commit()
    assert [stored(conn, h) for h in (outer, kept, inner, deeper)] == [True, True, False, False]
    assert rows(engine) == ["outer", "kept"]


def test_jobs_go_out_in_the_order_they_were_enqueued(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="x"))
        handles = [Echo.enqueue(text=str(i)) for i in range(3)] + Echo.enqueue_many([{"text": "3"}, {"text": "4"}])
        session.commit()
    assert waiting(conn) == [h.id for h in handles]


def test_a_bad_payload_raises_at_the_call_and_holds_nothing(
    engine: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    with Session(engine) as session, enqueue_after_commit(session):
        with pytest.raises(pydantic.ValidationError, match="text"):
            Echo.enqueue(text=42)
        session.execute(notes.insert().values(text="x"))
        session.commit()
    assert list(conn.scan_iter("forgejobs:{fast}:job:*")) == []


def test_enqueues_outside_the_block_are_not_held(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with Session(engine) as session:
        session.execute(notes.insert().values(text="x"))
        handle = Echo.enqueue(text="now")
        assert not isinstance(handle, HeldHandle) and stored(conn, handle)
        session.rollback()
    assert stored(conn, handle)


def test_jobs_held_with_no_transaction_to_commit_them_are_dropped(
    engine: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    with Session(engine) as session:
        with enqueue_after_commit(session):
            handle = Echo.enqueue(text="orphan")  # no transaction was ever opened in the block
        assert handle.dropped and not stored(conn, handle)  # type: ignore[attr-defined]


def test_a_block_ending_before_the_commit_still_sends_at_the_commit(
    engine: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    with Session(engine) as session, session.begin():
        with enqueue_after_commit(session):
            session.execute(notes.insert().values(text="x"))
            handle = Echo.enqueue(text="x")
        assert handle.held  # type: ignore[attr-defined]
    assert handle.sent and stored(conn, handle)  # type: ignore[attr-defined]


def test_an_orm_flush_inside_the_transaction_does_not_send_early(
    engine: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    class Base(sa.orm.DeclarativeBase):
        pass

    class Note(Base):
        __table__ = notes

    with Session(engine) as session, enqueue_after_commit(session):
        session.add(Note(text="flushed"))
        handle = Echo.enqueue(text="x")
        session.flush()
        assert handle.held and not stored(conn, handle)  # type: ignore[attr-defined]
        session.commit()
    assert stored(conn, handle)


def test_installed_on_a_factory_every_transaction_holds(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    factory = sessionmaker(engine)
    install(factory)
    with factory() as session:
        before = Echo.enqueue(text="no transaction yet")
        session.execute(notes.insert().values(text="x"))
        held = Echo.enqueue(text="held")
        assert held.held and stored(conn, before) and not stored(conn, held)  # type: ignore[attr-defined]
        session.commit()
        assert held.sent and stored(conn, held)  # type: ignore[attr-defined]
        session.execute(notes.insert().values(text="y"))
        dropped = Echo.enqueue(text="dropped")
    assert dropped.dropped and not stored(conn, dropped)  # type: ignore[attr-defined]
    after = Echo.enqueue(text="after")
    assert not isinstance(after, HeldHandle)
    with Session(engine) as other:  # not from the factory: nothing held
        other.execute(notes.insert().values(text="z"))
        assert not isinstance(Echo.enqueue(text="other"), HeldHandle)


def test_a_failed_commit_sends_nothing(postgres: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with postgres.begin() as c:
        c.execute(sa.text("CREATE TABLE once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
    with Session(postgres) as session, enqueue_after_commit(session):
        session.execute(sa.text("INSERT INTO once VALUES (1), (1)"))  # refused only at COMMIT
        handle = Echo.enqueue(text="x")
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
    assert handle.dropped and not stored(conn, handle)  # type: ignore[attr-defined]
    with postgres.connect() as c, pytest.raises(sa.exc.IntegrityError), begin(c):
        c.execute(sa.text("INSERT INTO once VALUES (2), (2)"))
        other = Echo.enqueue(text="y")
    assert other.dropped and not stored(conn, other)  # type: ignore[attr-defined]


def test_a_redis_that_refuses_after_the_commit_raises_from_commit_with_the_rows_written(
    engine: sa.Engine, registry: Registry
) -> None:
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = Client(RedisBackend(nobody, enqueue_timeout=0.5), registry)
    with use_client(down), Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="kept"))
        handle = Echo.enqueue(text="x")
        with pytest.raises(BackendUnavailable):
            session.commit()
        assert handle.dropped and isinstance(handle.error, BackendUnavailable)  # type: ignore[attr-defined]
        with pytest.raises(NoSuchJob, match="storing it after the commit failed"):
            handle.result(timeout=30)
        assert not session.in_transaction()
    assert rows(engine) == ["kept"]  # the window the outbox closes


# -- connections --------------------------------------------------------------------------------------


def test_begin_sends_after_its_commit_and_drops_on_error(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with begin(engine) as c:
        c.execute(notes.insert().values(text="a"))
        sent = Echo.enqueue(text="a")
        assert sent.held and not stored(conn, sent)  # type: ignore[attr-defined]
    assert sent.sent and stored(conn, sent)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError), begin(engine) as c:
        c.execute(notes.insert().values(text="b"))
        dropped = Echo.enqueue(text="b")
        raise RuntimeError("boom")
    assert dropped.dropped and not stored(conn, dropped)  # type: ignore[attr-defined]
    assert rows(engine) == ["a"]


def test_connection_savepoints_and_commit_as_you_go(engine: sa.Engine, client: Client, conn: redis.Redis) -> None:
    with engine.connect() as c, enqueue_after_commit(c):
        c.execute(notes.insert().values(text="a"))
        kept = Echo.enqueue(text="kept")
        with c.begin_nested():
            released = Echo.enqueue(text="released")
        savepoint = c.begin_nested()
        rolled = Echo.enqueue(text="rolled back")
        savepoint.rollback()
        c.commit()
        assert not stored(conn, kept)  # sent when the next transaction begins or the block ends
        c.execute(notes.insert().values(text="b"))
        assert stored(conn, kept) and stored(conn, released) and not stored(conn, rolled)
        later = Echo.enqueue(text="later")
        c.rollback()
    assert rolled.dropped and later.dropped and not stored(conn, later)  # type: ignore[attr-defined]


def test_a_connection_block_ending_inside_its_transaction_is_refused(
    engine: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    with pytest.raises(ForgeJobsError, match="still open"), engine.begin() as c, enqueue_after_commit(c):
        c.execute(notes.insert().values(text="never"))
        handle = Echo.enqueue(text="never")
    assert handle.dropped and not stored(conn, handle)  # type: ignore[attr-defined]
    assert rows(engine) == []  # the error was raised inside the transaction, which rolled back


# -- the fake queue -----------------------------------------------------------------------------------


def test_the_fake_queue_captures_held_jobs_at_the_commit(tmp_path: Path, fake_queue: FakeQueue) -> None:
    engine = _sqlite_engine(tmp_path / "fake.db")
    metadata.create_all(engine)
    with begin(engine) as c:
        c.execute(notes.insert().values(text="a"))
        Echo.enqueue(text="a")
        assert fake_queue.all_enqueued() == []
    fake_queue.assert_enqueued(Echo, text="a")


# -- asyncio ------------------------------------------------------------------------------------------


def test_an_async_session_sends_aenqueued_jobs_after_its_commit(
    postgres: sa.Engine, client: Client, conn: redis.Redis
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from forgejobs.aio import AsyncClient, use_async_client

    async def scenario() -> tuple[HeldHandle, HeldHandle]:
        aengine = create_async_engine(postgres.url, connect_args={"options": _search_path(postgres)})
        aclient = AsyncClient.for_client(client)
        try:
            with use_async_client(aclient):
                async with AsyncSession(aengine) as session, enqueue_after_commit(session) as block:
                    await session.execute(notes.insert().values(text="a"))
                    sent = await Echo.aenqueue(text="a")
                    assert isinstance(sent, HeldHandle) and await sent.astatus() is Status.UNKNOWN
                    await session.commit()
                    assert len(block.tasks) == 1
                    await session.execute(notes.insert().values(text="b"))
                    dropped = await Echo.aenqueue(text="b")
                    await session.rollback()
                assert await sent.astatus() is Status.QUEUED  # the block waited for the store task
                return sent, dropped  # type: ignore[return-value]
        finally:
            await aclient.aclose()
            await aengine.dispose()

    sent, dropped = asyncio.run(scenario())
    assert stored(conn, sent) and dropped.dropped and not stored(conn, dropped)
    assert rows(postgres) == ["a"]


def test_installed_on_an_async_session_class_holds_aenqueue(postgres: sa.Engine, fake_queue: FakeQueue) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    class AppSession(Session):
        pass

    install(AppSession)

    async def scenario() -> list[int]:
        aengine = create_async_engine(postgres.url, connect_args={"options": _search_path(postgres)})
        seen = []
        try:
            async with async_sessionmaker(aengine, sync_session_class=AppSession)() as session:
                await session.execute(notes.insert().values(text="a"))
                handle = await Echo.aenqueue(text="a")
                seen.append(len(fake_queue.all_enqueued()))
                await session.commit()
                seen.append(len(fake_queue.all_enqueued()))
                assert isinstance(handle, HeldHandle) and handle.sent
        finally:
            await aengine.dispose()
        return seen

    assert asyncio.run(scenario()) == [0, 1]
    fake_queue.assert_enqueued(Echo, text="a")


def _search_path(engine: sa.Engine) -> str:
    with engine.connect() as c:
        return f"-csearch_path={c.execute(sa.text('SHOW search_path')).scalar_one()}"


# -- Django -------------------------------------------------------------------------------------------


@pytest.fixture
def django_table() -> Iterator[str]:
    """Django configured in this process on an in-memory SQLite database, and a table of this test's own."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings as django_settings  # type: ignore[import-untyped]
    from django.db import connection  # type: ignore[import-untyped]

    if not django_settings.configured:
        django_settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    table = f"notes_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (text varchar(50))")
    yield table
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {table}")


def django_rows(table: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT text FROM {table} ORDER BY rowid")
        return [row[0] for row in cursor.fetchall()]


def test_django_atomic_blocks_hold_until_the_outer_commit(django_table: str, client: Client, conn: redis.Redis) -> None:
    from django.db import connection, transaction

    from forgejobs.django import enqueue_after_commit as django_after_commit

    def insert(text: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {django_table} (text) VALUES (%s)", [text])

    with django_after_commit():
        with transaction.atomic():
            insert("a")
            sent = Echo.enqueue(text="a")
            try:
                with transaction.atomic():  # a savepoint
                    insert("inner")
                    inner = Echo.enqueue(text="inner")
                    raise RuntimeError("roll the savepoint back")
            except RuntimeError:
                pass
            assert isinstance(sent, HeldHandle) and sent.held and not stored(conn, sent)
        assert sent.sent and stored(conn, sent) and not stored(conn, inner)
        with pytest.raises(RuntimeError), transaction.atomic():
            insert("b")
            dropped = Echo.enqueue(text="b")
            raise RuntimeError("roll back")
        assert not stored(conn, dropped) and dropped.status() is Status.UNKNOWN
        autocommit = Echo.enqueue(text="outside atomic")
        assert not isinstance(autocommit, HeldHandle) and stored(conn, autocommit)
    assert django_rows(django_table) == ["a"]


def test_django_middleware_holds_each_requests_enqueues(django_table: str, client: Client, conn: redis.Redis) -> None:
    from django.db import transaction

    from forgejobs.django import AfterCommitMiddleware

    seen: list[bool] = []

    def view(request: object) -> HeldHandle:
        with transaction.atomic():
            handle = Echo.enqueue(text="from a request")
            seen.append(stored(conn, handle))
        return handle  # type: ignore[return-value]

    handle = AfterCommitMiddleware(view)(object())
    assert seen == [False] and handle.sent and stored(conn, handle)
    assert not isinstance(Echo.enqueue(text="after the request"), HeldHandle)


# -- the core, without a database: debounced and unique jobs, asyncio stores, failures -----------------


class HeldReindex(Job, queue="fast", debounce=timedelta(seconds=30), dedupe_key=("document",)):
    document: str
    revision: int

    def perform(self, ctx: Context[None]) -> int:
        return self.revision


class HeldInvoice(Job, queue="fast", unique_for=timedelta(minutes=5), dedupe_key=("account",)):
    account: str

    def perform(self, ctx: Context[None]) -> str:
        return self.account


@pytest.fixture
def own_client(conn: redis.Redis) -> Iterator[Client]:
    """A client whose registry also holds this module's debounced and unique jobs; current while the test runs."""
    made = Client(RedisBackend(conn), Registry([Echo, HeldReindex, HeldInvoice], Specs(queues={"fast": QueueSpec()})))
    with use_client(made):
        yield made


def test_a_held_debounced_job_is_debounced_when_stored_at_the_commit(
    tmp_path: Path, own_client: Client, conn: redis.Redis
) -> None:
    engine = _sqlite_engine(tmp_path / "debounce.db")
    metadata.create_all(engine)
    with Session(engine) as session, enqueue_after_commit(session):
        session.execute(notes.insert().values(text="a"))
        first = HeldReindex.enqueue(document="d1", revision=1)
        with pytest.raises(ValueError, match="fast.held-reindex is debounced: its start is set by debounce"):
            HeldReindex.with_options(delay=5).enqueue(document="d1", revision=2)
        second = HeldReindex.enqueue(document="d1", revision=3)
        assert isinstance(first, HeldHandle) and first.held and conn.zcard("forgejobs:{fast}:delayed") == 0
        session.commit()
    assert isinstance(second, HeldHandle) and first.sent and second.sent
    assert second.id == first.id and second.existing and not first.existing  # one job, the newer payload
    assert conn.zrange("forgejobs:{fast}:delayed", 0, -1) == [first.id.encode()]
    assert b'"revision":3' in (conn.hget(f"forgejobs:{{fast}}:job:{first.id}", "d") or b"")
    assert rows(engine) == ["a"]
    engine.dispose()


def test_an_async_store_keeps_the_order_across_async_and_sync_clients_and_debounces(
    own_client: Client, conn: redis.Redis
) -> None:
    async def scenario() -> list[HeldEnqueue]:
        aclient = AsyncClient.for_client(own_client)
        try:
            batches = [
                hold(aclient, Echo, [{"text": "async"}], EnqueueOptions()),
                hold(own_client, Echo, [{"text": "sync"}], EnqueueOptions()),
                hold(aclient, HeldReindex, [{"document": "a", "revision": 1}], EnqueueOptions()),
                hold(own_client, HeldReindex, [{"document": "b", "revision": 1}], EnqueueOptions()),
            ]
            tasks: list[asyncio.Task[None]] = []
            send_soon(batches, tasks)  # a loop runs: stored by a task, not at once
            assert len(tasks) == 1 and all(b.handles[0].held for b in batches)
            await tasks[0]
            echo = batches[0].handles[0]
            with pytest.raises(ResultTimeout, match="is still queued"):  # read back from Redis like any handle
                await echo.aresult(timeout=0)
            return batches
        finally:
            await aclient.aclose()

    batches = asyncio.run(scenario())
    handles = [b.handles[0] for b in batches]
    assert all(h.sent and not h.held for h in handles)
    assert waiting(conn) == [handles[0].id, handles[1].id]
    assert set(conn.zrange("forgejobs:{fast}:delayed", 0, -1)) == {handles[2].id.encode(), handles[3].id.encode()}


def test_without_a_running_loop_jobs_held_for_an_async_client_go_through_its_sync_client(
    own_client: Client, conn: redis.Redis
) -> None:
    aclient = AsyncClient.for_client(own_client)
    try:
        batch = hold(aclient, Echo, [{"text": "no loop"}], EnqueueOptions())
        tasks: list[asyncio.Task[None]] = []
        send_soon([batch], tasks)
        assert tasks == []  # stored at once: nothing to await
        assert batch.handles[0].sent and stored(conn, batch.handles[0])
        with pytest.raises(ResultTimeout, match="is still queued"):  # read from Redis, like any handle
            batch.handles[0].result(timeout=0)
    finally:
        asyncio.run(aclient.aclose())


def test_an_async_store_that_fails_drops_every_batch_logs_the_error_and_releases_unique_claims(
    own_client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conn.set("forgejobs:{fast}:wait:p05", "not a list")  # every enqueue script on the queue now fails

    async def scenario() -> tuple[list[HeldHandle], BaseException]:
        aclient = AsyncClient.for_client(own_client)
        try:
            batches = [
                hold(aclient, HeldInvoice, [{"account": "acme"}], EnqueueOptions()),
                hold(own_client, Echo, [{"text": "never tried"}], EnqueueOptions()),
            ]
            tasks: list[asyncio.Task[None]] = []
            send_soon(batches, tasks)
            with pytest.raises(BackendError, match="could not enqueue 1 job") as failure:
                await tasks[0]
            handles = [b.handles[0] for b in batches]
            with pytest.raises(NoSuchJob, match="never enqueued: storing it after the commit failed: could not"):
                await handles[0].aresult(timeout=30)  # raised at once
            return handles, failure.value
        finally:
            await aclient.aclose()

    with caplog.at_level(logging.ERROR, logger="forgejobs.aftercommit"):
        handles, error = asyncio.run(scenario())
    assert all(h.dropped and not h.sent and h.error is error for h in handles)
    assert list(conn.scan_iter("forgejobs:unique:*")) == []  # the claim went with the failed store
    assert not stored(conn, handles[1])  # the batch after the failed one was never tried
    logged = [r for r in caplog.records if r.name == "forgejobs.aftercommit"]
    assert [r.getMessage() for r in logged] == ["storing jobs held until a commit failed"]
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is error


def test_a_held_handles_repr_names_the_job_and_its_state(own_client: Client) -> None:
    sent, dropped = (hold(own_client, Echo, [{"text": t}], EnqueueOptions()) for t in ("sent", "dropped"))
    assert repr(sent.handles[0]) == f"<HeldHandle fast.echo {sent.handles[0].id} held>"
    send_held([sent])
    drop_held([dropped], "rolled back")
    assert repr(sent.handles[0]) == f"<HeldHandle fast.echo {sent.handles[0].id} sent>"
    assert repr(dropped.handles[0]) == f"<HeldHandle fast.echo {dropped.handles[0].id} dropped>"
