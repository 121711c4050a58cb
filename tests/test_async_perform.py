"""`async def perform` is accepted: the fake queue and a real worker both run it to completion."""

from __future__ import annotations

import asyncio

import pytest
import redis

from forgejobs import Client, Context, Job, Registry, Settings
from forgejobs.backends.redis import RedisBackend
from forgejobs.options import EnqueueOptions
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from forgejobs.worker import Worker


class AsyncDouble(Job, queue="fast", attempts=2):
    n: int

    async def perform(self, ctx: Context) -> int:
        await asyncio.sleep(0.01)
        if self.n < 0 and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return self.n * 2


def test_an_async_handler_runs_on_the_fake_queue() -> None:
    with FakeQueue() as queue:
        handle = AsyncDouble.enqueue(n=21)
        queue.drain()
        assert handle.result() == 42
        assert queue.perform(AsyncDouble(n=2)) == 4


@pytest.mark.redis
def test_an_async_handler_runs_in_a_worker_with_retries(conn: redis.Redis) -> None:
    registry = Registry([AsyncDouble], Specs(queues={"fast": QueueSpec(concurrency=2)}))
    client = Client(RedisBackend(conn), registry)
    ok = client.enqueue(AsyncDouble, [{"n": 5}], EnqueueOptions())[0]
    flaky = client.enqueue(AsyncDouble, [{"n": -1}], EnqueueOptions())[0]
    Worker(Settings(), registry, connection=conn, resources=object()).run(burst=True, horizon=5)
    assert ok.result() == 10 and flaky.result() == -2
