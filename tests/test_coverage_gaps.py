"""Behaviour that the rest of the suite left unexercised (docs/coverage-gaps.md lists each place): refusals of
arguments that cannot work, the dead-letter limit, and an enqueue larger than one script call."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Job, Registry, RetryLater, Settings
from forgejobs.backends.redis import BATCH, RedisBackend, RedisDeadLetters
from forgejobs.deadletter import DeadLetter, Reason
from forgejobs.errors import ForgeJobsError, OptionsError, SpecError
from forgejobs.events import MemoryEventStream
from forgejobs.inspection import Inspector
from forgejobs.keys import Keys
from forgejobs.outbox import Outbox
from forgejobs.runtime.worker import slots_per_queue
from forgejobs.specs import load_specs
from forgejobs.sqlalchemy import enqueue_after_commit
from forgejobs.workflows import Workflow, WorkflowError
from tests.samplejobs.basic import Echo


def _job_class(**keywords: object) -> type[Job]:
    return type("Refused", (Job,), {"__annotations__": {"ref": str}, "__module__": __name__}, **keywords)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"bogus": 1}, "Refused: unknown option(s) bogus; valid options are abstract, attempts,"),
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
