"""The transactional outbox: rows written in the caller's transaction, relayed to Redis as exactly one job each.

On SQLite (a file of the test's own) and PostgreSQL (a schema of the test's own, dropped afterwards), against
the test's own Redis database; relay subprocesses are started and killed by PID.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pydantic
import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session

from forgejobs import Client
from forgejobs.backends.redis import RedisBackend
from forgejobs.errors import BackendUnavailable, ForgeJobsError, PayloadTooLarge
from forgejobs.outbox import Outbox, OutboxRelay
from forgejobs.status import Status
from forgejobs.testing import FakeQueue
from tests.conftest import WorkerProcess, free_port, wait_for
from tests.samplejobs.basic import Echo

POSTGRES_URL = os.environ.get("FORGEJOBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WAIT = "forgejobs:{fast}:wait:p05"

metadata = sa.MetaData()
users = sa.Table("users", metadata, sa.Column("id", sa.String(40), primary_key=True))


class Database:
    """An engine, the URL a subprocess uses to reach the same tables, and the test's outbox."""

    def __init__(self, engine: sa.Engine, url: str, schema: str | None) -> None:
        self.engine, self.url, self.schema = engine, url, schema
        self.outbox = Outbox(f"outbox_{uuid.uuid4().hex[:8]}", schema=schema)
        self.outbox.create_table(engine)
        users.create(engine, checkfirst=True)

    def relay_args(self, *args: str) -> list[str]:
        extra = ["--schema", self.schema] if self.schema else []
        return ["outbox", "relay", "--database-url", self.url, "--table", self.outbox.table.name, *extra, *args]

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.outbox.table)).scalar_one())

    def ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(self.outbox.table.c.id)).scalars())


def _sqlite(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    return Database(sa.create_engine(url), url, None)


def _postgres() -> Iterator[Database]:
    admin = sa.create_engine(POSTGRES_URL)
    schema = f"fj_outbox_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc.orig}")
    engine = sa.create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield Database(engine, POSTGRES_URL, schema)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        made = _sqlite(tmp_path)
        yield made
        made.engine.dispose()
    else:
        yield from _postgres()


@pytest.fixture
def pg() -> Iterator[Database]:
    yield from _postgres()


def waiting(conn: redis.Redis) -> Counter[str]:
    """How many times each job id is in the `fast` queue's wait list (no worker runs in these tests)."""
    return Counter(i.decode() for i in conn.lrange(WAIT, 0, -1))


def write(db: Database, count: int, client: Client) -> set[str]:
    ids: set[str] = set()
    with db.engine.begin() as conn:
        for i in range(count):
            ids.add(db.outbox.enqueue(conn, Echo(text=str(i)), client=client).id)
    return ids


# -- writing --------------------------------------------------------------------------------------------


def test_a_row_exists_only_if_its_transaction_commits(db: Database, client: Client, conn: redis.Redis) -> None:
    with pytest.raises(RuntimeError), db.engine.begin() as c:
        c.execute(users.insert().values(id="usr_gone"))
        db.outbox.enqueue(c, Echo(text="gone"))
        raise RuntimeError("roll back")
    with Session(db.engine) as session:
        session.execute(users.insert().values(id="usr_1"))
        handle = db.outbox.enqueue(session, Echo, {"text": "hello"}, priority=5)
        session.commit()
    assert db.ids() == {handle.id}
    assert handle.status() is Status.UNKNOWN  # not in Redis until the relay moves it

    done = OutboxRelay(db.engine, client, db.outbox).run_once()

    assert (done.sent, done.duplicates, done.failed) == (1, 0, [])
    assert db.rows() == 0 and waiting(conn) == Counter({handle.id: 1})
    assert handle.status() is Status.QUEUED
    record = json.loads(conn.hget(f"forgejobs:{{fast}}:job:{handle.id}", "d"))  # type: ignore[arg-type]
    assert (record["name"], record["payload"]) == ("fast.echo", {"text": "hello"})


def test_a_bad_payload_never_reaches_the_table(db: Database, client: Client) -> None:
    with db.engine.begin() as c:
        with pytest.raises(pydantic.ValidationError, match="text"):
            db.outbox.enqueue(c, Echo, {"text": 3})
        with pytest.raises(pydantic.ValidationError, match="extra"):
            db.outbox.enqueue(c, Echo, {"text": "a", "txt": "b"})
        with pytest.raises(PayloadTooLarge):
            db.outbox.enqueue(c, Echo, {"text": "x" * 100_000})
        with pytest.raises(TypeError, match="not both"):
            db.outbox.enqueue(c, Echo(text="a"), {"text": "b"})
    assert db.rows() == 0


