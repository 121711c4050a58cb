"""Job events end to end: every transition in the stream, hooks in the worker's process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from forgejobs import Client, Status
from forgejobs.backends.redis import RedisBackend
from forgejobs.cli import cli
from tests.conftest import WorkerProcess
from tests.helpers import cli_env, wait_for
from tests.samplejobs.basic import Doomed, Echo, Flaky, Progressing

pytestmark = pytest.mark.redis


def kinds(client: Client, job_id: str) -> list[str]:
    assert isinstance(client.backend, RedisBackend)
    return [e.kind.value for e in client.backend.events.read(count=10_000) if e.job_id == job_id]


def test_every_transition_is_in_the_stream_with_attempts(
    client: Client, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    hook_file = tmp_path / "hooks.jsonl"
    worker = start_worker(
        "--queues",
        "fast",
        env={"FORGEJOBS_HOOKS": "tests.samplejobs.hooks:hooks", "FORGEJOBS_TEST_HOOK_FILE": str(hook_file)},
    )
    ok = Echo.enqueue(text="x")
    flaky = Flaky.enqueue(path=str(tmp_path / "f.jsonl"), failures=1)
    doomed = Doomed.enqueue(path=str(tmp_path / "d.jsonl"))
    progressing = Progressing.enqueue()
    ok.result(timeout=15)
    flaky.result(timeout=15)
    progressing.result(timeout=15)
    wait_for(lambda: doomed.status() is Status.FAILED, timeout=15, what="the doomed job")
    wait_for(lambda: "completed" in kinds(client, flaky.id), timeout=5, what="flaky's last event")

    assert kinds(client, ok.id) == ["enqueued", "started", "completed"]
    assert kinds(client, flaky.id) == ["enqueued", "started", "failed", "retrying", "started", "completed"]
    wait_for(lambda: kinds(client, doomed.id)[-1:] == ["dead_lettered"], timeout=5, what="dead_lettered")
    assert kinds(client, doomed.id) == ["enqueued", "started", "dead_lettered"]
    assert kinds(client, progressing.id) == ["enqueued", "started", "progress", "progress", "completed"]
    events = {e.kind.value: e for e in client.backend.events.read(count=10_000) if e.job_id == flaky.id}  # type: ignore[attr-defined]
    assert events["retrying"].data["next"] == 2 and events["completed"].attempt == 2
    # hooks ran in the worker's processes, without a Redis round trip of their own
    noted = [json.loads(line) for line in hook_file.read_text().splitlines()]
    assert {n["job_id"] for n in noted} == {ok.id, flaky.id, progressing.id}
    assert all(n["pid"] == worker.pid for n in noted)  # in the worker process: its slots are threads


def test_explicit_job_id_duplicates_are_reported(client: Client) -> None:
    first = Echo.with_options(job_id="once").enqueue(text="a")
    Echo.with_options(job_id="once").enqueue(text="b")
    assert kinds(client, first.id) == ["enqueued", "deduplicated"]


def test_events_command_prints_and_filters(client: Client, redis_url: str) -> None:
    Echo.enqueue(text="a")
    Flaky.enqueue(path="/dev/null", failures=0)
    env = cli_env(redis_url)
    out = CliRunner().invoke(cli, ["events", "--job", "fast.echo"], env=env).output
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "enqueued" in lines[0] and "fast.echo" in lines[0]
