"""The client as a caller sees it, in this process on a real Redis database: its refusals and their messages,
the enqueue hook, generated ids, the payload limit, what makes two enqueues "the same job" (unique_for,
debounce), concurrency keys, dead letters and their requeue, queue administration, and the current client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
import redis
from pydantic import PlainSerializer

from forgejobs import (
    Client,
    Context,
    EnqueueOptions,
    ForgeJobsError,
    Job,
    NoSuchJob,
    PayloadTooLarge,
    Registry,
    Settings,
    Status,
    UnknownJob,
)
from forgejobs.backends.base import Backend, JobState, Prepared
from forgejobs.backends.redis import RedisBackend
from forgejobs.client import current_client, enqueue_hook, set_client, use_client
from forgejobs.deadletter import DeadLetter, MemoryDeadLetters, Reason
from forgejobs.errors import BackendUnavailable
from forgejobs.handle import JobHandle
from forgejobs.inspection import Inspector, State
from forgejobs.specs import QueueSpec, Specs
from forgejobs.worker import Worker
from tests.helpers import cli_env, wait_for
from tests.samplejobs.basic import Doomed, Echo, Mark
from tests.samplejobs.limits import OrgTask

pytestmark = pytest.mark.redis

RELEASE = threading.Event()  # what a running Hold waits for


class Unique(Job, queue="alpha", unique_for=timedelta(minutes=5)):
    """Deduplicated on its whole payload as sent (the email goes out lower-cased)."""

    ref: str
    labels: dict[str, str] = {}
    email: Annotated[str, PlainSerializer(str.lower, when_used="json")] = ""

    def perform(self, ctx: Context[None]) -> str:
        return self.ref


class UniqueTwin(Unique, queue="alpha"):
    """Unique under another name: the same payload is never "the same job" as a Unique's."""


class ByOrg(Job, queue="alpha", unique_for=timedelta(minutes=5), dedupe_key=lambda job: job.org.lower()):
    """Deduplicated per organisation, whatever the case and the note."""

    org: str
    note: str = ""

    def perform(self, ctx: Context[None]) -> str:
        return self.note


class Reindex(Job, queue="alpha", debounce=timedelta(seconds=30)):
    doc: str

    def perform(self, ctx: Context[None]) -> str:
        return self.doc


class ReindexTwin(Job, queue="alpha", debounce=timedelta(seconds=30)):
    """Another debounced type with Reindex's field: never debounced together with it."""

    doc: str

    def perform(self, ctx: Context[None]) -> str:
        return self.doc


class Fetch(Job, queue="alpha", concurrency_key=lambda job: job.url.split("/")[2], concurrency_limit=3):
    """At most three fetches of one host at once."""

    url: str

    def perform(self, ctx: Context[None]) -> None: ...


class Small(Job, queue="alpha", max_payload_bytes=64):
    """A payload of at most 64 bytes."""

    text: str

    def perform(self, ctx: Context[None]) -> None: ...


class Wide(Job, queue="alpha", max_payload_bytes=64):
    """Four fields, one of them a datetime, and room for 64 bytes."""

    a: str
    b: str
    c: str
    when: datetime

    def perform(self, ctx: Context[None]) -> None: ...


class Plain(Job, queue="alpha"):
    """No dedupe, no debounce, no concurrency key."""

    text: str

    def perform(self, ctx: Context[None]) -> str:
        return self.text


class Hold(Job, queue="hold", attempts=1):
    """Run until the test releases it."""

    def perform(self, ctx: Context[None]) -> None:
        RELEASE.wait(30)


OWN_TYPES: list[type[Job]] = [Unique, UniqueTwin, ByOrg, Reindex, ReindexTwin, Fetch, Small, Wide, Plain, Hold]


def own_registry() -> Registry:
    return Registry(OWN_TYPES, Specs(queues={"alpha": QueueSpec(), "hold": QueueSpec()}))


@pytest.fixture
def own(conn: redis.Redis) -> Iterator[Client]:
    """A client of this file's job types (queues alpha and hold), current for the test."""
    c = Client(RedisBackend(conn), own_registry())
    with use_client(c):
        yield c


