"""Behaviour the rest of the suite left unexercised, one test per gap named in docs/coverage-gaps.md: refused
arguments and class keywords, registry and import errors, masking and logging edge cases, unreadable records
and unknown ids on Redis, batches and chunks past their limits, async handles, and the fake queue's extras."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import pytest
import redis
from pydantic import BaseModel, Field

from forgejobs import Client, Context, Job, Registry, RetryLater, Settings, Status, Unrecoverable
from forgejobs.aio import AsyncClient, async_connection
from forgejobs.backends.fake import FakeBackend, FakeClock
from forgejobs.backends.redis import BATCH, RedisBackend, RedisDeadLetters, describe
from forgejobs.backends.rqscheduler import repeat_placeholder
from forgejobs.deadletter import DeadLetter, Reason
from forgejobs.errors import (
    BackendError,
    ForgeJobsError,
    OptionsError,
    RegistryError,
    SpecError,
    UnknownJob,
    error_fields,
)
from forgejobs.events import Event, EventKind, EventStream, Hooks, MemoryEventStream
from forgejobs.handle import JobHandle
from forgejobs.inspection import Inspector, State, declared_options
from forgejobs.keys import Keys
from forgejobs.logs import MASK, JsonFormatter, Secret, configure_logging, mask_payload, mask_value, secret_values
from forgejobs.outbox import Outbox
from forgejobs.registry import discover, source_of
from forgejobs.runtime.worker import slots_per_queue
from forgejobs.specs import QueueSpec, Specs, load_specs
from forgejobs.sqlalchemy import enqueue_after_commit
from forgejobs.testing import FakeQueue
from forgejobs.workflows import NoSuchRun, Workflow, WorkflowError, WorkflowRun, workflow_run
from forgejobs.workflows.define import class_source
from forgejobs.workflows.run import engine_for
from tests.samplejobs.basic import CallEndpoint, Doomed, Echo


def _job_class(**keywords: object) -> type[Job]:
    return type("Refused", (Job,), {"__annotations__": {"ref": str}, "__module__": __name__}, **keywords)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"bogus": 1}, "Refused: unknown option(s) bogus; valid options are abstract, attempts,"),
        ({"_private": 1}, "Refused: unknown option(s) _private; valid options are abstract, attempts,"),
        ({"every": "soon"}, "Refused: option every: Value error, cannot read 'soon' as a duration"),
        ({"unique_for": 10, "debounce": 5}, "Refused: give unique_for or debounce, not both"),
        ({"rate_limit_key": "ref"}, "Refused: rate_limit_key needs a rate_limit"),
    ],
)
def test_job_class_keywords_that_cannot_work_are_refused_at_class_definition(
    keywords: dict[str, object], message: str
) -> None:
    with pytest.raises(OptionsError) as refused:
        _job_class(**keywords)
    assert str(refused.value).startswith(message)


def test_a_boolean_is_not_a_duration() -> None:
    with pytest.raises(OptionsError, match="a duration is a number of seconds or text like '30s', not a boolean"):
        _job_class(timeout=True)


@pytest.mark.parametrize("delay", [-1, timedelta(seconds=-0.5), math.nan])
def test_retry_later_refuses_a_negative_or_nan_delay(delay: float | timedelta) -> None:
    with pytest.raises(ValueError, match="RetryLater delay must be >= 0"):
        RetryLater(delay)


@pytest.mark.parametrize("block_ms", [0, -5])
def test_follow_refuses_a_block_time_that_is_not_positive(block_ms: int) -> None:
    with pytest.raises(ValueError, match=f"block_ms must be positive so that stop is noticed, got {block_ms}"):
        MemoryEventStream().follow(after="0-0", block_ms=block_ms)


def test_bound_enqueue_refuses_an_instance_and_fields_together(client: Client) -> None:
    with pytest.raises(TypeError, match="pass either a job instance or its fields, not both"):
        Echo.with_options(client=client).enqueue(Echo(text="a"), text="b")
    assert client.backend.counts(["fast"])[0].waiting == 0


def test_outbox_refuses_what_is_not_a_job(client: Client) -> None:
    with pytest.raises(TypeError, match="expected a Job instance or Job class, got dict"):
        Outbox("coverage_gaps_outbox").row({"text": "a"}, client=client)  # type: ignore[arg-type]


def test_enqueue_after_commit_refuses_what_is_not_a_session_or_connection() -> None:
    with (
        pytest.raises(
            TypeError, match="takes a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, not str"
        ),
        enqueue_after_commit("postgresql://x"),  # type: ignore[arg-type]
    ):
        pass


def test_inspector_jobs_refuses_a_limit_below_one(client: Client) -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        Inspector(client.backend, client.registry).jobs(limit=0)


@pytest.mark.parametrize("concurrency", [0, -1])
def test_a_concurrency_below_one_is_refused(registry: Registry, concurrency: int) -> None:
    with pytest.raises(ForgeJobsError, match="concurrency must be at least 1"):
        slots_per_queue(registry, None, concurrency)


def test_a_specs_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "queues.yaml"
    target.write_text("queues: {}\n")
    with pytest.raises(SpecError, match=f"{target}: specs path is not a directory"):
        load_specs(target)


def test_a_workflow_without_an_input_model_is_refused() -> None:
    with pytest.raises(WorkflowError, match="NoInput: needs input=<a Pydantic model> in its class keywords"):

        class NoInput(Workflow):
            pass


def test_dead_letters_beyond_the_limit_drop_the_oldest(conn: redis.Redis, settings: Settings) -> None:
    letters = RedisDeadLetters(conn, Keys(settings.key_prefix), limit=2)
    for n in range(3):
        letters.add(
            DeadLetter(
                id=f"dead-{n}", queue="fast", reason=Reason.EXHAUSTED, error=f"boom {n}", died_at=f"2026-12-01T0{n}:00Z"
            )
        )
    assert letters.count() == 2
    assert [letter.id for letter in letters.recent()] == ["dead-2", "dead-1"]
    assert letters.get("dead-0") is None  # its record went with its index entry


def test_enqueue_many_of_more_than_one_batch_stores_every_job(client: Client) -> None:
    handles = Echo.with_options(client=client).enqueue_many([{"text": str(n)} for n in range(BATCH + 3)])
    assert len({handle.id for handle in handles}) == BATCH + 3
    assert client.backend.counts(["fast"])[0].waiting == BATCH + 3
    assert isinstance(client.backend, RedisBackend)
    assert client.backend.state(handles[-1].id).status.value == "queued"


class Named(Job, queue="fast", name="coverage.same"):
    n: int

    def perform(self, ctx: Context[None]) -> None:
        return None


class NamedTwin(Job, queue="fast", name="coverage.same"):
    n: int

    def perform(self, ctx: Context[None]) -> None:
        return None


FAST = Specs(queues={"fast": QueueSpec()})


@pytest.mark.parametrize("strict", [True, False])
def test_ensure_refuses_a_class_whose_name_another_class_holds(strict: bool) -> None:
    registry = Registry([Named], FAST, strict=strict)
    with pytest.raises(RegistryError, match="job name 'coverage.same' belongs to Named"):
        registry.ensure(NamedTwin)


def test_a_strict_registry_refuses_an_unregistered_class() -> None:
    with pytest.raises(UnknownJob, match=r"Echo \(fast.echo\) is not registered: is its module inside the job package"):
        Registry([Named], FAST).ensure(Echo)


def test_a_class_registered_twice_is_registered_once() -> None:
    assert [entry.job_type for entry in Registry([Named, Named], FAST)] == [Named]


def test_the_fake_clock_does_not_go_backwards() -> None:
    clock = FakeClock()
    before = clock.now()
    with pytest.raises(ValueError, match="the fake clock does not go backwards"):
        clock.advance(timedelta(seconds=-1))
    assert clock.now() == before


def test_the_fake_backend_counts_jobs_per_queue() -> None:
    fake = Client(FakeBackend(), Registry([Echo], FAST))
    Echo.with_options(client=fake).enqueue_many([{"text": "a"}, {"text": "b"}])
    Echo.with_options(client=fake, delay=60).enqueue(text="later")
    fast, other = fake.backend.counts(["fast", "other"])
    assert (fast.queue, fast.waiting, fast.scheduled, fast.running, fast.finished, fast.failed) == (
        "fast",
        2,
        1,
        0,
        0,
        0,
    )
    assert (other.queue, other.waiting, other.scheduled) == ("other", 0, 0)


def test_declared_options_show_a_rate_limit() -> None:
    assert declared_options(CallEndpoint.__forgejobs_options__)["rate_limit"] == "2/1s"


def test_an_inspector_without_a_registry_needs_a_queue(client: Client) -> None:
    with pytest.raises(ForgeJobsError, match="no queue to look in: give a queue, or an Inspector with a registry"):
        Inspector(client.backend).jobs()


def test_masking_that_would_break_a_json_value_hides_all_of_it() -> None:
    assert mask_value([1, 2], ["1, 2"]) == MASK
    assert mask_value({"note": "say hunter2"}, ["hunter2"]) == {"note": f"say {MASK}"}


def test_an_unknown_log_format_is_refused() -> None:
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(ValueError, match="log format must be 'text' or 'json', not 'xml'"):
        configure_logging("xml")  # type: ignore[arg-type]
    assert logging.getLogger().handlers == handlers


def test_a_json_log_line_carries_the_exception() -> None:
    try:
        raise KeyError("lost")
    except KeyError:
        record = logging.getLogger("coverage").makeRecord(
            "coverage", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed"
    assert line["exception"].startswith("Traceback") and "KeyError: 'lost'" in line["exception"]


@pytest.mark.parametrize(
    ("shortcut", "kind"),
    [
        ("on_enqueued", EventKind.ENQUEUED),
        ("on_started", EventKind.STARTED),
        ("on_progress", EventKind.PROGRESS),
        ("on_retrying", EventKind.RETRYING),
        ("on_stalled", EventKind.STALLED),
        ("on_deduplicated", EventKind.DEDUPLICATED),
        ("on_aborted", EventKind.ABORTED),
        ("on_cancelled", EventKind.CANCELLED),
    ],
)
def test_each_hook_shortcut_hears_its_own_kind_only(shortcut: str, kind: EventKind) -> None:
    hooks = Hooks()
    heard: list[EventKind] = []
    getattr(hooks, shortcut)(lambda event: heard.append(event.kind))
    for each in (EventKind.COMPLETED, kind):
        hooks.emit(Event(kind=each, job_id="j", name="fast.echo", queue="fast"))
    assert heard == [kind]


def test_the_memory_event_stream_counts_what_it_holds() -> None:
    stream = MemoryEventStream()
    stream.append_many(
        [Event(kind=EventKind.ENQUEUED, job_id=str(n), name="fast.echo", queue="fast") for n in range(3)]
    )
    assert len(stream) == 3


def test_error_fields_name_the_type_and_message() -> None:
    assert error_fields(ValueError("bad input")) == {"type": "ValueError", "message": "bad input"}


def test_handles_of_one_job_are_one_set_member(client: Client) -> None:
    assert len({JobHandle(client, "same"), JobHandle(client, "same"), JobHandle(client, "other")}) == 2


def test_a_repeat_entry_run_as_an_rq_job_says_what_to_run_instead() -> None:
    with pytest.raises(RuntimeError, match="run `forgejobs scheduler`, not `rqscheduler`"):
        repeat_placeholder()


def test_unknown_job_ids_are_not_promoted_and_have_no_log(client: Client) -> None:
    assert client.backend.promote("no-such-job") is False
    assert client.backend.logs("no-such-job") == []


def test_obliterating_an_unused_queue_removes_nothing(client: Client) -> None:
    Echo.with_options(client=client).enqueue(text="kept")
    assert client.backend.obliterate("slow") == 0
    assert client.backend.counts(["fast"])[0].waiting == 1


def test_a_job_key_that_is_not_a_hash_is_shown_raw(client: Client, conn: redis.Redis, settings: Settings) -> None:
    conn.set(Keys(settings.key_prefix).queue("fast").job("broken"), "not a hash")
    detail = client.backend.job_detail("broken")
    assert detail is not None and detail.raw == "string: not a hash"


def test_a_waiting_id_without_a_record_is_listed_without_a_name(
    client: Client, conn: redis.Redis, settings: Settings
) -> None:
    conn.rpush(Keys(settings.key_prefix).queue("fast").wait(5), "ghost")
    [ghost] = client.backend.list_jobs("fast", State.WAITING)
    assert (ghost.id, ghost.state, ghost.name, ghost.enqueued_at) == ("ghost", State.WAITING, None, None)


def test_a_finish_time_that_is_not_a_number_is_shown_as_none(
    client: Client, conn: redis.Redis, settings: Settings
) -> None:
    handle = Echo.with_options(client=client).enqueue(text="a")
    conn.hset(Keys(settings.key_prefix).queue("fast").job(handle.id), "ft", "abc")
    [summary] = client.backend.list_jobs("fast", State.WAITING)
    assert summary.id == handle.id and summary.finished_at is None


def test_an_async_handle_reads_the_log_and_progress_of_its_job(client: Client, conn: redis.Redis) -> None:
    handle = Echo.with_options(client=client).enqueue(text="a")
    queue = Keys().queue("fast")
    conn.rpush(queue.log(handle.id), "first", "second")
    conn.hset(queue.job(handle.id), "pg", json.dumps({"done": 3}))
    conn.rpush(Keys().queue("elsewhere").log("stray"), "found by a scan")
    conn.hset(Keys().queue("elsewhere").job("stray"), "s", "queued")  # a queue this registry does not declare

    async def scenario() -> tuple[list[str], object, list[str], list[str], list[str]]:
        aclient = AsyncClient.for_client(client)
        try:
            mine = JobHandle(aclient, handle.id)
            return (
                await mine.alogs(),
                await mine.aprogress(),
                await JobHandle(aclient, "stray").alogs(),
                await JobHandle(aclient, "no-such-job").alogs(),
                await handle.alogs(),  # a handle of the sync client
            )
        finally:
            await aclient.aclose()

    logs, progress, stray, unknown, sync_logs = asyncio.run(scenario())
    assert logs == sync_logs == ["first", "second"]
    assert progress == {"done": 3}
    assert stray == ["found by a scan"]
    assert unknown == []


def test_a_backend_that_knows_no_queues_finds_a_job_by_scanning(client: Client, conn: redis.Redis) -> None:
    handle = Echo.with_options(client=client).enqueue(text="a")
    assert RedisBackend(conn).find_queue(handle.id) == "fast"
    assert RedisBackend(conn).find_queue("no-such-job") is None


class Login(BaseModel):
    token: Annotated[str, Secret] = Field(alias="apiToken")
    pin: Annotated[str, Secret] = ""
    user: str


class Account(BaseModel):
    login: Login = Field(alias="credentials")
    note: str


def test_secrets_of_a_nested_model_are_masked_under_field_names_and_aliases() -> None:
    by_alias = {"credentials": {"apiToken": "tok-123", "pin": "42", "user": "ann"}, "note": "hi"}
    by_name = {"login": {"token": "tok-123", "user": "ann"}, "note": "hi"}
    assert mask_payload(Account, by_alias) == {
        "credentials": {"apiToken": MASK, "pin": MASK, "user": "ann"},
        "note": "hi",
    }
    assert mask_payload(Account, by_name) == {"login": {"token": MASK, "user": "ann"}, "note": "hi"}
    assert secret_values(Account, by_alias) == ["tok-123"]  # "42" is too short to mask inside text


def test_an_async_handle_on_the_fake_backend_reads_its_log() -> None:
    fake = Client(FakeBackend(), Registry([Echo], FAST))
    handle = Echo.with_options(client=fake).enqueue(text="a")
    assert isinstance(fake.backend, FakeBackend)
    fake.backend.jobs[handle.id].log.append("noted")
    assert asyncio.run(handle.alogs()) == ["noted"]


def test_perform_one_raises_what_a_dead_lettered_job_raised_unless_told_not_to(
    fake_queue: FakeQueue, tmp_path: Path
) -> None:
    first = Doomed.enqueue(path=str(tmp_path / "first"))
    with pytest.raises(Unrecoverable, match="the account was deleted"):
        fake_queue.perform_one()
    assert first.status() is Status.FAILED
    second = Doomed.enqueue(path=str(tmp_path / "second"))
    assert fake_queue.perform_one(raise_on_failure=False) == second
    assert second.status() is Status.FAILED


def test_a_job_key_pile_larger_than_a_delete_batch_is_obliterated(client: Client, conn: redis.Redis) -> None:
    Echo.with_options(client=client).enqueue_many([{"text": str(n)} for n in range(BATCH + 1)])
    assert len(client.backend.list_jobs("fast", State.WAITING, limit=BATCH)) == BATCH  # read in chunks of 200
    assert client.backend.obliterate("fast") == BATCH + 1
    assert client.backend.counts(["fast"])[0].waiting == 0
    assert list(conn.scan_iter(match="forgejobs:{fast}:*")) == []


def test_delayed_jobs_past_one_chunk_are_all_listed(client: Client) -> None:
    Echo.with_options(client=client, delay=3600).enqueue_many([{"text": str(n)} for n in range(201)])
    assert len(client.backend.list_jobs("fast", State.DELAYED, limit=300)) == 201


def test_obliterating_a_queue_keeps_the_dead_letters_of_other_queues(client: Client) -> None:
    letters = client.backend.dead_letters
    for queue in ("fast", "slow"):
        letters.add(DeadLetter(id=f"dead-{queue}", queue=queue, reason=Reason.EXHAUSTED, error="boom"))
    client.backend.obliterate("fast")
    assert [letter.id for letter in letters.recent()] == ["dead-slow"]


def test_a_result_that_is_not_json_is_shown_as_text(client: Client, conn: redis.Redis) -> None:
    handle = Echo.with_options(client=client).enqueue(text="a")
    conn.hset(Keys().queue("fast").job(handle.id), "r", "{not json")
    detail = client.backend.job_detail(handle.id)
    assert detail is not None and detail.result == "{not json"


def test_a_workflow_handle_whose_run_is_gone_says_so(client: Client) -> None:
    with pytest.raises(NoSuchRun, match="no workflow run 'no-such-run'"):
        workflow_run("no-such-run", client)
    gone = WorkflowRun(engine_for(client), "no-such-run")  # a handle kept while its run expired
    assert repr(gone) == "WorkflowRun('no-such-run', ?, ?)"
    with pytest.raises(NoSuchRun, match="no workflow run 'no-such-run'"):
        gone.status()


class _TracedConnection(redis.connection.Connection):
    """A custom connection class, as an application might install (no asyncio counterpart)."""


def test_a_sync_connection_of_a_custom_class_has_no_asyncio_twin() -> None:
    with pytest.raises(BackendError, match="no asyncio counterpart for a _TracedConnection connection; install"):
        async_connection(redis.Redis(connection_pool=redis.ConnectionPool(connection_class=_TracedConnection)))


def test_a_unix_socket_connection_is_described_by_its_path() -> None:
    assert describe(redis.Redis(unix_socket_path="/run/redis.sock", db=3)) == "unix:///run/redis.sock?db=3"


def test_a_stream_entry_whose_data_is_not_json_is_skipped(conn: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    stream = EventStream(conn, "coverage:events")
    stream.append(Event(kind=EventKind.ENQUEUED, job_id="a", name="fast.echo", queue="fast"))
    bad = conn.xadd(
        "coverage:events", {"kind": "enqueued", "job_id": "b", "name": "fast.echo", "queue": "fast", "data": "{"}
    )
    stream.append(Event(kind=EventKind.COMPLETED, job_id="a", name="fast.echo", queue="fast"))
    bad_id = bad.decode() if isinstance(bad, bytes) else str(bad)
    with caplog.at_level(logging.WARNING, logger="forgejobs.events"):
        assert [(e.kind, e.job_id) for e in stream.read()] == [(EventKind.ENQUEUED, "a"), (EventKind.COMPLETED, "a")]
    assert f"skipping event {bad_id} in coverage:events: not an event: event {bad_id}: data is not JSON" in caplog.text


def test_a_job_package_that_fails_to_import_is_named_with_the_failing_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "covgap_needs_dep").mkdir()
    (tmp_path / "covgap_needs_dep" / "__init__.py").write_text("import covgap_missing_dependency\n")
    (tmp_path / "covgap_raises").mkdir()
    (tmp_path / "covgap_raises" / "__init__.py").write_text("\nraise RuntimeError('settings not loaded')\n")
    with pytest.raises(RegistryError) as missing:
        discover("covgap_needs_dep")
    assert str(missing.value).endswith(  # the path is shown relative to the current directory when inside it
        "covgap_needs_dep/__init__.py:1: cannot import job package 'covgap_needs_dep': "
        "No module named 'covgap_missing_dependency'"
    )
    with pytest.raises(RegistryError) as raised:
        discover("covgap_raises")
    assert str(raised.value).endswith(
        "covgap_raises/__init__.py:2: RuntimeError: settings not loaded (while importing covgap_raises)"
    )


def test_a_class_without_readable_source_is_named_by_its_module() -> None:
    ghost = type("Ghost", (), {"__module__": "covgap.nowhere"})
    assert source_of(ghost) == "covgap.nowhere.Ghost"
    assert class_source(ghost) == "covgap.nowhere.Ghost"
