"""The RQ backend: the only enqueue-side code that imports rq and redis.

RQ stores one function reference (`perform_envelope`) and one argument, the
JSON envelope, with RQ's JSON serializer: no pickle. Priorities are realised
as one RQ queue per (queue, priority), which a worker lists highest first, so
a higher-priority job is always taken before a lower one.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus, Retry, get_current_job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..context import ProgressValue
from ..deadletter import DeadLetter, DeadLetterStore
from ..errors import BackendError
from ..events import Event, EventKind, EventStream
from ..execution import Aborted, DeadLettered, Runtime, Succeeded, execute, stalled
from ..execution import Retry as RetryOutcome
from ..keys import Keys, rq_job_key, rq_queue_name, rq_queue_names, rq_results_key, split_rq_queue_name
from ..settings import Settings
from ..status import Status
from .base import Backend, JobState, Prepared, QueueCounts

ENTRY_POINT = "forgejobs.backends.rq.perform_envelope"

_STATUS = {
    JobStatus.QUEUED: Status.QUEUED,
    JobStatus.DEFERRED: Status.SCHEDULED,
    JobStatus.SCHEDULED: Status.SCHEDULED,
    JobStatus.STARTED: Status.RUNNING,
    JobStatus.FINISHED: Status.SUCCEEDED,
    JobStatus.FAILED: Status.FAILED,
    JobStatus.STOPPED: Status.CANCELLED,
    JobStatus.CANCELED: Status.CANCELLED,
}


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30)


def not_before(moment: datetime) -> datetime:
    """Round up to the whole second: RQ scores scheduled jobs in whole seconds,
    and rounding down would let a job start before it is due."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


class RedisDeadLetters(DeadLetterStore):
    """Dead letters as JSON strings plus a sorted index by time of death, capped at `limit`."""

    def __init__(self, connection: redis.Redis, keys: Keys, limit: int = 10_000) -> None:
        self.connection = connection
        self.keys = keys
        self.limit = limit

    def add(self, record: DeadLetter) -> None:
        with self.connection.pipeline() as pipe:
            pipe.set(self.keys.dead_record(record.id), record.model_dump_json())
            pipe.zadd(self.keys.dead_index, {record.id: record.died_at.timestamp()})
            pipe.zcard(self.keys.dead_index)
            count = pipe.execute()[-1]
        excess = int(count) - self.limit
        if excess > 0:
            oldest = [
                i.decode() for i in cast(list[bytes], self.connection.zrange(self.keys.dead_index, 0, excess - 1))
            ]
            with self.connection.pipeline() as pipe:
                pipe.zrem(self.keys.dead_index, *oldest)
                pipe.delete(*[self.keys.dead_record(i) for i in oldest])
                pipe.execute()

    def get(self, job_id: str) -> DeadLetter | None:
        raw = cast(bytes | None, self.connection.get(self.keys.dead_record(job_id)))
        return DeadLetter.model_validate_json(raw) if raw else None

    def recent(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        ids = cast(list[bytes], self.connection.zrevrange(self.keys.dead_index, offset, offset + limit - 1))
        if not ids:
            return []
        raws = cast(list[bytes | None], self.connection.mget([self.keys.dead_record(i.decode()) for i in ids]))
        return [DeadLetter.model_validate_json(r) for r in raws if r]

    def remove(self, job_id: str) -> bool:
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.keys.dead_index, job_id)
            pipe.delete(self.keys.dead_record(job_id))
            removed, _ = pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(cast(int, self.connection.zcard(self.keys.dead_index)))


def _enqueued_event(job: Prepared, kind: EventKind = EventKind.ENQUEUED) -> Event:
    data: dict[str, Any] = {"priority": job.priority}
    if job.due_at is not None:
        data["due_at"] = job.due_at.isoformat()
    return Event(kind=kind, job_id=job.job_id, name=job.name, queue=job.queue, attempt=1, data=data)