def one(client: Client, job_type: type[Job], options: EnqueueOptions | None = None, **fields: Any) -> JobHandle:
    return client.enqueue(job_type, [fields], options or EnqueueOptions())[0]


def waiting_in(client: Client, queue: str) -> int:
    return client.backend.counts([queue])[0].waiting


class DictBackend(Backend):
    """The smallest backend: the three required methods, a store of dead letters and obliterate. It has no
    dedupe claims and no count of running jobs."""

    def __init__(self) -> None:
        self.jobs: dict[str, Prepared] = {}
        self.dead_letters = MemoryDeadLetters()

    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        self.jobs.update((job.job_id, job) for job in jobs)
        return set()

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def state(self, job_id: str, queue: str | None = None) -> JobState:
        return JobState(Status.QUEUED if job_id in self.jobs else Status.UNKNOWN)

    def obliterate(self, queue: str) -> int:
        gone = [job_id for job_id, job in self.jobs.items() if job.queue == queue]
        for job_id in gone:
            del self.jobs[job_id]
        return len(gone)


# -- enqueue -----------------------------------------------------------------------------------------------


def test_a_job_id_cannot_name_a_batch(client: Client) -> None:
    with pytest.raises(ValueError) as refused:
        client.enqueue(Echo, [{"text": "a"}, {"text": "b"}], EnqueueOptions(job_id="mine"))
    assert str(refused.value) == "job_id names one job; it cannot be used with enqueue_many"
    assert waiting_in(client, "fast") == 0


def test_an_enqueue_hook_is_handed_the_call_and_the_handles_it_returns_are_the_result(client: Client) -> None:
    calls: list[tuple[Any, ...]] = []
    held = [JobHandle(client, "held-by-the-hook", Echo)]

    def hook(c: Any, job_type: type[Job], items: Sequence[Job | Mapping[str, Any]], options: EnqueueOptions) -> Any:
        calls.append((c, job_type, items, options))
        return held

    items, options = [{"text": "later"}], EnqueueOptions(priority=3)
    token = enqueue_hook.set(hook)
    try:
        result = client.enqueue(Echo, items, options)
    finally:
        enqueue_hook.reset(token)
    assert result is held
    assert len(calls) == 1
    c, job_type, got_items, got_options = calls[0]
    assert c is client and job_type is Echo and got_items is items and got_options is options
    assert waiting_in(client, "fast") == 0  # the hook took the job: nothing was stored


def test_an_enqueue_hook_returning_none_lets_the_enqueue_go_on(client: Client) -> None:
    seen: list[type[Job]] = []

    def hook(c: Any, job_type: type[Job], items: Any, options: EnqueueOptions) -> None:
        seen.append(job_type)

    token = enqueue_hook.set(hook)
    try:
        handles = client.enqueue(Echo, [{"text": "now"}], EnqueueOptions())
    finally:
        enqueue_hook.reset(token)
    assert seen == [Echo]
    (handle,) = handles
    assert handle.status() is Status.QUEUED and waiting_in(client, "fast") == 1


def test_a_job_of_another_type_is_refused_by_name(client: Client) -> None:
    with pytest.raises(TypeError) as refused:
        client.enqueue(Echo, [Mark(path="/dev/null", label="x")], EnqueueOptions())
    assert str(refused.value) == "expected a Echo, got a Mark"


def test_generated_ids_are_32_hex_characters_and_differ(client: Client) -> None:
    first, second = client.enqueue(Echo, [{"text": "a"}, {"text": "b"}], EnqueueOptions())
    for handle in (first, second):
        assert len(handle.id) == 32 and set(handle.id) <= set("0123456789abcdef"), handle.id
    assert first.id != second.id


def test_a_payload_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused(own: Client) -> None:
    at_limit = "x" * (64 - len('{"text":""}'))
    assert one(own, Small, text=at_limit).status() is Status.QUEUED
    with pytest.raises(PayloadTooLarge) as refused:
        one(own, Small, text=at_limit + "x")
    assert (refused.value.size, refused.value.limit) == (65, 64)
    assert refused.value.largest == [("text", 56)]  # the quoted string


