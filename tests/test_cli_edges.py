"""The `forgejobs` command line at its edges: bad options named in one sentence, prompts answered no, jobs in
every state shown by `job` and `jobs`, schedules registered or run, `events --follow`, `metrics` without
prometheus-client, a taken port or a job package, JSON log lines, `demo` without a demo module.

Mostly in this process (click's CliRunner on a real Redis database); the commands that serve until
signalled run as `forgejobs` subprocesses, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from forgejobs import Client, Registry, Settings, Status
from forgejobs.backends.rqscheduler import RQSchedulerStore
from forgejobs.cli import cli
from forgejobs.keys import QueueKeys
from forgejobs.scheduling import LastRun
from forgejobs.worker import Worker
from tests.conftest import WorkerProcess
from tests.helpers import cli_env, free_port, run_cli, wait_for
from tests.samplejobs.basic import Doomed, Echo, Mark
from tests.samplejobs.limits import OrgTask

pytestmark = pytest.mark.redis

StartCli = Callable[..., WorkerProcess]
FAST = QueueKeys("forgejobs", "fast")
PERORG = QueueKeys("forgejobs", "perorg")
SCHEDULE = "echo-every-second"  # the sample specs' one schedule


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return cli_env(redis_url)


def answer(text: str, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """`forgejobs ARGS...` in this process, typing `text` at its prompt."""
    result = CliRunner().invoke(cli, list(args), env=env, input=text, catch_exceptions=False)
    return result.exit_code, result.output


def take(conn: redis.Redis, keys: QueueKeys, job_id: str, slot: str = "host.1.abcdef/fast/0/1") -> None:
    """Make a waiting job look taken by `slot` (as fetch.lua leaves it): off its wait list, in the active hash."""
    conn.lrem(keys.wait(5), 0, job_id)
    conn.hset(keys.active, job_id, f"{slot}|0")


def park(conn: redis.Redis, keys: QueueKeys, job_id: str, key: str) -> None:
    """Move a waiting job behind its full concurrency key, as fetch.lua parks it."""
    conn.lrem(keys.wait(5), 0, job_id)
    conn.rpush(f"{keys.ck_prefix}{key}:wait", job_id)
    conn.sadd(f"{keys.ck_prefix}parked", key)


# -- one-sentence errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "fast.echo", "--data", '{"text": "x"}', "--delay", "nan"], "--delay must be seconds (30) or a"),
        (["worker", "--concurrency", "0"], "error: --concurrency must be at least 1"),
        (["worker", "--processes", "--threads"], "error: give --processes or --threads, not both"),
        (["scheduler", "--interval", "0"], "error: --interval must be within (0, 60] seconds"),
        (["scheduler", "--interval", "61"], "error: --interval must be within (0, 60] seconds"),
        (["events", "--after", "yesterday"], "error: --after must be a stream id such as 1733011200000-0"),
        (["dead", "requeue"], "error: give one JOB_ID or --all"),
        (["dead", "requeue", "some-id", "--all"], "error: give one JOB_ID or --all"),
    ],
    ids=[
        "delay-nan",
        "concurrency-0",
        "processes-and-threads",
        "interval-0",
        "interval-61",
        "after-not-an-id",
        "requeue-nothing",
        "requeue-one-and-all",
    ],
)
def test_a_bad_option_is_refused_in_one_sentence_naming_it(
    env: dict[str, str], conn: redis.Redis, args: list[str], message: str
) -> None:
    code, out = run_cli(*args, env=env)
    assert code == 1 and message in out, out
    assert conn.keys("forgejobs:*") == []  # refused before anything was written


def test_the_job_group_s_usage_line_says_an_id_or_a_command() -> None:
    code, out = run_cli("job", "--help")
    assert code == 0
    assert " job [--json] ID | COMMAND [ARGS]...\n" in out.splitlines(keepends=True)[0]
    assert "cancel" in out and "show" in out


# -- prompts ----------------------------------------------------------------------------------------------


def test_obliterate_asks_first_and_no_keeps_the_queue(env: dict[str, str], client: Client) -> None:
    handle = Echo.enqueue(text="keep me")

    code, out = answer("n\n", "queue", "obliterate", "fast", env=env)

    assert code == 0 and "delete everything queue fast holds? [y/N]" in out and "obliterated" not in out
    assert handle.status() is Status.QUEUED
    code, out = answer("y\n", "queue", "obliterate", "fast", env=env)
    assert code == 0 and "obliterated fast: 1 job(s) deleted" in out
    assert handle.status() is Status.UNKNOWN


def test_purging_dead_letters_asks_first_with_their_count(
    env: dict[str, str], settings: Settings, client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    Doomed.enqueue(path=str(tmp_path / "doomed.jsonl"))
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)
    assert client.backend.dead_letters.count() == 1

    code, out = answer("n\n", "dead", "purge", env=env)

    assert code == 0 and "delete 1 dead letters? [y/N]" in out and "purged" not in out
    assert client.backend.dead_letters.count() == 1
    code, out = answer("y\n", "dead", "purge", env=env)
    assert code == 0 and "purged 1 dead letters" in out
    assert client.backend.dead_letters.count() == 0


# -- jobs in every state -----------------------------------------------------------------------------------


def test_job_shows_where_a_waiting_a_parked_a_running_and_a_delayed_job_is(
    env: dict[str, str], client: Client, conn: redis.Redis
) -> None:
    Echo.enqueue(text="ahead")
    waiting = Echo.enqueue(text="behind")
    parked = OrgTask.enqueue(org="acme", path="/nonexistent/never-run", seconds=0)
    park(conn, PERORG, parked.id, "acme")
    running = Echo.enqueue(text="running")
    take(conn, FAST, running.id)
    delayed = Echo.with_options(delay=3600).enqueue(text="later")

    shown = {h.id: run_cli("job", h.id, env=env) for h in (waiting, parked, running, delayed)}

    assert all(code == 0 for code, _ in shown.values()), shown
    assert "state:       waiting (1 ahead of it at priority 5)" in shown[waiting.id][1]
    assert "state:       parked behind concurrency key 'acme' (0 ahead of it)" in shown[parked.id][1]
    assert "state:       active on host.1.abcdef/fast/0/1" in shown[running.id][1]
    delayed_state = next(line for line in shown[delayed.id][1].splitlines() if line.startswith("state:"))
    assert delayed_state == "state:       delayed"  # no expiry: only finished jobs have one


def test_job_shows_the_result_of_a_succeeded_job_and_the_raw_record_of_an_unreadable_one(
    env: dict[str, str], settings: Settings, client: Client, conn: redis.Redis
) -> None:
    handle = Echo.enqueue(text="hello")
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)
    conn.hset(FAST.job("garbled"), mapping={"d": "{not json", "s": "queued"})
    conn.rpush(FAST.wait(5), "garbled")

    code, out = run_cli("job", handle.id, env=env)
    assert code == 0, out
    assert 'result:      {"text": "hello", "attempt": 1}' in out
    assert ", kept until " in out.splitlines()[2]  # the state line of a finished job says when it expires
    code, out = run_cli("job", "garbled", env=env)
    assert code == 0, out
    assert "raw:         {not json" in out and "? (unreadable record)" in out


def test_jobs_lists_progress_and_slot_of_running_jobs_parked_keys_and_errors(
    env: dict[str, str], settings: Settings, client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    Doomed.enqueue(path=str(tmp_path / "doomed.jsonl"))
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)
    running, quiet = Echo.enqueue(text="busy"), Echo.enqueue(text="quiet")
    take(conn, FAST, running.id, "host.1.abcdef/fast/0/1")
    take(conn, FAST, quiet.id, "host.1.abcdef/fast/1/1")
    client.backend.report_progress("fast", running.id, {"done": 3})  # type: ignore[attr-defined]
    parked = OrgTask.enqueue(org="acme", path="/nonexistent/never-run", seconds=0)
    park(conn, PERORG, parked.id, "acme")

    code, out = run_cli("jobs", env=env)

    assert code == 0, out
    rows = {line.split()[1]: line for line in out.splitlines() if line.count("│") > 3}
    assert 'progress {"done": 3}, on host.1.abcdef/fast/0/1' in rows[running.id]
    assert "progress" not in rows[quiet.id] and "on host.1.abcdef/fast/1/1" in rows[quiet.id]
    assert "concurrency key acme" in rows[parked.id]
    failed = next(line for line in rows.values() if "fast.doomed" in line)
    assert "Unrecoverable: the account was deleted" in failed


def test_jobs_of_a_name_not_declared_here_are_listed_with_a_note(env: dict[str, str], client: Client) -> None:
    Echo.enqueue(text="x")

    code, out = run_cli("jobs", "--name", "fast.ecko", env=env)

    assert code == 0, out
    assert "note: no job type named 'fast.ecko' is declared here" in out and "fast.echo" in out  # the suggestion
    assert "listing stored jobs of that name anyway" in out and "0 jobs" in out


def test_cancelling_a_running_job_is_asked_once_and_said_again_when_repeated(
    env: dict[str, str], client: Client, conn: redis.Redis
) -> None:
    handle = Echo.enqueue(text="long")
    take(conn, FAST, handle.id)

    code, out = run_cli("job", "cancel", handle.id, env=env)
    assert code == 0, out
    assert f"cancel requested for running job {handle.id} (fast.echo on fast)" in out
    code, out = run_cli("job", "cancel", handle.id, env=env)
    assert code == 0, out
    assert f"a cancel of running job {handle.id} (fast.echo on fast) was already requested" in out
    assert handle.status() is Status.RUNNING  # its worker ends it, not the command


# -- check, schedules ----------------------------------------------------------------------------------------


def test_check_shows_debounce_and_age_only_retention_and_no_workflow_table_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cli_edge_jobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reindex.py").write_text(
        "from datetime import timedelta\n"
        "from forgejobs import Context, Job\n\n\n"
        "class Reindex(Job, queue='search', debounce=timedelta(seconds=30), dedupe_key=('document',)):\n"
        "    document: str\n\n"
        "    def perform(self, ctx: Context) -> None:\n"
        "        return None\n"
    )
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "queues.yaml").write_text("queues:\n  search: {retention: {completed: {count: null, age: 2h}}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    # wide enough that no cell wraps, however long tmp_path is (COLUMNS sets the width of piped output)
    env = {"FORGEJOBS_JOBS": "cli_edge_jobs", "FORGEJOBS_SPECS": str(specs), "COLUMNS": "1000"}
    code, out = run_cli("check", env=env)

    assert code == 0, out
    row = next(line for line in out.splitlines() if "search.reindex" in line)
    assert "debounce 30s" in row
    queue_row = next(line for line in out.splitlines() if line.startswith("│ search "))
    assert "7200s" in queue_row and "newest" not in queue_row.split("│")[5]  # completed: by age only
    assert "workflow" not in out.lower() and out.rstrip().endswith("ok")


def test_schedules_lists_a_schedule_no_scheduler_registered_yet(env: dict[str, str]) -> None:
    code, out = run_cli("schedules", env=env)

    assert code == 0, out
    assert SCHEDULE in out and "never" in out
    assert "no scheduler has registered these yet: run `forgejobs scheduler`" in out


def test_schedules_show_the_registered_next_run_and_the_last_run_manual_or_skipped(
    env: dict[str, str], client: Client, registry: Registry, conn: redis.Redis
) -> None:
    store = RQSchedulerStore(conn, client.backend.keys)  # type: ignore[attr-defined]
    next_at = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    store.upsert(registry.schedules[SCHEDULE], next_at)
    code, out = run_cli("schedules", "run", SCHEDULE, env=env)
    assert code == 0, out
    job_id = out.split(" as ")[1].strip()

    code, out = run_cli("schedules", env=env)
    assert code == 0, out
    assert ": manual" in out and f"({job_id})" in out  # the last run's note and its job (the cell wraps)
    assert next_at.strftime("%Y-%m-%d %H:%M:%S") in out  # the registered next run, not one from now
    assert "no scheduler has registered" not in out
    code, out = run_cli("schedules", "--json", env=env)
    assert code == 0, out
    (entry,) = json.loads(out)
    assert entry["registered"] and entry["next_runs"][0] == next_at.isoformat()
    assert entry["last_run"]["job_id"] == job_id and entry["last_run"]["status"] == "queued"

    tick = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.record(SCHEDULE, LastRun(tick=tick, job_id=None, fired_at=tick, note="skipped: the last run is running"))
    code, out = run_cli("schedules", env=env)
    assert code == 0 and "skipped:" in out  # the table wraps its cells to the terminal (longer paths, more lines)
    code, out = run_cli("schedules", "--json", env=env)
    last_run = json.loads(out)[0]["last_run"]
    assert last_run["status"] is None and last_run["note"] == "skipped: the last run is running"
    assert last_run["tick"] == "2026-01-02T03:04:05Z"


# -- commands that run until signalled --------------------------------------------------------------------


def test_events_follow_prints_the_chosen_job_s_events_until_sigterm(client: Client, start_cli: StartCli) -> None:
    echo = Echo.enqueue(text="followed")
    mark = Mark.enqueue(path="/nonexistent/never-run", label="not shown")

    follower = start_cli("events", "--follow", "--job", "fast.echo", "--after", "0")
    wait_for(lambda: echo.id in follower.log(), timeout=20, what="the echo's event", explain=follower.log)
    follower.signal(signal.SIGTERM)

    assert follower.wait(timeout=20) == 0, follower.log()
    line = next(line for line in follower.log().splitlines() if echo.id in line)
    assert " enqueued " in line and " fast.echo " in line and line.endswith(" #1 priority=5")
    assert mark.id not in follower.log()


def test_metrics_without_the_job_package_serves_the_queues_found_in_redis(client: Client, start_cli: StartCli) -> None:
    Echo.enqueue(text="counted")
    port = free_port()

    server = start_cli("metrics", "--port", str(port), env={"FORGEJOBS_JOBS": "no_such_job_package_here"})
    wait_for(lambda: "serving metrics on" in server.log(), timeout=20, what="the metrics server", explain=server.log)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    server.signal(signal.SIGTERM)

    assert server.wait(timeout=20) == 0, server.log()
    assert "note: the job registry did not load (job package 'no_such_job_package_here'" in server.log()
    assert "serving the queues found in Redis" in server.log()
    assert 'queue="fast"' in body


def test_metrics_on_a_taken_port_names_the_port(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run_cli("metrics", "--port", str(port), env=env)
    assert code == 1
    assert f"error: --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use" in out


def test_metrics_without_prometheus_client_says_what_to_install(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed

    code, out = run_cli("metrics", env=env)

    assert code == 1
    assert "error: forgejobs metrics needs prometheus-client: pip install prometheus-client" in out


def test_log_format_json_writes_one_json_object_per_log_line(client: Client, start_cli: StartCli) -> None:
    Echo.enqueue(text="logged")

    worker = start_cli("--log-format", "json", "worker", "--queues", "fast", "--burst", "--horizon", "0")

    assert worker.wait(timeout=60) == 0, worker.log()
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert records, worker.log()
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("serving fast" in r["message"] for r in records)
    assert any(r.get("outcome") == "succeeded" for r in records)  # the job line carries its fields


# -- demo ----------------------------------------------------------------------------------------------------


def test_demo_without_a_demo_module_says_it_belongs_to_the_repository(env: dict[str, str]) -> None:
    code, out = run_cli("demo", env=env)
    assert code == 1
    assert "error: the job package 'tests.samplejobs' has no demo module (tests.samplejobs.demo)" in out
    assert "./dev demo" in out


def test_demo_whose_module_imports_something_missing_shows_that_import_error(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cli_edge_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "demo.py").write_text("import cli_edge_missing_dependency  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ModuleNotFoundError) as caught:
        run_cli("demo", env={**env, "FORGEJOBS_JOBS": "cli_edge_demo"})

    assert caught.value.name == "cli_edge_missing_dependency"


def test_an_error_longer_than_the_output_width_stays_one_line(redis_url: str) -> None:
    job_id = "a-job-id-nobody-enqueued-" * 10  # the error names it: over 200 characters
    code, out = run_cli("job", job_id, env=cli_env(redis_url))
    assert code == 1
    assert out.startswith("error: ") and job_id in out and out.count("\n") == 1, out


def test_piped_output_is_drawn_at_the_columns_asked_for_or_else_200(env: dict[str, str]) -> None:
    widths = {}
    for columns in ("60", "", "wide"):
        code, out = run_cli("info", env={**env, "COLUMNS": columns})
        assert code == 0, out
        widths[columns] = max(len(line) for line in out.splitlines() if line[:1] in "┏┃┡│└")  # the table's
    assert widths["60"] <= 60 < widths[""] <= 200  # the queue table is wider than 60 columns
    assert widths["wide"] == widths[""]  # not a number: the default
