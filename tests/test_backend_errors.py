"""What a caller sees when Redis is not there."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from forgejobs import BackendError, BackendUnavailable, Client, Registry, Settings
from forgejobs.backends.redis import RedisBackend
from forgejobs.options import EnqueueOptions
from forgejobs.specs import QueueSpec, Specs
from tests.conftest import private_redis, wait_for
from tests.samplejobs.basic import Echo


def test_enqueue_without_redis_keeps_trying_for_the_enqueue_timeout_then_names_the_server() -> None:
    settings = Settings(redis_url="redis://:s3cret@127.0.0.1:1/0", enqueue_timeout=0.5)  # nothing listens on port 1
    client = Client(RedisBackend.from_settings(settings), Registry([Echo], Specs(queues={"fast": QueueSpec()})))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        client.enqueue_raw("fast.echo", {"text": "x"})
    waited = time.monotonic() - started
    message = str(caught.value)
    assert "could not enqueue 1 job(s): Redis at redis://127.0.0.1:1/0 did not answer within 0.5s" in message
    assert "Connection refused" in message and "s3cret" not in message
    assert 0.3 <= waited < 3, waited  # retried for about the timeout, not once and not forever
    assert isinstance(caught.value, BackendError)


def test_a_frozen_redis_blocks_an_enqueue_no_longer_than_the_enqueue_timeout(tmp_path: Path) -> None:
    """SIGSTOP, as a network partition looks to a client: the socket timeout ends each try."""
    with private_redis(tmp_path) as (process, url):
        client = Client(
            RedisBackend.from_settings(Settings(redis_url=url, enqueue_timeout=1)),
            Registry([Echo], Specs(queues={"fast": QueueSpec()})),
        )
        client.enqueue_raw("fast.echo", {"text": "before"})  # connected and the script loaded
        os.kill(process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="did not answer within 1s"):
                client.enqueue_raw("fast.echo", {"text": "frozen"})
            assert time.monotonic() - started < 6
        finally:
            os.kill(process.pid, signal.SIGCONT)
        # After the thaw the tries sent into the frozen server may run: never more than one job each.
        conn = redis.Redis.from_url(url)
        wait_for(lambda: conn.ping(), timeout=5, what="the thawed server")
        ids = conn.lrange("forgejobs:{fast}:wait:p05", 0, -1)
        assert len(ids) == len(set(ids)) and 1 <= len(ids) <= 2


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
