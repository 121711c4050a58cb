"""A transactional outbox: the enqueue is a row written in the caller's own transaction; a relay moves rows to Redis.

    from forgejobs import outbox

    with engine.begin() as conn:                         # or a Session: outbox.enqueue(session, ...)
        conn.execute(users.insert().values(id=user_id, ...))
        outbox.enqueue(conn, WelcomeEmail(user_id=user_id))  # a row in the same transaction

    # elsewhere, always running:  forgejobs outbox relay --database-url postgresql+psycopg://...

The job exists if and only if the transaction commits, and once committed it reaches Redis even if the
process dies a microsecond later: the row waits for the relay. `outbox.enqueue` validates the payload,
applies the size guard and picks the job's id (a new UUID, or the `job_id` you give) before it writes, so
a bad payload raises at the call and never reaches the table.

**Exactly one job per row.** The relay reads a batch of rows, stores their jobs in Redis with the row's id
as the job id, then deletes the rows, in one database transaction. A relay killed after storing and before
its delete committed leaves the rows; the next pass stores them again, and `enqueue.lua` refuses an id
whose job record exists (it counts a `deduplicated` event instead), so each row gives one job. That holds
while the job's record is kept: until it has finished and its `result_ttl` (1 h by default) or
`failure_ttl` has passed. A relay that stays down longer than that with rows it had already sent is the one
way to run a job twice.

**Several relays.** On PostgreSQL each pass takes its rows with `FOR UPDATE SKIP LOCKED`: relays share the
table without waiting on each other or reading the same rows. SQLite has no row locks: run one relay (a
second one is safe, as above, but does the same work again).

**Rows that cannot become jobs** (a job name the relay's registry does not know, a payload that no longer
validates) are kept, marked with `failed_at` and `error`, and skipped by later passes; the relay goes on.
`forgejobs outbox status` lists them; fix the cause and clear `failed_at` to retry, or delete the row.

The table (`Outbox.table`, default name `forgejobs_outbox`) is plain SQLAlchemy Core: create it with
`create_table(engine)` or copy its definition into your migrations.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

try:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is missing
    raise ModuleNotFoundError(
        "forgejobs.outbox needs SQLAlchemy 2: pip install 'forgejobs[sqlalchemy]'", name=exc.name
    ) from exc

from pydantic import ValidationError

from .aftercommit import store_prepared
from .backends.base import Prepared
from .client import Client, current_client
from .errors import ForgeJobsError, PayloadTooLarge, UnknownJob
from .handle import JobHandle
from .job import Job
from .options import EnqueueOptions, JobOptions

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["Outbox", "OutboxRelay", "RelayPass", "create_table", "enqueue", "aenqueue", "default"]

log = logging.getLogger("forgejobs.outbox")

DEFAULT_TABLE = "forgejobs_outbox"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    """One outbox table: where `enqueue` writes and what a relay reads."""

    def __init__(self, name: str = DEFAULT_TABLE, *, schema: str | None = None, metadata: sa.MetaData | None = None):
        self.table = sa.Table(
            name,
            metadata if metadata is not None else sa.MetaData(),
            sa.Column("id", sa.String(128), primary_key=True, comment="the job id"),
            sa.Column("name", sa.String(200), nullable=False, comment="the job name"),
            sa.Column("payload", sa.Text, nullable=False, comment="the validated payload, as JSON"),
            sa.Column("priority", sa.SmallInteger, nullable=True),
            sa.Column("due_ms", sa.BigInteger, nullable=True, comment="start no earlier (ms since the epoch)"),
            sa.Column("created_ms", sa.BigInteger, nullable=False),
            sa.Column("failed_ms", sa.BigInteger, nullable=True, comment="set when the row cannot become a job"),
            sa.Column("error", sa.Text, nullable=True),
            sa.Index(f"{name}_pending", "failed_ms", "created_ms"),
            schema=schema,
        )
        self._statements: dict[tuple[str, bool], sa.Executable] = {}

    def create_table(self, bind: Engine | Connection) -> None:
        """Create the table and its index if missing."""
        self.table.create(bind, checkfirst=True)

    # -- writing --------------------------------------------------------------------------------

    def row(
        self,
        job: Job | type[Job],
        payload: Mapping[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | None = None,
    ) -> tuple[type[Job], dict[str, Any]]:
        """Validate one job as `Job.enqueue` would and return the row to write (nothing is written)."""
        item: Job | dict[str, Any]
        if isinstance(job, Job):
            if payload is not None:
                raise TypeError("pass a job instance, or a job class and its payload, not both")
            job_type, item = type(job), job
        elif isinstance(job, type) and issubclass(job, Job):
            job_type, item = job, dict(payload or {})
        else:
            raise TypeError(f"expected a Job instance or Job class, got {type(job).__qualname__}")
        target = client or current_client()
        job_options = target.registry.ensure(job_type)
        if job_options.debounce is not None:
            raise ForgeJobsError(
                f"{job_type.job_name()} is debounced: a debounced job cannot go through the outbox "
                "(its id is chosen when it is stored); use forgejobs.sqlalchemy.enqueue_after_commit"
            )
        row_id = job_id or uuid.uuid4().hex
        options = EnqueueOptions(delay=delay, at=at, priority=priority, job_id=row_id)
        prepared = target.prepare(job_type, job_options, item, options, target.backend.now())
        payload_json = json.dumps(json.loads(prepared.envelope)["payload"], separators=(",", ":"))
        return job_type, {
            "id": row_id,
            "name": prepared.name,
            "payload": payload_json,
            "priority": priority,
            "due_ms": int(prepared.due_at.timestamp() * 1000) if prepared.due_at is not None else None,
            "created_ms": _now_ms(),
        }

    def _insert(self, dialect: str, ignore: bool) -> sa.Executable:
        """The INSERT for one row (built once per kind: the values go as parameters, so it compiles once)."""
        key = (dialect, ignore)
        found = self._statements.get(key)
        if found is not None:
            return found
        statement: sa.Executable
        if ignore and dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            statement = pg_insert(self.table).on_conflict_do_nothing(index_elements=["id"]).returning(self.table.c.id)
        elif ignore and dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = (
                sqlite_insert(self.table).on_conflict_do_nothing(index_elements=["id"]).returning(self.table.c.id)
            )
        else:
            statement = self.table.insert()
        self._statements[key] = statement
        return statement

    def enqueue(
        self,
        target: Session | Connection,
        job: Job | type[Job],
        payload: Mapping[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | None = None,
    ) -> JobHandle[Any]:
        """Write one job into the outbox in `target`'s transaction (a Session's or a Connection's).

        `job` is a job instance, or a job class with `payload` (a mapping of its fields). The options are
        `Job.with_options`'s. Raises what `Job.enqueue` raises for a bad payload, before anything is
        written. Returns a handle whose `id` is the row's and the job's id; `status()` is `UNKNOWN` until
        the relay has moved the row, then the job's. With your own `job_id`, writing it again while its row
        is still there writes nothing and returns a handle with `existing` True (SQLite and PostgreSQL;
        other databases raise their unique-key error)."""
        job_type, values = self.row(job, payload, delay=delay, at=at, priority=priority, job_id=job_id, client=client)
        conn = target.connection() if isinstance(target, Session) else target
        result = conn.execute(self._insert(conn.dialect.name, job_id is not None), values)
        inserted = result.first() is not None if _returns(conn.dialect.name, job_id) else True
        return JobHandle(client or current_client(), values["id"], job_type, existing=not inserted)

    async def aenqueue(
        self,
        target: AsyncSession | AsyncConnection,
        job: Job | type[Job],
        payload: Mapping[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | None = None,
    ) -> JobHandle[Any]:
        """`enqueue` for SQLAlchemy's asyncio `AsyncSession` or `AsyncConnection`."""
        job_type, values = self.row(job, payload, delay=delay, at=at, priority=priority, job_id=job_id, client=client)
        bind = target.get_bind() if hasattr(target, "get_bind") else target
        result = await target.execute(self._insert(bind.dialect.name, job_id is not None), values)
        inserted = result.first() is not None if _returns(bind.dialect.name, job_id) else True
        return JobHandle(client or current_client(), values["id"], job_type, existing=not inserted)

    # -- reading --------------------------------------------------------------------------------

    def pending(self, bind: Engine | Connection) -> int:
        """Rows waiting for the relay (failed rows not counted)."""
        query = sa.select(sa.func.count()).select_from(self.table).where(self.table.c.failed_ms.is_(None))
        with _connection(bind) as conn:
            return int(conn.execute(query).scalar_one())

    def failed(self, bind: Engine | Connection, limit: int = 100) -> list[FailedRow]:
        """Rows the relay could not turn into jobs, oldest first, with the reason."""
        t = self.table
        query = sa.select(t).where(t.c.failed_ms.is_not(None)).order_by(t.c.failed_ms, t.c.id).limit(limit)
        with _connection(bind) as conn:
            return [
                FailedRow(r.id, r.name, r.payload, datetime.fromtimestamp(r.failed_ms / 1000, UTC), r.error)
                for r in conn.execute(query)
            ]


