#!/usr/bin/env python
"""The transactional outbox and the after-commit hook against a direct enqueue, in one run, on PostgreSQL.

    python bench/outbox.py [--jobs 10000] [--batch 100] [--repeat 3] [--database-url URL] [--redis-url URL]

Rows, each timed over `--jobs` `NoopJob`s (bench/benchjobs) and reported as the median of `--repeat` runs:

- direct enqueue: `NoopJob.enqueue(n=i)` one after another, no database (the baseline);
- relay: rows already in the outbox table moved to Redis by `OutboxRelay.run_once(batch)` passes until
  the table is empty (each pass: SELECT ... FOR UPDATE SKIP LOCKED, one pipelined store, DELETE, COMMIT);
- outbox write: `outbox.enqueue(conn, ...)` in transactions of `--batch` rows (validation, envelope, INSERT);
- one row and one job per PostgreSQL transaction, two ways: the job enqueued after the commit, or written as
  an outbox row in the transaction (what the outbox adds to a request that writes one row);
- the after-commit hook alone: one job per transaction on an in-memory SQLite database (so the database
  costs little), enqueued after the commit by hand or held by `forgejobs.sqlalchemy.begin` and sent after
  the commit; the difference is the hook's cost per enqueue.

Safety: the Redis database in `--redis-url` (default redis://127.0.0.1:6379/13) must be empty at start;
everything in it is then the bench's, and FLUSHDB of that one database (never FLUSHALL) clears it between
runs and at the end. The database work happens in a new schema (`fj_bench_<random>`), dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchjobs import NoopJob, registry  # noqa: E402

from forgejobs import Client  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.client import use_client  # noqa: E402
from forgejobs.outbox import Outbox, OutboxRelay  # noqa: E402
from forgejobs.settings import Settings  # noqa: E402
from forgejobs.sqlalchemy import begin  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Bench:
    def __init__(self, engine: sa.Engine, client: Client, conn: redis.Redis, batch: int) -> None:
        self.engine, self.client, self.conn, self.batch = engine, client, conn, batch
        self.outbox = Outbox("bench_outbox")
        self.outbox.create_table(engine)
        self.notes = sa.Table(
            "bench_notes", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)
        )
        self.notes.create(engine, checkfirst=True)
        self.memory = sa.create_engine("sqlite://")  # one connection, kept: the same in-memory database
        self.notes.create(self.memory)

    def reset(self) -> None:
        self.conn.flushdb()  # the bench's own database: checked empty at start
        with self.engine.begin() as conn:
            conn.execute(self.outbox.table.delete())
            conn.execute(self.notes.delete())
        with self.memory.begin() as conn:
            conn.execute(self.notes.delete())

    def fill_outbox(self, jobs: int) -> None:
        with self.engine.begin() as conn:
            for i in range(jobs):
                self.outbox.enqueue(conn, NoopJob(n=i), client=self.client)

    # -- the measured things -----------------------------------------------------------------------

    def direct(self, jobs: int) -> float:
        started = time.perf_counter()
        for i in range(jobs):
            NoopJob.enqueue(n=i)
        return time.perf_counter() - started

    def relay(self, jobs: int) -> float:
        self.fill_outbox(jobs)  # not timed
        relay = OutboxRelay(self.engine, self.client, self.outbox)
        started = time.perf_counter()
        while relay.run_once(self.batch).read:
            pass
        elapsed = time.perf_counter() - started
        assert self.conn.llen("forgejobs:{bench}:wait:p05") == jobs
        return elapsed

    def outbox_write(self, jobs: int) -> float:
        started = time.perf_counter()
        for start in range(0, jobs, self.batch):
            with self.engine.begin() as conn:
                for i in range(start, min(jobs, start + self.batch)):
                    self.outbox.enqueue(conn, NoopJob(n=i), client=self.client)
        return time.perf_counter() - started

    def per_transaction(self, jobs: int, how: str, engine: sa.Engine | None = None) -> float:
        engine = engine or self.engine
        insert = self.notes.insert().values()
        started = time.perf_counter()
        for i in range(jobs):
            if how == "direct":
                with engine.begin() as conn:
                    conn.execute(insert)
                NoopJob.enqueue(n=i)
            elif how == "held":
                with begin(engine) as conn:
                    conn.execute(insert)
                    NoopJob.enqueue(n=i)
            else:
                with self.engine.begin() as conn:
                    conn.execute(insert)
                    self.outbox.enqueue(conn, NoopJob(n=i), client=self.client)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    conn = redis.Redis.from_url(args.redis_url)
    if conn.dbsize():
        print(f"refusing to run: {args.redis_url} is not empty (the bench flushes the database it uses)")
        return 2
    admin = sa.create_engine(args.database_url)
    schema = f"fj_bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = sa.create_engine(args.database_url, connect_args={"options": f"-csearch_path={schema}"})
    client = Client(RedisBackend.from_settings(Settings(redis_url=args.redis_url)), registry())
    try:
        with use_client(client):
            return run(Bench(engine, client, conn, args.batch), args)
    finally:
        conn.flushdb()
        engine.dispose()
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        client.close()


def run(bench: Bench, args: argparse.Namespace) -> int:
    jobs = args.jobs
    memory = bench.memory
    rows: list[tuple[str, Callable[[], float]]] = [
        ("direct enqueue, one by one (no database)", lambda: bench.direct(jobs)),
        (f"relay: outbox rows to Redis, batches of {args.batch}", lambda: bench.relay(jobs)),
        (f"outbox write: outbox.enqueue, {args.batch} rows per transaction", lambda: bench.outbox_write(jobs)),
        (
            "PostgreSQL, 1 row + 1 job per transaction: enqueue after commit",
            lambda: bench.per_transaction(jobs, "direct"),
        ),
        ("PostgreSQL, 1 row + 1 job per transaction: outbox row", lambda: bench.per_transaction(jobs, "outbox")),
        (
            "SQLite memory, 1 row + 1 job per tx: enqueue after commit",
            lambda: bench.per_transaction(jobs, "direct", memory),
        ),
        ("SQLite memory, 1 row + 1 job per tx: held by the hook", lambda: bench.per_transaction(jobs, "held", memory)),
    ]
    bench.reset()
    results: dict[str, float] = {}
    for label, measure in rows:
        times = []
        for _ in range(args.repeat):
            bench.reset()
            times.append(measure())
        results[label] = statistics.median(times)
    baseline = jobs / results[rows[0][0]]
    print(f"{jobs} jobs per row, median of {args.repeat}; PostgreSQL {bench.engine.url.host}, Redis {args.redis_url}")
    print(f"{'':66} {'jobs/s':>9} {'µs/job':>8} {'vs direct':>9}")
    for label, _ in rows:
        rate = jobs / results[label]
        print(f"{label:66} {rate:9.0f} {1e6 / rate:8.1f} {rate / baseline:9.2f}")
    held = results[rows[6][0]] - results[rows[5][0]]
    print(f"after-commit hook cost per enqueue (held - after the commit): {held / jobs * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