class RQBackend(Backend):
    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys | None = None,
        dead_letter_limit: int = 10_000,
        events_max: int = 100_000,
    ) -> None:
        self.connection = connection
        self.keys = keys or Keys()
        self.dead_letters = RedisDeadLetters(connection, self.keys, dead_letter_limit)
        self.events = EventStream(connection, self.keys.events, maxlen=events_max)
        self._queues: dict[str, Queue] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RQBackend:
        return cls.for_connection(connect(settings.redis_url_or_default()), settings)

    @classmethod
    def for_connection(cls, connection: redis.Redis, settings: Settings) -> RQBackend:
        return cls(connection, Keys(settings.key_prefix), settings.dead_letter_limit, settings.events_max)

    def rq_queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = Queue(name, connection=self.connection, serializer=JSONSerializer)
            self._queues[name] = queue
        return queue

    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        """Store the batch in one MULTI/EXEC. A dropped connection is retried twice: ids are fixed, so a
        retry rewrites the same jobs (and, if the first write did land, queues their ids a second time)."""
        try:
            try:
                return self._enqueue_all(jobs)
            except (redis.ConnectionError, redis.TimeoutError):
                for attempt in Retrying(
                    retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
                    stop=stop_after_attempt(2),
                    wait=wait_exponential(multiplier=0.05, max=1),
                    reraise=True,
                ):
                    with attempt:
                        return self._enqueue_all(jobs)
        except redis.RedisError as exc:
            raise BackendError(f"could not enqueue {len(jobs)} job(s): {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - Retrying re-raises

    def _enqueue_all(self, jobs: Sequence[Prepared]) -> set[str]:
        existing: set[str] = set()
        now_by_queue: dict[str, list[Prepared]] = {}
        later: list[Prepared] = []
        for job in jobs:
            if job.unique:
                continue
            if job.due_at is None:
                now_by_queue.setdefault(rq_queue_name(job.queue, job.priority), []).append(job)
            else:
                later.append(job)
        if now_by_queue or later:
            with self.connection.pipeline() as pipe:
                for name, group in now_by_queue.items():
                    self._push_many(name, group, pipe)
                for job in later:
                    self._enqueue_one(job, pipe)
                for job in jobs:
                    if not job.unique:
                        self.events.append(_enqueued_event(job), pipeline=pipe)
                pipe.execute()
        for job in jobs:
            if job.unique:
                try:
                    self._enqueue_one(job, None)  # RQ checks and stores atomically (a Lua script)
                    self.events.append(_enqueued_event(job))
                except DuplicateJobError:
                    existing.add(job.job_id)
                    self.events.append(_enqueued_event(job, EventKind.DEDUPLICATED))
        return existing

    def _push_many(self, rq_queue: str, jobs: Sequence[Prepared], pipe: Any) -> None:
        """Write RQ job hashes and queue entries for jobs that start now.

        Equivalent to RQ's `Queue.enqueue_many` (tests/test_rq_format.py checks the stored hashes are
        identical), but one RQ `Job` is built per batch as a template instead of one per job: building
        each costs more than the rest of the enqueue, mostly in RQ checking its serializer.
        """
        queue = self.rq_queue(rq_queue)
        templates: dict[tuple[str, float, float, float], dict[str, Any]] = {}
        for job in jobs:
            shape = (job.name, job.timeout, job.result_ttl, job.failure_ttl)
            mapping = templates.get(shape)
            if mapping is None:
                mapping = templates[shape] = self._template(queue, job)
            data = zlib.compress(JSONSerializer.dumps((ENTRY_POINT, None, [job.envelope], {})))
            pipe.hset(rq_job_key(job.job_id), mapping={**mapping, "data": data})
        pipe.rpush(queue.key, *[job.job_id for job in jobs])
        pipe.sadd(queue.redis_queues_keys, queue.key)

    @staticmethod
    def _template(queue: Queue, job: Prepared) -> dict[str, Any]:
        rq_job = queue.create_job(
            ENTRY_POINT,
            args=[""],
            job_id="template",
            description=job.name,
            timeout=max(1, math.ceil(job.timeout)),
            result_ttl=math.ceil(job.result_ttl),
            failure_ttl=math.ceil(job.failure_ttl),
            status=JobStatus.QUEUED,
        )
        rq_job.origin = queue.name
        rq_job.enqueued_at = rq_now()
        mapping: dict[str, Any] = rq_job.to_dict()
        mapping["status"] = JobStatus.QUEUED.value
        return mapping

    def forget(self, job_id: str) -> None:
        job = self._fetch(job_id)
        if job is not None:
            job.delete(remove_from_queue=True, delete_dependents=False)

    def _enqueue_one(self, job: Prepared, pipe: Any | None) -> None:
        queue = self.rq_queue(rq_queue_name(job.queue, job.priority))
        rq_job = queue.create_job(
            ENTRY_POINT,
            args=[job.envelope],
            job_id=job.job_id,
            description=job.name,
            timeout=max(1, math.ceil(job.timeout)),
            result_ttl=math.ceil(job.result_ttl),
            failure_ttl=math.ceil(job.failure_ttl),
            status=JobStatus.SCHEDULED if job.due_at else JobStatus.QUEUED,
        )
        if job.due_at is not None:
            queue.schedule_job(rq_job, not_before(job.due_at), pipeline=pipe, unique=job.unique)
            # RQ scores in whole seconds; store the exact due time (forgejobs' scheduler scans with it).
            target = pipe if pipe is not None else self.connection
            target.zadd(ScheduledJobRegistry(queue=queue).key, {job.job_id: job.due_at.timestamp()}, xx=True)
        else:
            queue.enqueue_job(rq_job, pipeline=pipe, unique=job.unique)

    def _fetch(self, job_id: str) -> RQJob | None:
        try:
            return RQJob.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def state(self, job_id: str) -> JobState:
        job = self._fetch(job_id)
        if job is None:
            return JobState(Status.UNKNOWN)
        status = _STATUS.get(job.get_status(refresh=False) or JobStatus.QUEUED, Status.UNKNOWN)
        progress = job.meta.get("progress")
        if status is Status.SUCCEEDED:
            return JobState(status, result=job.return_value(refresh=True), progress=progress)
        if status is Status.FAILED:
            record = self.dead_letters.get(job_id)
            error = record.error if record else _last_line(job.latest_result())
            return JobState(status, error=error, progress=progress)
        return JobState(status, progress=progress)

    def counts(self, queues: Sequence[str]) -> list[QueueCounts]:
        dead_by_queue: dict[str, int] = {}
        for record in self.dead_letters.recent(limit=self.dead_letters.count() or 1):
            dead_by_queue[record.queue or "?"] = dead_by_queue.get(record.queue or "?", 0) + 1
        # Raw LLEN/ZCARD: RQ's `registry.count` runs its cleanup, which would fail stalled jobs
        # without the worker's handlers (no retry, no dead letter).
        registries = (ScheduledJobRegistry, StartedJobRegistry, FinishedJobRegistry)
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in rq_queue_names(queue):
                    q = self.rq_queue(name)
                    pipe.llen(q.key)
                    for registry in registries:
                        pipe.zcard(registry(queue=q).key)
            counts = iter(int(n) for n in pipe.execute())
        rows = []
        for queue in queues:
            totals = [0, 0, 0, 0]
            for _name in rq_queue_names(queue):
                for i in range(4):
                    totals[i] += next(counts)
            waiting, scheduled, running, finished = totals
            rows.append(QueueCounts(queue, waiting, scheduled, running, finished, dead_by_queue.get(queue, 0)))
        return rows

    _CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

    def claim(self, jobs: Sequence[Prepared]) -> dict[str, str]:
        wanted = [job for job in jobs if job.dedupe is not None]
        if not wanted:
            return {}
        script = self.connection.register_script(self._CLAIM)
        with self.connection.pipeline(transaction=False) as pipe:
            for job in wanted:
                assert job.dedupe is not None
                ttl_ms = max(1, int(job.dedupe_ttl * 1000))
                script(keys=[self.keys.dedupe(job.dedupe)], args=[job.job_id, ttl_ms], client=pipe)
            holders = pipe.execute()
        taken = {job.job_id: h.decode() for job, h in zip(wanted, holders) if h and h.decode() != job.job_id}
        for job in wanted:
            if job.job_id in taken:
                event = _enqueued_event(job, EventKind.DEDUPLICATED)
                self.events.append(event.model_copy(update={"data": {"existing": taken[job.job_id]}}))
        return taken

    def unclaim(self, jobs: Sequence[Prepared]) -> None:
        keys = [self.keys.dedupe(job.dedupe) for job in jobs if job.dedupe is not None]
        if keys:
            self.connection.delete(*keys)

    def debounce(self, key: str, build: Callable[[str], Prepared], new_id: str, ttl: float) -> tuple[str, bool]:
        pointer = self.keys.debounce(key)
        ttl_ms = max(1, int(ttl * 1000))

        def transaction(pipe: Any) -> tuple[str, bool]:
            raw = pipe.get(pointer)
            if raw:
                current = raw.decode()
                job_key = rq_job_key(current)
                pipe.watch(job_key)  # a scheduler moving it to its queue meanwhile makes us try again
                status, origin = pipe.hmget(job_key, ["status", "origin"])
                if status == JobStatus.SCHEDULED.value.encode() and origin:
                    job = build(current)
                    assert job.due_at is not None
                    data = zlib.compress(JSONSerializer.dumps((ENTRY_POINT, None, [job.envelope], {})))
                    scheduled = ScheduledJobRegistry(origin.decode(), connection=self.connection).key
                    pipe.multi()
                    pipe.hset(job_key, "data", data)
                    pipe.zadd(scheduled, {current: job.due_at.timestamp()})
                    pipe.pexpire(pointer, ttl_ms)
                    return current, True
            job = build(new_id)
            assert job.due_at is not None
            queue = self.rq_queue(rq_queue_name(job.queue, job.priority))
            # Written field by field (from RQ's own template): RQ's schedule_job sends its ZADD outside
            # the pipeline, which a retried WATCH transaction would leave behind.
            data = zlib.compress(JSONSerializer.dumps((ENTRY_POINT, None, [job.envelope], {})))
            mapping = {**self._template(queue, job), "status": JobStatus.SCHEDULED.value, "data": data}
            pipe.multi()
            pipe.hset(rq_job_key(new_id), mapping=mapping)
            pipe.zadd(ScheduledJobRegistry(queue=queue).key, {new_id: job.due_at.timestamp()})
            pipe.sadd(queue.redis_queues_keys, queue.key)
            pipe.set(pointer, new_id, px=ttl_ms)
            return new_id, False

        result = cast(
            tuple[str, bool],
            self.connection.transaction(transaction, pointer, value_from_callable=True),  # type: ignore[arg-type]
        )
        if not result[1]:
            job = build(result[0])
            self.events.append(_enqueued_event(job))
        return result

    LOG_LINES = 1000  # kept per job; older lines are dropped
    LOG_TTL = 7 * 86400

    def append_log(self, job_id: str, line: str) -> None:
        key = self.keys.log(job_id)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.rpush(key, line)
            pipe.ltrim(key, -self.LOG_LINES, -1)
            pipe.expire(key, self.LOG_TTL)
            pipe.execute()

    def logs(self, job_id: str) -> list[str]:
        return [b.decode() for b in cast(list[bytes], self.connection.lrange(self.keys.log(job_id), 0, -1))]

    # -- queue administration ------------------------------------------------------------

    def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self.connection.sadd(self.keys.paused, queue)
        else:
            self.connection.srem(self.keys.paused, queue)

    def paused(self) -> set[str]:
        return {m.decode() for m in cast(set[bytes], self.connection.smembers(self.keys.paused))}

    def _job_ids(self, queue: str, registries: Sequence[type[Any]]) -> dict[str, list[str]]:
        """Job ids per RQ queue key or registry key, for the queue's ten sub-queues."""
        found: dict[str, list[str]] = {}
        for name in rq_queue_names(queue):
            q = self.rq_queue(name)
            found[q.key] = [i.decode() for i in cast(list[bytes], self.connection.lrange(q.key, 0, -1))]
            for registry_class in registries:
                registry = registry_class(queue=q)
                entries = cast(list[bytes], self.connection.zrange(registry.key, 0, -1))
                found[registry.key] = [e.decode().split(":", 1)[0] for e in entries]
        return found

    def _delete(self, found: dict[str, list[str]]) -> int:
        ids = {job_id for ids in found.values() for job_id in ids}
        with self.connection.pipeline() as pipe:
            for key in found:
                pipe.delete(key)
            for job_id in ids:
                pipe.delete(rq_job_key(job_id), rq_results_key(job_id))
            pipe.execute()
        return len(ids)

    def drain(self, queue: str) -> int:
        return self._delete(self._job_ids(queue, [ScheduledJobRegistry]))

    def running(self, queue: str) -> int:
        keys = [StartedJobRegistry(queue=self.rq_queue(n)).key for n in rq_queue_names(queue)]
        return sum(int(cast(int, self.connection.zcard(key))) for key in keys)

    def obliterate(self, queue: str) -> int:
        registries = [ScheduledJobRegistry, FinishedJobRegistry, FailedJobRegistry, StartedJobRegistry]
        removed = self._delete(self._job_ids(queue, registries))
        for record in self.dead_letters.recent(limit=self.dead_letters.count() or 1):
            if record.queue == queue:
                self.dead_letters.remove(record.id)
        self.set_paused(queue, False)
        return removed

    def report_progress(self, job_id: str, value: ProgressValue) -> None:
        job = get_current_job()
        if job is None or job.id != job_id:
            job = self._fetch(job_id)
        if job is not None:
            job.meta["progress"] = value
            job.save_meta()

    def close(self) -> None:
        self.connection.close()


def _last_line(result: Any) -> str | None:
    text = getattr(result, "exc_string", None)
    if not text:
        return None
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


# -- the worker side ----------------------------------------------------------------

_runtime: Runtime | None = None
_running: set[int] = set()  # idents of threads inside a handler right now


def handler_running(thread_id: int | None = None) -> bool:
    """Whether a thread (default: this one) is inside `perform_envelope`'s execution right now.

    A second SIGTERM aborts a job only then; anywhere else (waiting for work,
    RQ's bookkeeping) interrupting could lose the job, so the worker just stops
    after it.
    """
    return (thread_id if thread_id is not None else threading.get_ident()) in _running


def install_runtime(runtime: Runtime | None) -> None:
    """Tell `perform_envelope` which registry and dead-letter store to use (the worker does this)."""
    global _runtime
    _runtime = runtime


class PreciseRetry(Retry):
    """RQ's Retry, carrying the exact due time; the slot worker stores it over RQ's whole-second score."""

    def __init__(self, max: int, interval: int, due_at: float) -> None:
        super().__init__(max=max, interval=interval)
        self.due_at = due_at


def enqueue_due(connection: redis.Redis, rq_queues: Sequence[Queue], now: float) -> int:
    """Move jobs whose scheduled time has passed onto their queues. Returns how many.

    RQ's own scheduler compares whole seconds; this compares the exact scores
    forgejobs writes, so a delayed job or a retry starts within one scan
    interval of its due time. One round trip finds the due ids of every queue.
    """
    registries = [ScheduledJobRegistry(queue=q) for q in rq_queues]
    with connection.pipeline(transaction=False) as pipe:
        for registry in registries:
            pipe.zrangebyscore(registry.key, 0, now, start=0, num=1000)
        found = cast(list[list[bytes]], pipe.execute())
    moved = 0
    for rq_queue, registry, raw_ids in zip(rq_queues, registries, found):
        if not raw_ids:
            continue
        job_ids = [i.decode() for i in raw_ids]
        jobs = RQJob.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
        with connection.pipeline() as pipe:
            for job in jobs:
                if job is not None:
                    rq_queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
            pipe.zrem(registry.key, *job_ids)
            pipe.execute()
        moved += len(job_ids)
    return moved


class DeadLetteredError(Exception):
    """Raised to RQ so it marks the job failed; the dead letter is already written."""


def perform_envelope(raw: str) -> Any:
    """The one function RQ ever runs. Decides nothing itself: execution does."""
    if _runtime is None:
        raise BackendError("no forgejobs runtime installed in this process; run jobs with `forgejobs worker`")
    job = get_current_job()
    assert job is not None
    queue, _priority = split_rq_queue_name(job.origin)
    me = threading.get_ident()
    _running.add(me)
    try:
        outcome = execute(raw, _runtime, job_id=job.id, queue=queue)
    finally:
        _running.discard(me)
    if isinstance(outcome, Succeeded):
        return outcome.value
    if isinstance(outcome, (RetryOutcome, Aborted)):
        delay = outcome.delay if isinstance(outcome, RetryOutcome) else 0.0
        job.args = [outcome.envelope.encode()]
        return PreciseRetry(max=(job.number_of_retries or 0) + 1, interval=_interval(delay), due_at=time.time() + delay)
    assert isinstance(outcome, DeadLettered)
    raise DeadLetteredError(f"{outcome.record.reason.value}: {outcome.record.error}")


def _interval(delay: float) -> int:
    """Whole seconds for RQ such that the retry is not due before `delay` has passed.

    RQ schedules at floor(now) + interval, so the fraction of the current
    second must be added before rounding up.
    """
    if delay <= 0:
        return 0
    return math.ceil(delay + (time.time() % 1) + 0.01)


def on_abandoned(job: RQJob) -> None:
    """RQ found `job` in a started registry past its deadline: its worker died.

    Execution decides (retry per backoff, or dead-letter as stalled); a retry is
    handed back to RQ, which reschedules the job after this call.
    """
    if _runtime is None:
        return
    raw = job.args[0] if job.args else ""
    queue, _priority = split_rq_queue_name(job.origin)
    outcome = stalled(raw, _runtime, job_id=job.id, queue=queue)
    if isinstance(outcome, RetryOutcome):
        job.args = [outcome.envelope.encode()]
        job.retries_left = 1
        job.retry_intervals = [max(1, _interval(outcome.delay))]
