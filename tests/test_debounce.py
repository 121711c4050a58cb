"""debounce: a waiting job with the same key takes the newer payload and starts later; atomic."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis

from forgejobs import Client, Context, EnqueueOptions, Job, Registry, Settings, Status
from forgejobs.backends.redis import RedisBackend
from forgejobs.keys import QueueKeys
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from forgejobs.worker import Worker


class SearchReindex(Job, queue="fast", debounce=timedelta(seconds=2), dedupe_key=("document_id",)):
    document_id: str
    revision: int

    def perform(self, ctx: Context) -> int:
        return self.revision


def test_repeated_enqueues_collapse_into_one_later_run_with_the_newest_payload() -> None:
    with FakeQueue() as queue:
        start = queue.clock.now()
        first = SearchReindex.enqueue(document_id="d1", revision=1)
        queue.clock.advance(1)
        second = SearchReindex.enqueue(document_id="d1", revision=2)
        other = SearchReindex.enqueue(document_id="d2", revision=1)
        assert second.id == first.id and second.existing and other.id != first.id
        assert queue.drain().succeeded == 2
        assert first.result() == 2  # the newest payload
        assert queue.clock.now() - start == timedelta(seconds=3)  # pushed back from 2 s to 1 + 2 s
        # once it has run, the next enqueue is a new job
        third = SearchReindex.enqueue(document_id="d1", revision=3)
        assert third.id != first.id and not third.existing


def test_a_debounced_job_refuses_its_own_start_time() -> None:
    with FakeQueue(), pytest.raises(ValueError, match="debounced"):
        SearchReindex.with_options(delay=5).enqueue(document_id="d1", revision=1)


@pytest.mark.redis
def test_debounce_on_redis_is_atomic_and_pushes_the_start_back(conn: redis.Redis) -> None:
    client = Client(RedisBackend(conn), Registry([SearchReindex], Specs(queues={"fast": QueueSpec()})))
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def enqueue(revision: int) -> None:
        barrier.wait()
        ids.append(client.enqueue(SearchReindex, [{"document_id": "d1", "revision": revision}], EnqueueOptions())[0].id)

    threads = [threading.Thread(target=enqueue, args=(r,)) for r in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(ids)) == 1
    (job_id,) = set(ids)
    assert conn.zcard(QueueKeys("forgejobs", "fast").delayed) == 1
    due_before = conn.zscore(QueueKeys("forgejobs", "fast").delayed, job_id)
    time.sleep(0.05)  # a later enqueue, measurably later
    again = client.enqueue(SearchReindex, [{"document_id": "d1", "revision": 99}], EnqueueOptions())[0]
    assert again.id == job_id and again.existing
    assert conn.zscore(QueueKeys("forgejobs", "fast").delayed, job_id) > due_before  # type: ignore[operator]
    assert again.status() is Status.SCHEDULED
    # it runs once, after the window, with the newest payload
    settings = Settings(redis_url="redis://unused", scheduler_interval=0.1)
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=5)
    assert again.result() == 99
