"""unique_for: a second enqueue inside the window returns the first job; atomic under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import redis

from forgejobs import Client, Context, EnqueueOptions, Job, OptionsError, Registry
from forgejobs.backends.redis import RedisBackend
from forgejobs.keys import QueueKeys
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from tests.samplejobs.basic import Echo


class Digest(Job, queue="email", unique_for=timedelta(minutes=10), dedupe_key=("user_id",)):
    user_id: str
    note: str = ""

    def perform(self, ctx: Context) -> str:
        return self.user_id


def test_same_key_inside_the_window_returns_the_first_job() -> None:
    with FakeQueue() as queue:
        first = Digest.enqueue(user_id="u1", note="a")
        again = Digest.enqueue(user_id="u1", note="b")  # other fields do not matter: the key is user_id
        other = Digest.enqueue(user_id="u2")
        assert again.id == first.id and again.existing and not first.existing
        assert other.id != first.id
        assert [d.note for d in queue.enqueued(Digest)] == ["a", ""]
        queue.clock.advance(timedelta(minutes=10, seconds=1))
        later = Digest.enqueue(user_id="u1")
        assert later.id != first.id and not later.existing


def test_dedupe_key_must_name_fields_and_needs_a_window() -> None:
    with pytest.raises(OptionsError, match="unknown field"):

        class Bad(Job, queue="q", unique_for=60, dedupe_key=("nope",)):
            def perform(self, ctx: Context) -> None: ...

    with pytest.raises(OptionsError, match="needs unique_for"):

        class Bad2(Job, queue="q", dedupe_key=("x",)):
            x: int

            def perform(self, ctx: Context) -> None: ...


class UniqueEcho(Echo, queue="fast", unique_for=timedelta(seconds=30)):
    """Echo, deduplicated on the whole payload for 30 s."""


@pytest.mark.redis
def test_concurrent_enqueues_of_one_key_make_one_job(conn: redis.Redis) -> None:
    client = Client(RedisBackend(conn), Registry([UniqueEcho], Specs(queues={"fast": QueueSpec()})))
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def enqueue() -> None:
        barrier.wait()  # all eight at once
        ids.append(client.enqueue(UniqueEcho, [{"text": "same"}], EnqueueOptions())[0].id)

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert conn.llen(QueueKeys("forgejobs", "fast").wait(5)) == 1