def test_an_oversized_payload_names_its_three_largest_fields_as_sent(own: Client) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # sent as "2026-01-02T03:04:05Z": 22 bytes
    with pytest.raises(PayloadTooLarge) as refused:
        one(own, Wide, a="x" * 40, b="y" * 30, c="z", when=when)
    assert refused.value.largest == [("a", 42), ("b", 32), ("when", 22)]
    assert str(refused.value) == (
        "alpha.wide: payload is 123 bytes, over the limit of 64 bytes; largest fields: a (42 bytes), b (32 bytes), "
        "when (22 bytes). Enqueue a reference (an id) instead of the data."
    )


def test_enqueue_raw_enqueues_one_job_by_name(client: Client) -> None:
    handle = client.enqueue_raw("fast.echo", {"text": "raw"})
    assert handle.job_type is Echo and handle.status() is Status.QUEUED
    assert Inspector(client.backend, client.registry).job(handle.id).payload == {"text": "raw"}


def test_a_backend_without_dedupe_claims_enqueues_jobs_that_do_not_ask_for_them() -> None:
    client = Client(DictBackend(), own_registry())
    first, second = client.enqueue(Plain, [{"text": "a"}, {"text": "b"}], EnqueueOptions())
    assert first.status() is Status.QUEUED and second.status() is Status.QUEUED


# -- unique_for ----------------------------------------------------------------------------------------------


def test_a_deduplicated_enqueue_returns_a_working_handle_to_the_first_job(own: Client) -> None:
    first = one(own, Unique, ref="r1")
    again = one(own, Unique, ref="r1")
    assert again.id == first.id and again.existing and not first.existing
    assert again.client is own and again.job_type is Unique
    assert again.status() is Status.QUEUED
    assert waiting_in(own, "alpha") == 1


def test_two_job_types_with_the_same_payload_are_not_the_same_job(own: Client) -> None:
    unique, twin = one(own, Unique, ref="r1"), one(own, UniqueTwin, ref="r1")
    assert unique.id != twin.id and not twin.existing
    assert waiting_in(own, "alpha") == 2


def test_payloads_equal_once_sent_are_the_same_job_whatever_the_order_of_a_mapping(own: Client) -> None:
    first = one(own, Unique, ref="r1", labels={"a": "1", "b": "2"}, email="Ann@Example.org")
    again = one(own, Unique, ref="r1", labels={"b": "2", "a": "1"}, email="ann@example.org")
    assert again.id == first.id and again.existing
    other = one(own, Unique, ref="r1", labels={"a": "1", "b": "3"}, email="ann@example.org")
    assert other.id != first.id and not other.existing


def test_a_dedupe_key_function_decides_which_enqueues_are_the_same_job(own: Client) -> None:
    first = one(own, ByOrg, org="Acme", note="first")
    again = one(own, ByOrg, org="acme", note="second")
    other = one(own, ByOrg, org="globex", note="first")
    assert again.id == first.id and again.existing
    assert other.id != first.id and not other.existing
    assert Inspector(own.backend, own.registry).job(first.id).payload == {"org": "Acme", "note": "first"}


# -- debounce ------------------------------------------------------------------------------------------------


def test_a_debounced_job_keeps_the_priority_it_was_enqueued_with(own: Client) -> None:
    handle = one(own, Reindex, EnqueueOptions(priority=2), doc="d1")
    assert handle.job_type is Reindex and handle.client is own and not handle.existing
    detail = Inspector(own.backend, own.registry).job(handle.id)
    assert detail.state is State.DELAYED and detail.priority == 2
    again = one(own, Reindex, EnqueueOptions(priority=2), doc="d1")
    assert again.id == handle.id and again.existing and again.job_type is Reindex
    assert Inspector(own.backend, own.registry).job(handle.id).priority == 2


def test_two_debounced_job_types_with_the_same_payload_are_debounced_apart(own: Client) -> None:
    reindex, twin = one(own, Reindex, doc="d1"), one(own, ReindexTwin, doc="d1")
    assert reindex.id != twin.id and not twin.existing
    inspector = Inspector(own.backend, own.registry)
    assert inspector.job(reindex.id).name == "alpha.reindex"
    assert inspector.job(twin.id).name == "alpha.reindex-twin"