def _returns(dialect: str, job_id: str | None) -> bool:
    """Whether `_insert` asked the database to return the id (an insert that may write nothing)."""
    return job_id is not None and dialect in ("postgresql", "sqlite")


@dataclass(frozen=True)
class FailedRow:
    id: str
    name: str
    payload: str
    failed_at: datetime
    error: str


class _connection:
    """`with` a connection: the one given, or a new one from an engine (closed after)."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self.conn: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Engine):
            self.conn = self.bind.connect()
            return self.conn
        return self.bind

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


default = Outbox()
"""The outbox `forgejobs.outbox.enqueue` and `forgejobs outbox relay` use unless told otherwise."""


def enqueue(
    target: Session | Connection,
    job: Job | type[Job],
    payload: Mapping[str, Any] | None = None,
    *,
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    priority: int | None = None,
    job_id: str | None = None,
    client: Client | None = None,
) -> JobHandle[Any]:
    """`Outbox.enqueue` on the default table (`forgejobs_outbox`)."""
    return default.enqueue(target, job, payload, delay=delay, at=at, priority=priority, job_id=job_id, client=client)


async def aenqueue(
    target: AsyncSession | AsyncConnection,
    job: Job | type[Job],
    payload: Mapping[str, Any] | None = None,
    *,
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    priority: int | None = None,
    job_id: str | None = None,
    client: Client | None = None,
) -> JobHandle[Any]:
    """`Outbox.aenqueue` on the default table."""
    return await default.aenqueue(
        target, job, payload, delay=delay, at=at, priority=priority, job_id=job_id, client=client
    )


def create_table(bind: Engine | Connection) -> None:
    """Create the default outbox table if missing."""
    default.create_table(bind)


# -- the relay ------------------------------------------------------------------------------------------


@dataclass
class RelayPass:
    """What one pass did."""

    read: int = 0
    sent: int = 0
    """Jobs stored in Redis by this pass."""
    duplicates: int = 0
    """Rows whose job was already in Redis (a pass that died after storing them): not stored again."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(row id, reason) of rows marked failed."""


