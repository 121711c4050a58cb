"""`forgejobs job`, `jobs`, `schema`, the `--json` outputs, and errors that name the option at fault."""

from __future__ import annotations

import json

import pytest
import redis

from forgejobs import Client, DeadLetter, Reason, Settings
from forgejobs.worker import Worker
from tests.helpers import cli_env, run_cli
from tests.samplejobs.basic import Doomed, Echo

pytestmark = pytest.mark.redis


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return cli_env(redis_url)


def test_job_shows_everything_kept_and_json_for_scripts(
    env: dict[str, str], settings: Settings, client: Client, conn: redis.Redis, tmp_path: str
) -> None:
    doomed = Doomed.enqueue(path=f"{tmp_path}/d.jsonl")
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)

    code, out = run_cli("job", doomed.id, env=env)

    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"{doomed.id}: failed"
    assert "fast.doomed on queue fast" in out and "attempt:     1 of 5" in out
    assert f'payload:     {{"path": "{tmp_path}/d.jsonl"}}' in out
    assert "error:       Unrecoverable: the account was deleted" in out
    assert "dead letter: unrecoverable, died " in out
    assert 'raise Unrecoverable("the account was deleted")' in out  # the traceback
    for args in (["job", doomed.id, "--json"], ["job", "--json", doomed.id], ["job", "show", "--json", doomed.id]):
        code, out = run_cli(*args, env=env)
        assert code == 0, out
        data = json.loads(out)
        assert data["id"] == doomed.id and data["status"] == "failed" and data["state"] == "failed"
        assert data["dead_letter"]["reason"] == "unrecoverable" and data["declared"]["attempts"] == 5


def test_an_unknown_job_id_exits_1(env: dict[str, str]) -> None:
    code, out = run_cli("job", "nope", env=env)
    assert code == 1 and "error: no job with id 'nope'" in out
    code, out = run_cli("job", "nope", "--json", env=env)
    assert code == 1 and "no job with id 'nope'" in out


def test_jobs_lists_by_state_queue_and_name(env: dict[str, str], client: Client) -> None:
    first = Echo.enqueue(text="a")
    urgent = Echo.with_options(priority=1).enqueue(text="b")
    later = Echo.with_options(delay=3600).enqueue(text="c")

    code, out = run_cli("jobs", "--queue", "fast", "--state", "waiting", env=env)
    assert code == 0, out
    rows = [line for line in out.splitlines() if "fast.echo" in line]
    assert [r.split("│")[1].strip() for r in rows] == [urgent.id, first.id]  # the order workers take them
    assert [r.split("│")[4].strip() for r in rows] == ["waiting", "waiting"]

    code, out = run_cli("jobs", "--json", env=env)
    assert code == 0, out
    listed = {j["id"]: j for j in json.loads(out)}
    assert set(listed) == {first.id, urgent.id, later.id}
    assert listed[later.id]["state"] == "delayed" and listed[later.id]["due_at"] is not None

    code, out = run_cli("jobs", "--name", "fast.mark", "--json", env=env)
    assert code == 0 and json.loads(out) == []
    code, out = run_cli("jobs", "--limit", "1", env=env)
    assert code == 0 and "(the first 1: raise --limit for more)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "wating"], "--state: unknown state 'wating' (did you mean 'waiting'?); valid states: active,"),
        (["--queue", "fats"], "no queue named 'fats' (did you mean 'fast'?); declared: chaos, fast,"),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_jobs_refuses_unknown_names(env: dict[str, str], args: list[str], message: str) -> None:
    code, out = run_cli("jobs", *args, env=env)
    assert code in (1, 2) and message in out


