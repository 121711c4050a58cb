"""What a caller sees when Redis is not there."""

from __future__ import annotations

import pytest
import redis

from forgejobs import BackendError, Client, Registry
from forgejobs.backends.redis import RedisBackend
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