# -- concurrency keys ------------------------------------------------------------------------------------------


def test_a_job_is_stored_with_its_concurrency_key_field_and_limit(client: Client) -> None:
    acme, globex = client.enqueue(
        OrgTask,
        [{"path": "/dev/null", "org": "acme", "seconds": 0}, {"path": "/dev/null", "org": "globex", "seconds": 0}],
        EnqueueOptions(),
    )
    inspector = Inspector(client.backend, client.registry)
    assert inspector.job(acme.id).options["concurrency_key"] == "acme"
    assert inspector.job(acme.id).options["concurrency_limit"] == 2
    assert inspector.job(globex.id).options["concurrency_key"] == "globex"


def test_a_concurrency_key_function_is_given_the_job(own: Client) -> None:
    handle = one(own, Fetch, url="https://example.org/a/b")
    options = Inspector(own.backend, own.registry).job(handle.id).options
    assert (options["concurrency_key"], options["concurrency_limit"]) == ("example.org", 3)


def test_a_job_without_a_concurrency_key_is_stored_without_one(own: Client) -> None:
    options = Inspector(own.backend, own.registry).job(one(own, Plain, text="x").id).options
    assert "concurrency_key" not in options and "concurrency_limit" not in options


# -- dead letters ----------------------------------------------------------------------------------------------


def dead(job_id: str, *, at: int = 0, name: str | None = "fast.echo", **fields: Any) -> DeadLetter:
    payload = {"text": job_id} if name is not None else None
    values: dict[str, Any] = {"name": name, "queue": "fast", "reason": Reason.EXHAUSTED, "payload": payload}
    values.update(fields)
    return DeadLetter(
        id=job_id, error="boom", died_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=at), **values
    )


def test_dead_letters_are_listed_newest_first_a_hundred_by_default_and_paged(client: Client) -> None:
    store = client.backend.dead_letters
    for i in range(101):
        store.add(dead(f"dead-{i:03}", at=i))
    listed = client.dead_letters()
    assert len(listed) == 100
    assert listed[0].id == "dead-100" and listed[-1].id == "dead-001"
    assert [r.id for r in client.dead_letters(limit=2, offset=1)] == ["dead-099", "dead-098"]


def test_an_unknown_dead_letter_is_refused_by_id(client: Client) -> None:
    with pytest.raises(NoSuchJob) as refused:
        client.dead_letter("nope")
    assert str(refused.value) == "no dead letter with id 'nope'"


def test_a_dead_letter_without_a_readable_payload_is_not_requeued(client: Client) -> None:
    client.backend.dead_letters.add(dead("corrupt-1", name=None, reason=Reason.CORRUPT, raw="not json"))
    with pytest.raises(NoSuchJob) as refused:
        client.requeue("corrupt-1")
    assert str(refused.value) == "dead letter corrupt-1 (corrupt) has no readable payload to requeue"
    assert client.dead_letter("corrupt-1").raw == "not json"


def test_a_dead_letter_of_a_job_type_no_longer_registered_is_not_requeued(client: Client) -> None:
    client.backend.dead_letters.add(dead("gone-1", name="fast.retired", reason=Reason.UNKNOWN_JOB))
    with pytest.raises(UnknownJob) as refused:
        client.requeue("gone-1")
    assert str(refused.value) == "cannot requeue gone-1: no job type named 'fast.retired'"
    assert client.dead_letter("gone-1").name == "fast.retired"


def test_a_requeued_dead_job_waits_again_under_its_id_with_its_priority(
    client: Client, conn: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    doomed = Doomed.with_options(priority=2).enqueue(path=str(tmp_path / "doomed.jsonl"))
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)
    assert client.dead_letter(doomed.id).priority == 2
    handle = client.requeue(doomed.id)
    assert handle.id == doomed.id and handle.job_type is Doomed and handle.client is client
    assert handle.status() is Status.QUEUED
    detail = Inspector(client.backend, client.registry).job(doomed.id)
    assert detail.state is State.WAITING and detail.priority == 2 and detail.attempt == 1
    assert client.dead_letters() == []


