"""`forgejobs outbox ...` run in this process (click's CliRunner): create-table, status in both formats, one
relay pass, and the one-line errors for what the command cannot use (no SQLAlchemy, a bad URL, a job registry
that does not load, a Redis that does not answer). Each test works on a SQLite file of its own."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from forgejobs.outbox import Outbox
from tests.helpers import cli_env, free_port, run_cli, wait_for

NO_REDIS = "redis://127.0.0.1:1/0"  # never reached by the commands that only read the database


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


def rows_of(url: str, table: str = "forgejobs_outbox") -> list[tuple[str, str | None]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            box = Outbox(table)
            return [(r.id, r.error) for r in conn.execute(sa.select(box.table).order_by(box.table.c.id))]
    finally:
        engine.dispose()


def insert(url: str, *values: dict[str, object], table: str = "forgejobs_outbox") -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for row in values:
                conn.execute(Outbox(table).table.insert().values(**row))
    finally:
        engine.dispose()


def test_create_table_makes_the_table_and_status_then_reports_it_empty(database: str) -> None:
    code, out = run_cli(
        "outbox", "create-table", "--database-url", database, "--table", "jobs_out", env=cli_env(NO_REDIS)
    )
    assert code == 0 and out == f"jobs_out ready in {database}\n"
    engine = sa.create_engine(database)
    assert sa.inspect(engine).has_table("jobs_out")
    engine.dispose()
    code, out = run_cli(
        "outbox", "create-table", "--database-url", database, "--table", "jobs_out", env=cli_env(NO_REDIS)
    )
    assert code == 0  # again: nothing to do, no error
    code, out = run_cli("outbox", "status", "--database-url", database, "--table", "jobs_out", env=cli_env(NO_REDIS))
    assert (code, out) == (0, "0 row(s) waiting in jobs_out; 0 failed\n")


def test_a_relay_pass_moves_the_rows_and_status_lists_the_failed_ones_with_their_reason(
    database: str, redis_url: str, conn: redis.Redis
) -> None:
    env = cli_env(redis_url)
    assert run_cli("outbox", "create-table", "--database-url", database, env=env)[0] == 0
    insert(
        database,
        {"id": "row_good", "name": "fast.echo", "payload": '{"text": "hi"}', "created_ms": 1},
        {"id": "row_unknown", "name": "gone.job", "payload": "{}", "created_ms": 2},
        {"id": "row_waiting", "name": "fast.echo", "payload": '{"text": "later"}', "created_ms": 3},
    )

    code, out = run_cli("outbox", "relay", "--once", "--batch", "2", "--database-url", database, env=env)

    assert code == 0
    assert f"relayed 1 job(s) from forgejobs_outbox of {database} (0 already in Redis, 1 failed)" in out
    assert "  failed row_unknown: no job type named 'gone.job'" in out
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [b"row_good"]
    code, out = run_cli("outbox", "status", "--database-url", database, env=env)
    assert code == 0
    first, failed, *rest = out.splitlines()
    assert first == "1 row(s) waiting in forgejobs_outbox; 1 failed" and rest == []
    row_id, name, day, time_of_day, *reason = failed.split()
    assert (row_id, name) == ("row_unknown", "gone.job") and len(day) == 10 and len(time_of_day) == 8
    assert " ".join(reason).startswith("no job type named 'gone.job'")
    code, out = run_cli("outbox", "status", "--database-url", database, "--json", env=env)
    report = json.loads(out)
    assert report["pending"] == 1 and [(f["id"], f["name"]) for f in report["failed"]] == [("row_unknown", "gone.job")]


def test_a_relay_pass_that_cannot_reach_redis_fails_in_one_line_and_keeps_the_rows(database: str) -> None:
    env = cli_env(f"redis://127.0.0.1:{free_port()}/0", FORGEJOBS_ENQUEUE_TIMEOUT="0.3")
    assert run_cli("outbox", "create-table", "--database-url", database, env=env)[0] == 0
    insert(database, {"id": "row_1", "name": "fast.echo", "payload": '{"text": "hi"}', "created_ms": 1})

    code, out = run_cli("outbox", "relay", "--once", "--database-url", database, env=env)

    assert code == 1
    assert out.startswith(f"error: relay pass on forgejobs_outbox of {database} failed: could not enqueue 1 job(s)")
    assert len(out.splitlines()) == 1
    assert rows_of(database) == [("row_1", None)]  # left for the next pass


def test_a_relay_whose_job_registry_does_not_load_says_why(database: str) -> None:
    env = cli_env(NO_REDIS, jobs="tests.no_such_job_package")
    assert run_cli("outbox", "create-table", "--database-url", database, env=env)[0] == 0
    code, out = run_cli("outbox", "relay", "--once", "--database-url", database, env=env)
    assert code == 1
    assert out.startswith("error: the job registry did not load (job package 'tests.no_such_job_package'")
    assert "cannot import job package 'tests.no_such_job_package'" in out


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("not a url", "Could not parse SQLAlchemy URL"),
        ("nosuchdb://host/db", "Can't load plugin: sqlalchemy.dialects:nosuchdb"),
        ("postgresql+nosuchdriver://host/db", "Can't load plugin: sqlalchemy.dialects:postgresql.nosuchdriver"),
    ],
)
@pytest.mark.parametrize("command", ["relay", "status", "create-table"])
def test_a_database_url_sqlalchemy_cannot_use_is_named_in_one_line(command: str, url: str, why: str) -> None:
    code, out = run_cli("outbox", command, "--database-url", url, env=cli_env(NO_REDIS))
    assert code == 1
    assert out.startswith(f"error: --database-url: {why}") and len(out.splitlines()) == 1


def test_a_database_url_whose_driver_is_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the driver were not installed
    code, out = run_cli("outbox", "status", "--database-url", "postgresql+psycopg://h/db", env=cli_env(NO_REDIS))
    assert code == 1
    assert out.startswith("error: --database-url: ") and "psycopg" in out


def test_without_sqlalchemy_the_outbox_commands_say_which_extra_to_install(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as if SQLAlchemy were not installed
    code, out = run_cli("outbox", "status", "--database-url", database, env=cli_env(NO_REDIS))
    assert code == 1
    assert out == ("error: the outbox needs SQLAlchemy (sqlalchemy is missing): pip install 'forgejobs[sqlalchemy]'\n")


@pytest.mark.parametrize("command", ["relay", "status"])
def test_a_missing_table_is_named_with_how_to_create_it(command: str, database: str) -> None:
    code, out = run_cli("outbox", command, "--database-url", database, "--table", "absent", env=cli_env(NO_REDIS))
    assert code == 1
    assert out == (
        f"error: no outbox table absent in {database}: create it with forgejobs outbox create-table "
        "(or forgejobs.outbox.create_table, or in your migrations)\n"
    )


@pytest.mark.parametrize("command", ["relay", "status"])
def test_an_unreachable_database_is_named_without_its_password(command: str) -> None:
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/db"
    code, out = run_cli("outbox", command, "--database-url", url, env=cli_env(NO_REDIS))
    assert code == 1
    assert out.startswith("error: cannot reach the database postgresql+psycopg://app:***@127.0.0.1:")
    assert "s3cret" not in out and len(out.splitlines()) == 1


# -- the relay that runs until stopped ----------------------------------------------------------------


def relay_until(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], done: Callable[[], object], sig: int
) -> tuple[int, str]:
    """Run `forgejobs outbox relay ARGS` here until `done()` holds, then deliver `sig` to the handler it installed
    (caught in place of the process's real handlers, which stay as they were)."""
    handlers: dict[int, Callable[..., object]] = {}
    monkeypatch.setattr(signal, "signal", lambda number, handler: handlers.__setitem__(number, handler))
    failures: list[BaseException] = []

    def stopper() -> None:
        try:
            wait_for(lambda: sig in handlers and done(), timeout=30, what="the relay to get there")
        except BaseException as exc:
            failures.append(exc)
        finally:
            wait_for(lambda: sig in handlers, timeout=30, what="the relay's signal handlers")
            handlers[sig](sig, None)

    thread = threading.Thread(target=stopper)
    thread.start()
    result = run_cli("outbox", "relay", *args, env=env)
    thread.join(30)
    assert set(handlers) == {signal.SIGTERM, signal.SIGINT}
    if failures:
        raise failures[0]
    return result


def test_the_relay_moves_rows_until_sigterm_and_says_where_it_relays(
    database: str, redis_url: str, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cli_env(redis_url)
    assert run_cli("outbox", "create-table", "--database-url", database, env=env)[0] == 0
    insert(database, {"id": "row_1", "name": "fast.echo", "payload": '{"text": "hi"}', "created_ms": 1})

    code, out = relay_until(
        monkeypatch,
        ["--database-url", database, "--interval", "0.05", "--batch", "10"],
        env,
        lambda: rows_of(database) == [],
        signal.SIGTERM,
    )

    assert code == 0
    assert out == f"relaying from forgejobs_outbox of {database} to Redis at {redis_url}, 10 rows per pass\n"
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [b"row_1"]


def test_the_relays_first_line_hides_the_redis_password_and_sigint_stops_it(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    env = cli_env(f"redis://app:s3cret@127.0.0.1:{port}/2")  # never reached: the table stays empty
    assert run_cli("outbox", "create-table", "--database-url", database, env=env)[0] == 0

    code, out = relay_until(
        monkeypatch, ["--database-url", database, "--interval", "0.05"], env, lambda: True, signal.SIGINT
    )

    assert code == 0
    assert out.startswith(f"relaying from forgejobs_outbox of {database} to Redis at ")
    assert out.endswith(f" to Redis at redis://app:***@127.0.0.1:{port}/2, 100 rows per pass\n")
