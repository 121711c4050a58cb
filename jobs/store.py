"""The catalog's rows: what its handlers read and write, with SQLAlchemy Core.

A SQLite file by default (`FORGEJOBS_CATALOG_DATABASE_URL`, default
`sqlite:///var/catalog.db`), PostgreSQL by URL
(`postgresql+psycopg://user@host/db`). Jobs carry ids; handlers load rows
from here. Every write a handler makes is safe to repeat: inserts keyed by a
natural id use `insert_ignore`, state that converges uses `upsert`.

Swap this module for your own data access when you copy the catalog: the
handlers only use the tables below and the `Store` helpers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from forgejobs import sqlalchemy as after_commit

if TYPE_CHECKING:
    from forgejobs import Job, JobHandle
    from forgejobs.outbox import Outbox

metadata = sa.MetaData()

_DDL_LOCK = 0x666A6F6273  # an arbitrary advisory lock key: "fjobs"


def new_id(prefix: str) -> str:
    """A sortable-enough, collision-free id like `usr_3f2a...` (prefix names the kind of row)."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def max_length(column: sa.Column[Any]) -> int:
    """The declared length of a String column: what app-side helpers check before writing, because SQLite
    stores a longer value that PostgreSQL refuses."""
    kind = column.type
    if not isinstance(kind, sa.String) or kind.length is None:
        raise TypeError(f"{column} is not a String column with a length")
    return kind.length


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which keeps no zone) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created() -> sa.Column[datetime]:
    return sa.Column("created_at", UTCDateTime(), nullable=False, default=utcnow)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    _created(),
)

organisations = sa.Table(
    "organisations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("stripe_customer_id", sa.String(64), unique=True),
    sa.Column("billing_email", sa.String(320)),
    _created(),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("org_id", sa.ForeignKey("organisations.id"), primary_key=True),
    sa.Column("user_id", sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False, default="member"),
    _created(),
)

invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("invited_by", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("token", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False, default="pending"),  # pending | accepted | revoked
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("sent_at", UTCDateTime()),
    _created(),
)

# One row per message a job sends, claimed before the send ("sending") and confirmed after it ("sent"): a
# job re-run after it sent finds "sent" and does nothing; two runs of one job at once cannot both send.
sent_emails = sa.Table(
    "sent_emails",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),  # forgejobs ids are at most 128 characters
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(300), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("status", sa.String(10), nullable=False, default="sent", server_default="sent"),  # sending | sent
    sa.Column("sent_at", UTCDateTime(), nullable=False, default=utcnow),  # when claimed, then when sent
)

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    # Current secret first; during rotation the previous one follows until it expires (space-separated whsec_...).
    sa.Column("secrets", sa.String(500), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False, default=list),  # [] = every event
    sa.Column("disabled_at", UTCDateTime()),
    sa.Column("disabled_reason", sa.String(200)),
    _created(),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # also the `webhook-id` header: receivers dedupe on it
    sa.Column("endpoint_id", sa.ForeignKey("webhook_endpoints.id"), nullable=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, default="pending"),  # pending | delivered | failed | cancelled
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("delivered_at", UTCDateTime()),
    _created(),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.ForeignKey("webhook_deliveries.id"), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status_code", sa.Integer),  # None: no HTTP answer (refused, timeout, blocked address)
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("response_excerpt", sa.String(1000)),
    sa.Column("error", sa.String(500)),
    sa.Column("at", UTCDateTime(), nullable=False, default=utcnow),
)

