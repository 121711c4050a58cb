"""Stalled-job recovery: live workers say so; a reaper recovers the jobs of workers that stopped.

Guarantee: a job whose worker dies mid-job (SIGKILL, power loss, OOM) is
handed to execution's `stalled` rule within about `stall_timeout` plus one
reaper pass (default 20 s + 1 s, so back in its queue within 30 s): retried
as its next attempt, or dead-lettered as `stalled` once it has stalled
`max_stalled` times or spent its attempts. RQ alone notices only in its
maintenance pass, 10 minutes apart, after the job's timeout plus 60 s.

How, at no cost per job: each worker process runs one heartbeat thread that
keeps `forgejobs:alive:<RQ worker name>` alive (TTL `stall_timeout`, renewed
every third of it) for every slot it runs. RQ records the worker's name on the
job when it starts it. The reaper (run by whichever scheduler holds a queue's
lock) reads the queue's started registry: a job started more than
`stall_timeout` ago by a worker whose key has expired belongs to a dead worker.
The same thread writes the slots' job events to the stream in batches, every
0.1 s, so events add no round trip to a job either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import str_to_date

from ..events import Event, EventStream
from ..execution import DeadLettered, Retry, Runtime, stalled
from ..keys import Keys, rq_job_key, split_rq_queue_name

log = logging.getLogger("forgejobs.stalls")

FLUSH_SECONDS = 0.1


class Heartbeat:
    """One per worker process: keeps its slots' liveness keys and writes their events."""

    def __init__(self, connection: redis.Redis, keys: Keys, ttl: float, events: EventStream | None = None) -> None:
        self.connection = connection
        self.keys = keys
        self.ttl_ms = int(ttl * 1000)
        self.events = events
        self._names: set[str] = set()
        self._buffer: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beaten_at = float("-inf")

    def register(self, worker_name: str) -> None:
        """A slot of this process; it counts as alive from now on."""
        self.connection.set(self.keys.alive(worker_name), "1", px=self.ttl_ms)
        with self._lock:
            self._names.add(worker_name)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="forgejobs-heartbeat", daemon=True)
                self._thread.start()

    def emit(self, events: Sequence[Event]) -> None:
        """Queue events for the stream (written within FLUSH_SECONDS)."""
        if self.events is not None and events:
            with self._lock:
                self._buffer.extend(events)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            events, self._buffer = self._buffer, []
            names = set(self._names)
        beat = time.monotonic() - self._beaten_at >= self.ttl_ms / 3000
        if not events and not beat:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                if beat:
                    for name in names:
                        pipe.set(self.keys.alive(name), "1", px=self.ttl_ms)
                for event in events:
                    self.events.append(event, pipeline=pipe)  # type: ignore[union-attr]
                pipe.execute()
            if beat:
                self._beaten_at = time.monotonic()
        except redis.RedisError as exc:
            log.warning("heartbeat: %s", exc)
            with self._lock:
                self._buffer[:0] = events  # try again with the next flush

    def close(self) -> None:
        """Write what is buffered and stop (a worker shutting down cleanly)."""
        self._stop.set()
        self.flush()


def reap(
    connection: redis.Redis,
    rq_queues: Sequence[Queue],
    runtime: Runtime,
    keys: Keys,
    stall_timeout: float,
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
            # RQ writes the registry entry and its execution record (worker, creation time) in one MULTI; the
            # job hash gets status "started" and its worker name only later. Judge the entry by its execution.
            pipe.hmget(f"rq:execution:{entry}", ["worker_name", "created_at"])
            pipe.hmget(rq_job_key(entry.split(":", 1)[0]), ["worker_name", "started_at", "status"])
        found = pipe.execute()
    executions = cast(list[list[bytes | None]], found[0::2])
    details = cast(list[list[bytes | None]], found[1::2])
    owners = [(e[0] or d[0] or b"").decode() for e, d in zip(executions, details)]
    with connection.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(keys.alive(owner or "?"))
        alive = pipe.execute()
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=stall_timeout)
    recovered = []
    for index, (queue, registry, entry) in enumerate(candidates):
        if alive[index] or not owners[index]:
            continue  # its worker is alive, or nothing says whose it is (RQ's own cleanup handles those)
        _worker, started, status = details[index]
        began = _execution_time(executions[index][1]) or _start_time(started)
        if began is not None and began > cutoff:
            continue  # moments old: its worker may not have beaten yet
        job_id = entry.split(":", 1)[0]
        if status != JobStatus.STARTED.value.encode():
            # An entry left behind by an execution that ended (or a job since requeued): not running,
            # so there is nothing to recover; running it again would run it twice.
            connection.zrem(registry.key, entry)
            continue
        if _recover(connection, queue, registry, entry, job_id, runtime):
            recovered.append(job_id)
    return recovered


def _recover(
    connection: redis.Redis,
    queue: Queue,
    registry: StartedJobRegistry,
    entry: str,
    job_id: str,
    runtime: Runtime,
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


def _execution_time(raw: bytes | None) -> datetime | None:
    """An RQ execution record's `created_at` (epoch seconds)."""
    try:
        return datetime.fromtimestamp(float(raw), UTC) if raw else None
    except ValueError:
        return None


def _start_time(raw: bytes | None) -> datetime | None:
    """A job hash's `started_at`; RQ writes "" for a job that has not started."""
    try:
        return str_to_date(raw.decode()).replace(tzinfo=UTC) if raw else None
    except ValueError:
        return None
