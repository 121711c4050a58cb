"""What a caller sees when Redis is not there."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from forgejobs import BackendError, Client, Registry
from forgejobs.backends.redis import RedisBackend
from forgejobs.options import EnqueueOptions
from forgejobs.specs import QueueSpec, Specs
from tests.samplejobs.basic import Echo


def test_enqueue_without_redis_raises_a_backend_error_naming_the_cause() -> None:
    client = Client(
        RedisBackend(redis.Redis.from_url("redis://127.0.0.1:1/0")),  # nothing listens on port 1
        Registry([Echo], Specs(queues={"fast": QueueSpec()})),
    )
    with pytest.raises(BackendError, match=r"could not enqueue 1 job\(s\).*Connection refused"):
        client.enqueue_raw("fast.echo", {"text": "x"})


def test_resources_convention_tolerates_a_job_module_that_is_not_a_package() -> None:
    from forgejobs import Settings
    from forgejobs.settings import load_resources

    assert load_resources(Settings(jobs="tests.samplejobs.basic")) is None
    assert load_resources(Settings(jobs="no_such_package_anywhere")) is None


@pytest.mark.redis
def test_an_enqueue_whose_reply_was_lost_is_retried_without_queueing_the_job_twice(conn: redis.Redis) -> None:
    """The first call runs on the server but its reply never arrives (a timeout): the retry skips what it stored."""
    backend = RedisBackend(conn)
    client = Client(backend, Registry([Echo], Specs(queues={"fast": QueueSpec()})))
    real = backend.scripts.enqueue
    calls: list[int] = []

    def lose_first_reply(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise redis.TimeoutError("reply lost")
        return reply

    backend.scripts.enqueue = lose_first_reply  # type: ignore[method-assign]
    handle = client.enqueue(Echo, [{"text": "once"}], EnqueueOptions())[0]
    assert len(calls) == 2 and not handle.existing
    assert conn.lrange("forgejobs:{fast}:wait:p05", 0, -1) == [handle.id.encode()]
    kinds = [e.kind.value for e in backend.events.read() if e.job_id == handle.id]
    assert kinds == ["enqueued"]