def test_a_delayed_job_keeps_its_due_time(db: Database, client: Client, conn: redis.Redis) -> None:
    with db.engine.begin() as c:
        handle = db.outbox.enqueue(c, Echo(text="later"), delay=timedelta(hours=1))
    OutboxRelay(db.engine, client, db.outbox).run_once()
    assert handle.status() is Status.SCHEDULED
    due = conn.zscore("forgejobs:{fast}:delayed", handle.id)
    assert due is not None and due > (client.backend.now().timestamp() + 3500) * 1000


def test_your_own_job_id_is_written_once(db: Database, client: Client, conn: redis.Redis) -> None:
    with db.engine.begin() as c:
        first = db.outbox.enqueue(c, Echo(text="a"), job_id="evt_1")
        again = db.outbox.enqueue(c, Echo(text="b"), job_id="evt_1")
    assert (first.id, first.existing, again.id, again.existing) == ("evt_1", False, "evt_1", True)
    OutboxRelay(db.engine, client, db.outbox).run_once()
    assert waiting(conn) == Counter({"evt_1": 1})


def test_a_row_the_relay_cannot_turn_into_a_job_is_marked_and_skipped(
    db: Database, client: Client, conn: redis.Redis
) -> None:
    good = write(db, 2, client)
    with db.engine.begin() as c:
        c.execute(db.outbox.table.insert().values(id="row_unknown", name="gone.job", payload="{}", created_ms=1))
        c.execute(db.outbox.table.insert().values(id="row_stale", name="fast.echo", payload='{"n": 1}', created_ms=2))
    relay = OutboxRelay(db.engine, client, db.outbox)

    done = relay.run_once()

    assert done.sent == 2 and set(waiting(conn)) == good
    reasons = dict(done.failed)
    assert "no job type named 'gone.job'" in reasons["row_unknown"]
    assert "no longer validates" in reasons["row_stale"] and "text" in reasons["row_stale"]
    assert db.rows() == 2 and db.outbox.pending(db.engine) == 0
    assert {(f.id, f.error) for f in db.outbox.failed(db.engine)} == set(reasons.items())
    assert relay.run_once().read == 0  # failed rows are not read again


def test_a_pass_that_cannot_reach_redis_leaves_the_rows_for_the_next(
    db: Database, client: Client, conn: redis.Redis
) -> None:
    ids = write(db, 5, client)
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = Client(RedisBackend(nobody, enqueue_timeout=0.3), client.registry)
    with pytest.raises(BackendUnavailable):
        OutboxRelay(db.engine, down, db.outbox).run_once()
    assert db.ids() == ids

    stop = threading.Event()
    relay = OutboxRelay(db.engine, client, db.outbox)
    runner = threading.Thread(target=relay.run_forever, kwargs={"interval": 0.05, "stop": stop})
    runner.start()
    try:
        wait_for(lambda: db.rows() == 0, 30, "the relay thread to empty the table")
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive() and waiting(conn) == Counter(dict.fromkeys(ids, 1))


def test_the_fake_queue_sees_relayed_jobs(tmp_path: Path, fake_queue: FakeQueue) -> None:
    db = _sqlite(tmp_path)
    with db.engine.begin() as c:
        db.outbox.enqueue(c, Echo(text="a"))
    OutboxRelay(db.engine, fake_queue.client, db.outbox).run_once()
    fake_queue.assert_enqueued(Echo, text="a")


def test_debounced_jobs_are_refused(db: Database, fake_queue: FakeQueue) -> None:
    from forgejobs import Job

    class Settle(Job, queue="default", debounce=timedelta(seconds=5)):
        key: str

        def perform(self, ctx: object) -> None:  # type: ignore[override]
            pass

    with db.engine.begin() as c, pytest.raises(ForgeJobsError, match="debounced"):
        db.outbox.enqueue(c, Settle(key="a"))
    assert db.rows() == 0


# -- relays killed and shared ---------------------------------------------------------------------------


def started(process: WorkerProcess) -> WorkerProcess:
    wait_for(lambda: "relaying from" in process.log() or process.process.poll() is not None, 30, "the relay")
    assert process.process.poll() is None, process.log()
    return process