def test_json_output_of_info_dead_list_and_schedules(env: dict[str, str], client: Client) -> None:
    Echo.enqueue(text="x")
    client.backend.dead_letters.add(
        DeadLetter(id="dead-1", name="fast.echo", queue="fast", reason=Reason.EXHAUSTED, error="boom")
    )
    code, out = run_cli("info", "--json", env=env)
    assert code == 0, out
    fast = next(row for row in json.loads(out) if row["queue"] == "fast")
    assert fast == {
        "queue": "fast",
        "waiting": 1,
        "scheduled": 0,
        "running": 0,
        "finished": 0,
        "dead": 1,
        "state": "active",
    }

    code, out = run_cli("dead", "list", "--json", env=env)
    assert code == 0, out
    assert [(r["id"], r["reason"], r["error"]) for r in json.loads(out)] == [("dead-1", "exhausted", "boom")]

    code, out = run_cli("schedules", "--json", env=env)
    assert code == 0, out
    (schedule,) = json.loads(out)
    assert schedule["name"] == "echo-every-second" and schedule["every"] == 1.0 and schedule["job"] == "fast.echo"
    assert len(schedule["next_runs"]) == 3 and schedule["registered"] is False and schedule["last_run"] is None


def test_schema_of_one_job_and_of_all(env: dict[str, str]) -> None:
    code, out = run_cli("schema", "fast.echo", env=env)
    assert code == 0, out
    echo = json.loads(out)
    assert echo["payload"]["properties"]["text"]["type"] == "string" and echo["payload"]["required"] == ["text"]
    assert echo["result"]["title"] == "EchoResult" and set(echo["result"]["properties"]) == {"text", "attempt"}

    code, out = run_cli("schema", env=env)
    assert code == 0, out
    every = json.loads(out)
    assert every["fast.echo"] == echo
    assert every["fast.mark"]["result"] is None  # perform returns None: no result to describe

    code, out = run_cli("schema", "fast.ecoh", env=env)
    assert code == 1 and "no job type named 'fast.ecoh' (did you mean 'fast.echo'?)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delay", "soon"], "error: --delay: cannot read 'soon' as a duration; write e.g. '30s'"),
        (["--delay", "-5"], "error: --delay must not be negative, not -5"),
        (["--job-id", "a b"], "error: --job-id must be 1 to 128 letters, digits, '_' or '-', not 'a b'"),
        (["--data", "[1]"], "error: --data must be a JSON object ({...}), not a JSON list"),
        (["--data", "{}"], "error: --data does not fit fast.echo: field text: Field required"),
        (["--data", '{"text": 5}'], "error: --data does not fit fast.echo: field text: Input should be a valid string"),
        (["--priority", "11"], "Invalid value for '--priority': 11 is not in the range 1<=x<=10"),
    ],
)
def test_enqueue_errors_name_the_option_without_pydantic_internals(
    env: dict[str, str], conn: redis.Redis, args: list[str], message: str
) -> None:
    full = ["--data", '{"text": "x"}', *args] if "--data" not in args else args
    code, out = run_cli("enqueue", "fast.echo", *full, env=env)
    assert code in (1, 2) and message in out, out
    assert "validation error" not in out and "[type=" not in out and "errors.pydantic.dev" not in out
    assert conn.dbsize() == 1  # only the test's claim key: nothing was enqueued


def test_a_bare_number_of_seconds_is_a_delay(env: dict[str, str], client: Client) -> None:
    code, out = run_cli("enqueue", "fast.echo", "--data", '{"text": "x"}', "--delay", "30", env=env)
    assert code == 0 and "(scheduled)" in out, out


def test_a_bad_setting_is_named_as_its_environment_variable(env: dict[str, str]) -> None:
    code, out = run_cli("info", env={**env, "FORGEJOBS_STALL_TIMEOUT": "1"})
    assert code == 1
    assert "error: FORGEJOBS_STALL_TIMEOUT: Input should be greater than or equal to 2 (got '1')" in out


def test_an_unreachable_redis_is_one_sentence(env: dict[str, str]) -> None:
    code, out = run_cli("jobs", env={**env, "FORGEJOBS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert code == 1 and out.startswith("error: cannot reach Redis: ") and "127.0.0.1:1" in out
