"""Stalled-job recovery: leases held by live workers, and a reaper for jobs whose lease lapsed.

Guarantee: a job whose worker dies mid-job (SIGKILL, power loss, OOM) is
handed to execution's `stalled` rule within about `stall_timeout` plus one
reaper pass (default 20 s + 1 s, so back in its queue within 30 s): retried
as its next attempt, or
dead-lettered as `stalled` once it has stalled `max_stalled` times or spent
its attempts. RQ alone notices only in its maintenance pass, 10 minutes
apart, after the job's timeout plus 60 s.

How: a worker SETs `forgejobs:lease:<job id>` with a TTL of `stall_timeout`
before RQ marks the job started, a heartbeat thread in the worker process
refreshes it every third of that, and the worker deletes it after RQ has
recorded the outcome. The reaper (run by whichever scheduler holds a queue's
lock) looks at the queue's started registry: an entry with no lease, started
more than `stall_timeout` ago, belongs to a dead worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import str_to_date

from ..events import Event, EventStream
from ..execution import DeadLettered, Retry, Runtime, outcome_events, stalled
from ..keys import Keys, rq_job_key, split_rq_queue_name

log = logging.getLogger("forgejobs.stalls")


class LeaseKeeper:
    """Holds the leases of the jobs this process is running; one heartbeat thread per process."""

    def __init__(self, connection: redis.Redis, keys: Keys, ttl: float, events: EventStream | None = None) -> None:
        self.connection = connection
        self.keys = keys
        self.events = events
        self.ttl_ms = int(ttl * 1000)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, job_id: str, holder: str, events: Sequence[Event] = ()) -> None:
        """Hold the job's lease; `events` (its `started` event) go out in the same round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.lease(job_id), holder, px=self.ttl_ms)
            self._append(events, pipe)
            pipe.execute()
        with self._lock:
            self._held[job_id] = holder
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="forgejobs-leases", daemon=True)
                self._thread.start()

    def release(self, job_id: str, events: Sequence[Event] = ()) -> None:
        """Drop the job's lease; `events` (its outcome) go out in the same round trip."""
        with self._lock:
            self._held.pop(job_id, None)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.lease(job_id))
            self._append(events, pipe)
            pipe.execute()

    def _append(self, events: Sequence[Event], pipe: Any) -> None:
        if self.events is not None:
            for event in events:
                self.events.append(event, pipeline=pipe)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                with self.connection.pipeline(transaction=False) as pipe:
                    for job_id, holder in held.items():
                        pipe.set(self.keys.lease(job_id), holder, px=self.ttl_ms)
                    pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not refresh job leases: %s", exc)

    def close(self) -> None:
        self._stop.set()


def reap(
    connection: redis.Redis,
    rq_queues: Sequence[Queue],
    runtime: Runtime,
    keys: Keys,
    stall_timeout: float,
    events: EventStream | None = None,
) -> list[str]:
    """Recover the jobs of these RQ queues whose worker stopped holding their lease. Returns their ids."""
    registries = [StartedJobRegistry(queue=q) for q in rq_queues]
    with connection.pipeline(transaction=False) as pipe:
        for registry in registries:
            pipe.zrange(registry.key, 0, -1)
        entries = cast(list[list[bytes]], pipe.execute())
    candidates = [
        (queue, registry, entry.decode())
        for queue, registry, found in zip(rq_queues, registries, entries)
        for entry in found
    ]
    if not candidates:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for _queue, _registry, entry in candidates:
            job_id = entry.split(":", 1)[0]
            pipe.exists(keys.lease(job_id))
            pipe.hget(rq_job_key(job_id), "started_at")
        answers = pipe.execute()
    cutoff = datetime.now(UTC) - timedelta(seconds=stall_timeout)
    recovered = []
    for index, (queue, registry, entry) in enumerate(candidates):
        leased, started = answers[2 * index], answers[2 * index + 1]
        if leased:
            continue
        if started and str_to_date(started).replace(tzinfo=UTC) > cutoff:
            continue  # just started: its lease is being taken right now
        job_id = entry.split(":", 1)[0]
        if _recover(connection, queue, registry, entry, job_id, runtime, events):
            recovered.append(job_id)
    return recovered


def _recover(
    connection: redis.Redis,
    queue: Queue,
    registry: StartedJobRegistry,
    entry: str,
    job_id: str,
    runtime: Runtime,
    events: EventStream | None,
) -> bool:
    # Take the entry out first: if another reaper got here, ZREM says so and nothing happens twice.
    if not connection.zrem(registry.key, entry):
        return False
    try:
        job = RQJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception as exc:  # noqa: BLE001 - nothing to retry; say so and move on
        log.error("stalled job %s cannot be read: %r", job_id, exc)
        return False
    raw = job.args[0] if job.args else ""
    logical_queue = split_rq_queue_name(queue.name)[0]
    outcome = stalled(raw, runtime, job_id=job_id, queue=logical_queue)
    if events is not None:
        with connection.pipeline(transaction=False) as pipe:
            for event in outcome_events(outcome, job_id, logical_queue):
                events.append(event, pipeline=pipe)
            pipe.execute()
    if isinstance(outcome, Retry):
        job.args = [outcome.envelope.encode()]
        due = datetime.now(UTC) + timedelta(seconds=outcome.delay)
        with connection.pipeline() as pipe:
            if outcome.delay > 0:
                queue.schedule_job(job, due, pipeline=pipe)
                pipe.zadd(ScheduledJobRegistry(queue=queue).key, {job_id: due.timestamp()}, xx=True)
            else:
                job.save(pipeline=pipe)
                queue._enqueue_job(job, pipeline=pipe)
            pipe.execute()
        log.warning(
            "job %s (%s) stalled: back on %s as attempt %d", job_id, outcome.name, queue.name, outcome.envelope.attempt
        )
    elif isinstance(outcome, DeadLettered):
        with connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(queue=queue).add(job, ttl=job.failure_ttl or 0, exc_string="stalled", pipeline=pipe)
            pipe.execute()
    return True
