"""The `forgejobs` command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from forgejobs import Client, DeadLetter, Reason, Status
from tests.helpers import ROOT, SAMPLE_JOBS, cli_env, run_cli

pytestmark = pytest.mark.redis


def test_check_prints_the_effective_table_of_the_project() -> None:
    code, out = run_cli("check", env={"FORGEJOBS_JOBS": "jobs", "FORGEJOBS_SPECS": str(ROOT / "specs")})
    assert code == 0, out
    assert "email.welcome-email" in out and "webhooks.deliver-webhook" in out
    # the spec's override of the class default (3 attempts) is what check shows
    row = next(line for line in out.splitlines() if "email.welcome-email" in line)
    assert "│ 4 " in row


def test_check_fails_naming_the_spec_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "queues.yaml").write_text("queues:\n  fast: {concurency: 2}\n")
    code, out = run_cli("check", env={"FORGEJOBS_JOBS": SAMPLE_JOBS, "FORGEJOBS_SPECS": str(tmp_path)})
    assert code == 1
    assert "queues.yaml" in out and "queues.fast.concurency" in out and "unknown key" in out


def test_check_fails_when_a_job_is_on_an_undeclared_queue(tmp_path: Path) -> None:
    (tmp_path / "queues.yaml").write_text("queues:\n  fast: {concurrency: 1}\n")  # no 'slow'
    code, out = run_cli("check", env={"FORGEJOBS_JOBS": SAMPLE_JOBS, "FORGEJOBS_SPECS": str(tmp_path)})
    assert code == 1 and "'slow'" in out and "no spec declares" in out


def test_enqueue_validates_and_stores_a_job(redis_url: str, client: Client) -> None:
    code, out = run_cli(
        "enqueue", "fast.echo", "--data", '{"text": "from the cli"}', "--priority", "2", env=cli_env(redis_url)
    )
    assert code == 0, out
    job_id = out.split(" as ")[1].split()[0]
    assert client.backend.state(job_id).status is Status.QUEUED
    assert redis.Redis.from_url(redis_url).llen("forgejobs:{fast}:wait:p02") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fast.echo", "--data", "{nope"], "not JSON"),
        (["fast.echo", "--data", '{"text": 5}'], "text"),
        (["fast.nothing", "--data", "{}"], "no job type named 'fast.nothing'"),
        (["fast.echo", "--data", '{"text": "x"}', "--delay", "soon"], "duration"),
    ],
)
def test_enqueue_refuses_bad_input_with_a_clear_error(redis_url: str, args: list[str], message: str) -> None:
    code, out = run_cli("enqueue", *args, env=cli_env(redis_url))
    assert code == 1 and message in out
    assert redis.Redis.from_url(redis_url).dbsize() == 1  # only the test's claim key


def test_info_counts_per_queue(redis_url: str, client: Client) -> None:
    from tests.samplejobs.basic import Echo

    Echo.enqueue_many([{"text": str(i)} for i in range(3)])
    Echo.with_options(delay=60).enqueue(text="later")
    code, out = run_cli("info", env=cli_env(redis_url))
    assert code == 0, out
    fast = next(line for line in out.splitlines() if "fast" in line)
    assert [cell.strip() for cell in fast.split("│")[1:-1]] == ["fast", "3", "1", "0", "0", "0", "active"]


def test_dead_letters_from_the_command_line(redis_url: str, client: Client) -> None:
    record = DeadLetter(
        id="dead-1", name="fast.echo", queue="fast", reason=Reason.EXHAUSTED, error="boom", payload={"text": "again"}
    )
    client.backend.dead_letters.add(record)
    env = cli_env(redis_url)
    code, out = run_cli("dead", "list", env=env)
    assert code == 0 and "dead-1" in out and "exhausted" in out
    code, out = run_cli("dead", "show", "dead-1", env=env)
    assert code == 0 and json.loads(out)["payload"] == {"text": "again"}
    code, out = run_cli("dead", "requeue", "dead-1", env=env)
    assert code == 0 and "requeued 1" in out
    assert client.backend.state("dead-1").status is Status.QUEUED
    code, out = run_cli("dead", "show", "dead-1", env=env)
    assert code == 1 and "no dead letter" in out
    client.backend.dead_letters.add(record.model_copy(update={"id": "dead-2"}))
    code, out = run_cli("dead", "purge", "--yes", env=env)
    assert code == 0 and "purged 1" in out


def test_worker_burst_drains_and_exits(redis_url: str, client: Client) -> None:
    from tests.samplejobs.basic import Echo

    handles = Echo.enqueue_many([{"text": str(i)} for i in range(10)])
    env = {**os.environ, **cli_env(redis_url)}
    done = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "worker", "--queues", "fast", "--burst", "--horizon", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded 10" in done.stdout
    assert all(h.status() is Status.SUCCEEDED for h in handles)


def test_worker_refuses_an_unknown_queue(redis_url: str) -> None:
    code, out = run_cli("worker", "--queues", "nope", env=cli_env(redis_url))
    assert code == 1 and "unknown queue(s): nope" in out


def test_cli_errors_name_the_field_without_pydantic_internals(redis_url: str) -> None:
    code, out = run_cli("enqueue", "fast.echo", "--data", "{}", env=cli_env(redis_url))
    assert code == 1 and "--data does not fit fast.echo: field text: Field required" in out
    assert "[type=" not in out
