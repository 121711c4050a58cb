"""Retention: a queue keeps at most its configured count and age of finished and failed jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from forgejobs import Client, Registry, Settings, Status
from forgejobs.keys import QueueKeys
from forgejobs.runtime.scripts import Scripts
from forgejobs.runtime.upkeep import trim
from forgejobs.specs import Keep, QueueSpec, Retention
from forgejobs.worker import Worker
from tests.samplejobs.basic import Echo

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")


def finished_ids(conn: redis.Redis) -> list[str]:
    return [i.decode() for i in conn.zrange(FAST.done, 0, -1)]


def run_five(client: Client, settings: Settings, registry: Registry, conn: redis.Redis) -> list[str]:
    handles = [Echo.enqueue(text=str(i)) for i in range(5)]
    Worker(settings, registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)
    assert all(h.status() is Status.SUCCEEDED for h in handles)
    return [h.id for h in handles]


def test_completed_jobs_are_trimmed_to_the_newest_count(
    client: Client, settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    ids = run_five(client, settings, registry, conn)
    spec = QueueSpec(retention=Retention(completed=Keep(count=3)))
    assert trim(Scripts(conn), FAST, spec) == 2
    kept = finished_ids(conn)
    assert len(kept) == 3 and set(kept) <= set(ids)
    gone = set(ids) - set(kept)
    assert all(not conn.exists(FAST.job(job_id)) for job_id in gone)
    assert all(client.backend.state(job_id).status is Status.UNKNOWN for job_id in gone)
    assert all(client.backend.state(job_id).status is Status.SUCCEEDED for job_id in kept)


def test_completed_jobs_older_than_the_age_are_trimmed(
    client: Client, settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    run_five(client, settings, registry, conn)
    keep_an_hour = QueueSpec(retention=Retention(completed=Keep(age=timedelta(hours=1))))
    assert trim(Scripts(conn), FAST, keep_an_hour) == 0
    keep_nothing_old = QueueSpec(retention=Retention(completed=Keep(age=timedelta(0))))
    assert trim(Scripts(conn), FAST, keep_nothing_old) == 5
    assert finished_ids(conn) == []


def test_jobs_past_their_result_ttl_are_deleted_whatever_the_count(
    client: Client, settings: Settings, registry: Registry, conn: redis.Redis
) -> None:
    ids = run_five(client, settings, registry, conn)
    conn.zadd(FAST.done, {ids[0]: 1})  # its expiry passed long ago
    assert trim(Scripts(conn), FAST, QueueSpec()) == 1
    assert client.backend.state(ids[0]).status is Status.UNKNOWN