stripe_events = sa.Table(
    "stripe_events",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # evt_...: the unique constraint that stops replays
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("livemode", sa.Boolean, nullable=False, default=False),
    sa.Column("created", sa.BigInteger, nullable=False),  # Stripe's epoch seconds: orders events per object
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, default="received"),  # received | processed | skipped
    sa.Column("received_at", UTCDateTime(), nullable=False, default=utcnow),
    sa.Column("processed_at", UTCDateTime()),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # sub_...
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("price_id", sa.String(255)),
    sa.Column("quantity", sa.Integer),
    sa.Column("current_period_end", UTCDateTime()),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, default=False),
    sa.Column("stripe_updated", sa.BigInteger, nullable=False),  # `created` of the event last applied
    sa.Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
)

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # in_...
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("subscription_id", sa.String(255)),
    sa.Column("status", sa.String(30), nullable=False),  # paid | open | uncollectible | ...
    sa.Column("amount_due", sa.BigInteger, nullable=False),
    sa.Column("amount_paid", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False, default=0),
    sa.Column("hosted_invoice_url", sa.String(2000)),
    sa.Column("stripe_updated", sa.BigInteger, nullable=False),
    sa.Column("paid_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
)

usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("metric", sa.String(60), nullable=False),  # e.g. api.requests, storage.bytes
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Index("ix_usage_events_occurred", "occurred_at"),
)

usage_aggregates = sa.Table(
    "usage_aggregates",
    metadata,
    sa.Column("org_id", sa.ForeignKey("organisations.id"), primary_key=True),
    sa.Column("metric", sa.String(60), primary_key=True),
    sa.Column("period", sa.String(5), primary_key=True),  # day | month
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("computed_at", UTCDateTime(), nullable=False, default=utcnow),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("storage_key", sa.String(500), nullable=False, unique=True),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", UTCDateTime()),  # soft delete: restorable until purged
    sa.Column("purge_at", UTCDateTime()),  # when the deletion's cleanup is due (deleted_at + its grace period)
    sa.Column("purged_at", UTCDateTime()),  # the stored object is gone
    _created(),
)

# Append-only: rows are inserted, never updated or deleted by the catalog.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),  # a re-run inserts nothing twice
    sa.Column("actor_id", sa.String(40), nullable=False),
    sa.Column("action", sa.String(80), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("org_id", sa.String(40)),
    sa.Column("metadata", sa.JSON, nullable=False, default=dict),
    sa.Column("request_id", sa.String(64)),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Index("ix_audit_log_at", "at"),
)

activity_feed = sa.Table(
    "activity_feed",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(200), nullable=False, unique=True),
    sa.Column("org_id", sa.ForeignKey("organisations.id"), nullable=False, index=True),
    sa.Column("actor_id", sa.String(40)),
    sa.Column("verb", sa.String(60), nullable=False),  # e.g. member.joined, file.uploaded
    sa.Column("object_type", sa.String(40), nullable=False),
    sa.Column("object_id", sa.String(64), nullable=False),
    sa.Column("summary", sa.String(300), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
)


def owner_ids(conn: Connection, org_id: str) -> list[str]:
    """The user ids of an organisation's owners, in a stable order (who hears about billing and endpoints)."""
    rows = conn.execute(
        sa.select(memberships.c.user_id)
        .where(memberships.c.org_id == org_id, memberships.c.role == "owner")
        .order_by(memberships.c.user_id)
    )
    return [str(user_id) for user_id in rows.scalars()]


class SchemaMismatch(RuntimeError):
    """The database lacks tables or columns the catalog's handlers use."""


