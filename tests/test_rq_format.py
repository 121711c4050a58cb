"""The RQ backend's bulk path writes exactly what RQ's own enqueue writes.

`RQBackend._push_many` builds RQ's job hash from a template instead of one RQ
`Job` per job (see its docstring). If a new RQ version changes its format,
this test says so before a worker misreads a job.
"""

from __future__ import annotations

import zlib

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from forgejobs import Client, EnqueueOptions
from forgejobs.backends.rq import ENTRY_POINT, RQBackend
from tests.samplejobs.basic import Echo

pytestmark = pytest.mark.redis

TIMESTAMPS = {"created_at", "enqueued_at"}


def test_bulk_enqueue_stores_the_same_hash_as_rq(client: Client, conn: redis.Redis) -> None:
    (handle,) = Echo.enqueue_many([{"text": "same"}])
    ours = conn.hgetall(f"rq:job:{handle.id}")

    # The same job, enqueued by RQ itself under another id.
    assert isinstance(client.backend, RQBackend)
    (prepared,) = client.prepare_many(
        Echo,
        client.registry.resolve("fast.echo").options,
        [{"text": "same"}],
        EnqueueOptions(),
        client.backend.now(),
    )
    queue = Queue("fast:p05", connection=conn, serializer=JSONSerializer)
    job = queue.create_job(
        ENTRY_POINT,
        args=[prepared.envelope],
        job_id="by-rq",
        description="fast.echo",
        timeout=int(prepared.timeout),
        result_ttl=int(prepared.result_ttl),
        failure_ttl=int(prepared.failure_ttl),
    )
    queue.enqueue_job(job)
    theirs = conn.hgetall("rq:job:by-rq")

    assert set(ours) == set(theirs)
    differing = {k.decode() for k in ours if ours[k] != theirs[k]}
    assert differing <= TIMESTAMPS | {"data"}
    # data differs only by the envelope's own id and time; both decode to the entry point and one envelope
    for raw in (ours[b"data"], theirs[b"data"]):
        func, instance, args, kwargs = JSONSerializer.loads(zlib.decompress(raw))
        assert (func, instance, len(args), kwargs) == (ENTRY_POINT, None, 1, {})
    assert conn.lrange("rq:queue:fast:p05", 0, -1) == [handle.id.encode(), b"by-rq"]
    assert conn.sismember("rq:queues", "rq:queue:fast:p05")