def test_a_requeue_that_cannot_be_stored_keeps_the_dead_letter(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    record = dead("dead-1", priority=3)
    client.backend.dead_letters.add(record)

    def unreachable(jobs: Sequence[Prepared]) -> set[str]:
        raise BackendUnavailable("could not enqueue 1 job(s): Redis did not answer")

    monkeypatch.setattr(client.backend, "enqueue", unreachable)
    with pytest.raises(BackendUnavailable):
        client.requeue("dead-1")
    assert client.dead_letter("dead-1") == record


def test_requeue_all_requeues_every_readable_dead_letter_and_leaves_the_rest(client: Client) -> None:
    store = client.backend.dead_letters
    store.add(dead("dead-1", at=1))
    store.add(dead("corrupt-1", at=2, name=None, reason=Reason.CORRUPT, raw="?"))
    store.add(dead("dead-2", at=3))
    handles = client.requeue_all()
    assert sorted(h.id for h in handles) == ["dead-1", "dead-2"]
    assert all(h.status() is Status.QUEUED for h in handles)
    assert [r.id for r in client.dead_letters()] == ["corrupt-1"]


# -- queues ------------------------------------------------------------------------------------------------


def test_an_undeclared_queue_is_refused_with_the_declared_ones(own: Client) -> None:
    with pytest.raises(UnknownJob) as refused:
        own.pause("nope")
    assert str(refused.value) == "no queue named 'nope'; declared: alpha, hold"


def test_resume_unpauses_only_its_queue(own: Client) -> None:
    own.pause("alpha")
    own.pause("hold")
    own.resume("alpha")
    assert own.paused() == {"hold"}


@pytest.fixture
def holding(own: Client, conn: redis.Redis, redis_url: str) -> Iterator[Callable[[], JobHandle]]:
    """Start a Hold on a worker in this process's threads; released and stopped at the end."""
    RELEASE.clear()
    worker = Worker(Settings(redis_url=redis_url), own.registry, queues=["hold"], connection=conn)
    worker.start(give_up_after=10)

    def start() -> JobHandle:
        handle = one(own, Hold)
        wait_for(lambda: handle.status() is Status.RUNNING, what="the held job to start")
        return handle

    yield start
    RELEASE.set()
    worker.stop()
    assert worker.join(30), "the worker did not stop"


def test_obliterate_refuses_a_queue_with_a_running_job_unless_forced(
    own: Client, holding: Callable[[], JobHandle]
) -> None:
    waiting = own.enqueue(Plain, [{"text": "a"}, {"text": "b"}], EnqueueOptions())
    holding()
    with pytest.raises(ForgeJobsError) as refused:
        own.obliterate("hold")
    assert str(refused.value) == "hold has 1 running job(s); wait, or pass force=True (--force)"
    assert own.obliterate("alpha") == 2  # nothing runs there
    assert all(h.status() is Status.UNKNOWN for h in waiting)
    assert own.obliterate("hold", force=True) == 1


def test_obliterate_on_a_backend_that_counts_no_running_jobs_is_never_refused() -> None:
    client = Client(DictBackend(), own_registry())
    client.enqueue(Plain, [{"text": "a"}, {"text": "b"}], EnqueueOptions())
    assert client.obliterate("alpha") == 2
    assert client.obliterate("hold") == 0


# -- the current client ----------------------------------------------------------------------------------------


def test_the_current_client_is_the_one_installed_or_else_one_built_from_the_environment_once(
    client: Client, conn: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert current_client() is client  # installed by the fixture
    other = Client(RedisBackend(conn), own_registry())
    with use_client(other):
        assert current_client() is other
    assert current_client() is client
    for name, value in cli_env(redis_url).items():
        monkeypatch.setenv(name, value)
    previous = set_client(None)
    try:
        built = current_client()
        try:
            assert current_client() is built and built is not client
            handle = Echo.enqueue(text="from the environment")
            assert handle.client is built
            assert client.backend.state(handle.id).status is Status.QUEUED  # the test's database
        finally:
            built.close()
    finally:
        set_client(previous)