class Store:
    """An engine and the catalog's tables, with the few portable helpers handlers need.

    `outbox`: where the app-side flows (`sign_up`, `publish_event`, `receive_stripe_event`,
    `soft_delete_file`) put their jobs. None (the default): enqueued after their transaction commits
    (`forgejobs.sqlalchemy`); an `Outbox`: written as rows in that transaction, for `forgejobs outbox relay`
    to move to Redis (`forgejobs.outbox`; docs/transactions.md says which to pick)."""

    def __init__(self, engine: Engine, *, outbox: Outbox | None = None) -> None:
        self.engine = engine
        self.outbox = outbox

    @classmethod
    def from_url(cls, url: str, *, create: bool = True, outbox: Outbox | None = None, **engine_options: Any) -> Store:
        """Connect (and, by default, create missing tables). SQLite files get their folder made."""
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, **engine_options)
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine, outbox=outbox)
        if create:
            store.create_all()
        store.check_schema()
        return store

    def check_schema(self) -> None:
        """Raise `SchemaMismatch` naming every table and column the catalog uses that the database lacks
        (`create_all` adds missing tables, never columns to existing ones)."""
        inspector = sa.inspect(self.engine)
        present = set(inspector.get_table_names())
        missing: list[str] = []
        for table in metadata.sorted_tables:
            if table.name not in present:
                missing.append(f"table {table.name}")
                continue
            columns = {column["name"] for column in inspector.get_columns(table.name)}
            missing += [f"{table.name}.{column.name}" for column in table.columns if column.name not in columns]
        if missing:
            raise SchemaMismatch(
                f"the catalog database {self.engine.url.render_as_string(hide_password=True)} lacks "
                f"{', '.join(missing)}: it was created by an older catalog. Migrate it (e.g. ALTER TABLE ... ADD "
                "COLUMN), or for a development database delete it and let the catalog create it again."
            )

    def create_all(self) -> None:
        """Create missing tables (and the outbox's, if the store has one). Safe when many processes start at
        once on an empty database (each worker child builds its resources): PostgreSQL serialises them with
        an advisory lock, and on SQLite a process that lost a race to another looks again."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK})
                metadata.create_all(conn)
                if self.outbox is not None:
                    self.outbox.create_table(conn)
            return
        if self.outbox is not None:
            self.outbox.create_table(self.engine)
        objects = len(metadata.tables) + sum(len(t.indexes) for t in metadata.tables.values())
        for _ in range(objects):  # each lost race means another process made progress
            try:
                metadata.create_all(self.engine)
                return
            except sa.exc.OperationalError as exc:
                if "already exists" not in str(exc):
                    raise
        metadata.create_all(self.engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as conn:
            yield conn

    def transaction(self) -> AbstractContextManager[Connection]:
        """`begin()` for the app-side flows: jobs given to `enqueue` inside it exist only if it commits."""
        return after_commit.begin(self.engine)

    def enqueue(
        self,
        conn: Connection,
        job: Job,
        *,
        delay: timedelta | None = None,
        job_id: str | None = None,
        priority: int | None = None,
    ) -> JobHandle:
        """Enqueue `job` as part of the transaction `conn` (one from `transaction()`): a row in the outbox
        if the store has one, else held and enqueued once the transaction has committed."""
        if self.outbox is not None:
            return self.outbox.enqueue(conn, job, delay=delay, job_id=job_id, priority=priority)
        job_type: Any = type(job)
        handle: JobHandle = job_type.with_options(delay=delay, job_id=job_id, priority=priority).enqueue(job)
        return handle

    def insert_ignore(self, conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> bool:
        """Insert unless a row with the same primary key or unique value exists. True if inserted."""
        stmt = self._dialect_insert(table).values(**values).on_conflict_do_nothing()
        # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT (psycopg reports -1).
        return conn.execute(stmt.returning(sa.literal(1))).first() is not None

    def upsert(
        self, conn: Connection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str], *, where: Any = None
    ) -> bool:
        """Insert, or update the row with the same `keys` (optionally only `where` a condition holds).

        Returns True if a row was inserted or updated."""
        insert = self._dialect_insert(table).values(**values)
        update = {k: insert.excluded[k] for k in values if k not in keys}
        stmt = insert.on_conflict_do_update(index_elements=list(keys), set_=update, where=where)
        return conn.execute(stmt.returning(sa.literal(1))).first() is not None

    def _dialect_insert(self, table: sa.Table) -> Any:
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table)
        raise NotImplementedError(f"the catalog store supports SQLite and PostgreSQL, not {name}")

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # workers in several processes write to one file
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
