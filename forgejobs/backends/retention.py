"""Retention: trim each queue's finished and failed jobs to its `retention` spec.

Guarantee: after each pass (every few seconds, by whichever scheduler holds
the queue's lock) a queue keeps at most `retention.completed.count` finished
and `retention.failed.count` failed jobs, none older than the `age` given;
older ones are deleted with their results. Job hashes also expire on their own
(`result_ttl`, `failure_ttl`), so with the defaults Redis memory stays bounded
under any sustained load: at most about 1,000 + 1,000 finished jobs per queue,
plus dead letters (capped by FORGEJOBS_DEAD_LETTER_LIMIT).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC
from typing import cast

import redis
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.utils import str_to_date

from ..keys import rq_job_key, rq_results_key, split_rq_queue_name
from ..specs import Keep, QueueSpec


def trim(connection: redis.Redis, rq_queues: Sequence[Queue], specs: dict[str, QueueSpec]) -> int:
    """One retention pass over these RQ queues. Returns how many jobs were deleted."""
    deleted = 0
    for rq_queue in rq_queues:
        spec = specs.get(split_rq_queue_name(rq_queue.name)[0])
        if spec is None:
            continue
        # RQ scores these registries by expiry time; its age limit is the job's TTL.
        for registry, keep in (
            (FinishedJobRegistry(queue=rq_queue), spec.retention.completed),
            (FailedJobRegistry(queue=rq_queue), spec.retention.failed),
        ):
            deleted += _trim_one(connection, registry.key, keep)
    return deleted


def _trim_one(connection: redis.Redis, key: str, keep: Keep) -> int:
    doomed: list[bytes] = []
    size = int(cast(int, connection.zcard(key)))
    if keep.count is not None and size > keep.count:
        doomed += cast(list[bytes], connection.zrange(key, 0, size - keep.count - 1))
    if keep.age is not None:
        # The registries are scored by expiry, not by end time: read each job's ended_at.
        entries = cast(list[bytes], connection.zrange(key, 0, -1))
        with connection.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hget(rq_job_key(entry.decode()), "ended_at")
            ended = cast(list[bytes | None], pipe.execute())
        limit = time.time() - keep.age.total_seconds()
        doomed += [e for e, t in zip(entries, ended) if t and _timestamp(t.decode()) < limit]
    if not doomed:
        return 0
    ids = sorted({d.decode() for d in doomed})
    with connection.pipeline() as pipe:
        pipe.zrem(key, *ids)
        for job_id in ids:
            pipe.delete(rq_job_key(job_id), rq_results_key(job_id))
        pipe.execute()
    return len(ids)


def _timestamp(rq_time: str) -> float:
    return str_to_date(rq_time).replace(tzinfo=UTC).timestamp()  # RQ writes naive UTC