class OutboxRelay:
    """Moves outbox rows to Redis through `client` (default: the current client), a batch per pass."""

    def __init__(self, engine: Engine, client: Client | None = None, outbox: Outbox | None = None) -> None:
        self.engine = engine
        self.client = client or current_client()
        self.outbox = outbox or default
        self.locks = engine.dialect.name == "postgresql"

    def run_once(self, batch: int = 100) -> RelayPass:
        """Relay up to `batch` rows, oldest first, in one database transaction. Raises database and Redis
        errors (the rows stay for the next pass)."""
        t = self.outbox.table
        query = sa.select(t).where(t.c.failed_ms.is_(None)).order_by(t.c.created_ms, t.c.id).limit(batch)
        if self.locks:
            query = query.with_for_update(skip_locked=True)
        done = RelayPass()
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
            done.read = len(rows)
            if not rows:
                return done
            groups: dict[type[Job], tuple[JobOptions, list[Prepared]]] = {}
            now = self.client.backend.now()
            for row in rows:
                try:
                    entry = self.client.registry.resolve(row.name)
                    at = datetime.fromtimestamp(row.due_ms / 1000, UTC) if row.due_ms is not None else None
                    options = EnqueueOptions(at=at, priority=row.priority, job_id=row.id)
                    prepared = self.client.prepare(entry.job_type, entry.options, json.loads(row.payload), options, now)
                except (UnknownJob, ValidationError, PayloadTooLarge, ValueError, TypeError) as exc:
                    done.failed.append((row.id, _reason(row.name, exc)))
                    continue
                groups.setdefault(entry.job_type, (entry.options, []))[1].append(prepared)
            sent_ids: list[str] = []
            for job_options, prepared_list in groups.values():
                for prepared, (_, existing) in zip(
                    prepared_list, store_prepared(self.client, job_options, prepared_list)
                ):
                    sent_ids.append(prepared.job_id)
                    if existing:
                        done.duplicates += 1
                    else:
                        done.sent += 1
            for chunk in range(0, len(sent_ids), 500):
                conn.execute(t.delete().where(t.c.id.in_(sent_ids[chunk : chunk + 500])))
            for row_id, reason in done.failed:
                conn.execute(t.update().where(t.c.id == row_id).values(failed_ms=_now_ms(), error=reason))
                log.error("outbox row %s cannot become a job: %s", row_id, reason)
        return done

    def run_forever(self, batch: int = 100, interval: float = 1.0, stop: threading.Event | None = None) -> None:
        """Relay until `stop` is set: passes back to back while rows come, `interval` seconds apart when the
        table is empty or a pass failed (the error is logged; Redis or the database being away is waited out)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                done = self.run_once(batch)
            except Exception as exc:  # an outage of Redis or the database: log and try again
                log.warning("outbox relay pass failed, trying again in %gs: %s", interval, exc)
                stop.wait(interval)
                continue
            if done.read:
                log.info("relayed %d (%d already in Redis, %d failed)", done.sent, done.duplicates, len(done.failed))
            if done.read < batch:
                stop.wait(interval)


def _reason(name: str, exc: Exception) -> str:
    if isinstance(exc, UnknownJob):
        return f"{exc} in this relay's registry (FORGEJOBS_JOBS)"
    if isinstance(exc, ValidationError):
        return f"the payload of {name} no longer validates: {exc}"
    return f"{type(exc).__name__}: {exc}"