def test_a_relay_killed_after_storing_and_before_deleting_gives_one_job_per_row(
    db: Database, client: Client, conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    """The window that matters, hit on purpose: the test holds a lock that stops the relay's DELETE, waits
    until the batch is in Redis, and kills the relay there."""
    ids = write(db, 30, client)
    blocker = db.engine.connect()
    if db.schema:  # PostgreSQL: SHARE mode lets SELECT ... FOR UPDATE through and blocks DELETE
        blocker.begin()
        blocker.execute(sa.text(f'LOCK TABLE "{db.schema}"."{db.outbox.table.name}" IN SHARE MODE'))
    else:  # SQLite: a RESERVED lock lets the relay read and makes its DELETE wait
        blocker.exec_driver_sql("BEGIN IMMEDIATE")
    relay = started(start_cli(*db.relay_args("--batch", "10", "--interval", "0.05")))
    wait_for(lambda: len(waiting(conn)) == 10, 30, "the first batch in Redis")
    relay.signal(signal.SIGKILL)
    relay.wait()
    blocker.rollback()
    blocker.close()
    assert db.rows() == 30  # the killed pass deleted nothing

    again = started(start_cli(*db.relay_args("--batch", "10", "--interval", "0.05")))
    wait_for(lambda: db.rows() == 0, 60, "the table to empty")
    again.signal(signal.SIGTERM)
    again.wait()

    assert waiting(conn) == Counter(dict.fromkeys(ids, 1))
    assert "(10 already in Redis" in again.log()


def test_relays_killed_at_random_points_give_exactly_one_job_per_row(
    db: Database, client: Client, conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    ids = write(db, 2000, client)
    rng = random.Random(os.environ.get("FORGEJOBS_TEST_SEED", "outbox"))
    kills = 0
    while db.rows() and kills < 12:
        before = len(waiting(conn))
        # kill once a random share of the jobs still to send has reached Redis: right after a batch's store,
        # while its DELETE and COMMIT may or may not have run
        # (every job may be in Redis already, its rows not yet deleted: then the target is all of them)
        target = min(len(ids), before + rng.randint(1, max(1, (len(ids) - before) // 4)))
        relay = start_cli(*db.relay_args("--batch", "20", "--interval", "0.01"))
        wait_for(
            lambda: len(waiting(conn)) >= target or relay.process.poll() is not None,  # noqa: B023
            60,
            "the relay to make progress",
            explain=lambda: f"{len(waiting(conn))} of {target} jobs in Redis, relay log:\n{relay.log()}",  # noqa: B023
        )
        relay.signal(signal.SIGKILL)
        relay.wait()
        kills += 1
    final = started(start_cli(*db.relay_args("--batch", "50", "--interval", "0.01")))
    wait_for(lambda: db.rows() == 0, 120, "the table to empty", explain=final.log)
    final.signal(signal.SIGTERM)
    final.wait()

    assert kills >= 2
    assert waiting(conn) == Counter(dict.fromkeys(ids, 1))
    assert len(list(conn.scan_iter("forgejobs:{fast}:job:*", count=1000))) == len(ids)


def test_two_relays_on_postgresql_share_the_rows_without_duplicates(
    pg: Database, client: Client, conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    relays = [started(start_cli(*pg.relay_args("--batch", "20", "--interval", "0.02"))) for _ in range(2)]
    ids = write(pg, 3000, client)
    wait_for(lambda: pg.rows() == 0, 120, "the table to empty")
    for relay in relays:
        relay.signal(signal.SIGTERM)
        relay.wait()

    assert waiting(conn) == Counter(dict.fromkeys(ids, 1))
    per_relay = [
        [(int(sent), int(dup)) for sent, dup in re.findall(r"relayed (\d+) \((\d+) already", r.log())] for r in relays
    ]
    assert sum(s for lines in per_relay for s, _ in lines) == 3000
    assert all(dup == 0 for lines in per_relay for _, dup in lines)  # SKIP LOCKED: no row read twice
    assert all(sum(s for s, _ in lines) > 0 for lines in per_relay)  # both took part


def test_the_relay_cli_once_and_status(
    db: Database, client: Client, conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    write(db, 3, client)
    with db.engine.begin() as c:
        c.execute(db.outbox.table.insert().values(id="row_unknown", name="gone.job", payload="{}", created_ms=1))
    once = start_cli(*db.relay_args("--once"))
    assert once.wait() == 0
    assert "relayed 3 job(s)" in once.log() and "failed row_unknown: no job type named 'gone.job'" in once.log()
    status_args = ["outbox", "status", "--database-url", db.url, "--table", db.outbox.table.name, "--json"]
    if db.schema:
        status_args += ["--schema", db.schema]
    status = start_cli(*status_args)
    assert status.wait() == 0
    report = json.loads(status.log().strip().splitlines()[-1])
    assert report["pending"] == 0 and [f["id"] for f in report["failed"]] == ["row_unknown"]
    assert len(waiting(conn)) == 3


def test_the_relay_cli_names_a_missing_table_and_an_unreachable_database(
    tmp_path: Path, start_cli: Callable[..., WorkerProcess]
) -> None:
    missing = start_cli("outbox", "relay", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert missing.wait() == 1
    assert "no outbox table forgejobs_outbox in sqlite:///" in missing.log()
    assert "forgejobs outbox create-table" in " ".join(missing.log().split())
    url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/x"
    unreachable = start_cli("outbox", "status", "--database-url", url)
    assert unreachable.wait() == 1
    text = " ".join(unreachable.log().split())
    assert "cannot reach the database postgresql+psycopg://nobody:***@127.0.0.1" in text and "secret" not in text
