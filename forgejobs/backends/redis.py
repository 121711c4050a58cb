"""The Redis backend: forgejobs' own storage, written by the runtime's scripts.

A job is one hash under its queue's hash tag (`forgejobs:{email}:job:<id>`) plus its entry in one
of the queue's structures: a wait list per priority, the delayed set, the active hash (running,
with the slot holding its lease), the stalled list, or the done/failed sets kept for retention.
Enqueue is one script call (hash, list entry and "enqueued" event together), so a single enqueue
is one round trip and never half-written. docs/decisions/0007 lists every key.

The worker side (taking, finishing and recovering jobs) is `forgejobs.runtime`; this module is
what producers, the CLI and the handle use.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from ..context import ProgressValue
from ..deadletter import DeadLetter, DeadLetterStore
from ..envelope import EnvelopeError
from ..envelope import decode as decode_envelope
from ..errors import BackendError, BackendUnavailable
from ..events import Event, EventKind, EventStream
from ..keys import PRIORITIES, Keys
from ..runtime.corrupt import raw_text, read_record, shown_id
from ..runtime.scripts import Scripts
from ..runtime.scripts import source as script_source
from ..settings import Settings
from ..status import Status
from .base import Backend, Cancellation, JobState, Prepared, QueueCounts

if TYPE_CHECKING:
    from ..inspection import JobDetail, JobSummary, State

BATCH = 500
"""Jobs per enqueue script call (Lua's unpack has a limit; one call holds the server briefly)."""

_STATUS = {
    b"queued": Status.QUEUED,
    b"scheduled": Status.SCHEDULED,
    b"succeeded": Status.SUCCEEDED,
    b"failed": Status.FAILED,
    b"cancelled": Status.CANCELLED,
}


STATE_FIELDS = ["s", "r", "e", "pg"]
"""The job-hash fields `state_from` reads: status, result, error, progress."""


def state_needs_dead_letter(fields: Sequence[bytes | None], running: object) -> bool:
    """Whether `state_from` needs the job's dead letter (a failed job shows the dead letter's error)."""
    return not running and fields[0] is not None and _STATUS.get(fields[0]) is Status.FAILED


def state_from(queue: str, fields: Sequence[bytes | None], running: object, record: DeadLetter | None) -> JobState:
    """A job's state from its hash's `STATE_FIELDS`, whether the active hash holds it, and its dead letter
    (read only when `state_needs_dead_letter`); shared by the sync and asyncio backends."""
    status, result, error, progress = fields
    if status is None:
        return JobState(Status.UNKNOWN)
    progress_value = json.loads(progress) if progress else None
    if running:
        return JobState(Status.RUNNING, progress=progress_value, extra={"queue": queue})
    kind = _STATUS.get(status, Status.UNKNOWN)
    if kind is Status.SUCCEEDED:
        return JobState(kind, result=json.loads(result) if result else None, progress=progress_value)
    if kind is Status.FAILED:
        text = record.error if record else (error.decode("utf-8", "replace") if error else None)
        return JobState(kind, error=text, progress=progress_value)
    return JobState(kind, progress=progress_value, extra={"queue": queue})


SENTINEL_SCHEME = "redis+sentinel"


def connect(url: str, timeout: float = 5.0, connect_timeout: float | None = None) -> redis.Redis:
    """A connection to `url` on which no call waits on a silent (frozen, partitioned) Redis longer than
    `timeout` (a producer's: FORGEJOBS_ENQUEUE_TIMEOUT, at least 2 s; a worker's: longer than its blocking
    waits). `redis+sentinel://[:password@]host:port[,host:port...]/service/db` asks those Sentinels for
    the current primary of `service` and asks again after a failover."""
    socket_timeout = max(timeout, 2.0)
    connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 2.0)
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        return _sentinel_primary(url, socket_timeout, connect_timeout)
    return redis.Redis.from_url(
        url, health_check_interval=30, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
    )


def _sentinel_primary(url: str, socket_timeout: float, connect_timeout: float) -> redis.Redis:
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BackendError(
                f"{SENTINEL_SCHEME} URL: {item!r} is not host:port (expected {SENTINEL_SCHEME}://host:port[,host:port]/service/db)"
            )
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BackendError(f"{SENTINEL_SCHEME} URL: the path must be /service_name[/db], not {parts.path!r}")
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    sentinel = Sentinel(hosts, sentinel_kwargs=options, **options)  # type: ignore[no-untyped-call]
    db = int(path[1]) if len(path) == 2 else 0
    primary = sentinel.master_for(  # type: ignore[no-untyped-call]
        path[0], db=db, password=parts.password, health_check_interval=30
    )
    return cast(redis.Redis, primary)


def describe(connection: redis.Redis) -> str:
    """Where a connection points, for messages: `redis://host:port/db` or the socket path; never a password."""
    pool = connection.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        return f"{SENTINEL_SCHEME}://{pool.service_name}/{kwargs.get('db', 0)} (primary from Sentinel)"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def epoch_ms(moment: datetime) -> int:
    """A due time in whole ms, rounded up so a job never starts before it is due."""
    return math.ceil(moment.timestamp() * 1000)


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
        return int(self.connection.zcard(self.keys.dead_index))


def _event_data(job: Prepared) -> str:
    if job.due_at is None:
        return f'{{"priority":{job.priority}}}'
    return f'{{"priority":{job.priority},"due_at":"{job.due_at.isoformat()}"}}'


def enqueue_script_call(
    keys: Keys, group: Sequence[Prepared], events_max: int, *, retry: bool = False
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one enqueue.lua call for a group of jobs of one shape (queue, name, priority, due time).

    Shared by the sync and the asyncio backends, so both store exactly the same records and events.
    `retry` marks a repeat of a call whose reply was lost: jobs the first try stored are skipped.
    """
    first = group[0]
    qk = keys.queue(first.queue)  # cached: its key names are built once
    args: list[Any] = [
        first.priority,
        epoch_ms(first.due_at) if first.due_at is not None else "",
        "1" if first.unique else ("2" if retry else ""),
        first.concurrency_limit or "",
        first.name,
        first.queue,
        str(time.time_ns() // 1_000_000),  # the event's time, ms since the epoch
        _event_data(first),
        events_max,
    ]
    for job in group:
        args += (job.job_id, job.envelope, job.concurrency_key or "")
    names = [
        qk.wait(first.priority),
        qk.delayed,
        qk.marker,
        keys.events,
        *(qk.job(j.job_id) for j in group),
        qk.metrics,
    ]
    return names, args


class RedisBackend(Backend):
    LOG_LINES = 1000  # kept per job; older lines are dropped
    LOG_TTL = 7 * 86400

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys | None = None,
        dead_letter_limit: int = 10_000,
        events_max: int = 100_000,
        queues: Iterable[str] = (),
        enqueue_timeout: float = 5.0,
    ) -> None:
        self.connection = connection
        self.enqueue_timeout = enqueue_timeout
        self.keys = keys or Keys()
        self.dead_letters = RedisDeadLetters(connection, self.keys, dead_letter_limit)
        self.events = EventStream(connection, self.keys.events, maxlen=events_max)
        self.scripts = Scripts(connection)
        self.queues: set[str] = set(queues)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisBackend:
        return cls.for_connection(connect(settings.redis_url_or_default(), settings.enqueue_timeout), settings)

    @classmethod
    def for_connection(cls, connection: redis.Redis, settings: Settings) -> RedisBackend:
        return cls(
            connection,
            Keys(settings.key_prefix),
            settings.dead_letter_limit,
            settings.events_max,
            enqueue_timeout=settings.enqueue_timeout,
        )

    def use_queues(self, queues: Iterable[str]) -> None:
        """The queues to look in when a job is asked for by id alone."""
        self.queues.update(queues)

    # -- enqueue ------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Prepared]) -> set[str]:
        """Store the jobs: one script call per (queue, priority, due time) group of up to BATCH jobs, all
        sent in one round trip. Each call is atomic; a call that fails stores none of its jobs.

        While Redis cannot be reached (refused or dropped connections, timeouts) the call is sent again with
        exponential backoff and jitter for up to `enqueue_timeout` seconds, then `BackendUnavailable` is
        raised. A retry skips the jobs an earlier try may have stored (the ids are fixed before the first),
        so it never queues a job twice; but a call whose reply was lost may have stored its jobs although
        the enqueue raised."""
        groups = self._groups(jobs)
        tries = 1
        started = time.monotonic()
        try:
            try:
                return self._enqueue_groups(groups, retry=False)  # the common case, without the retry machinery
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            retrying = Retrying(
                retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
                stop=stop_after_delay(max(0.0, self.enqueue_timeout - (time.monotonic() - started))),
                wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
                reraise=True,
            )
            for attempt in retrying:
                with attempt:
                    tries += 1
                    return self._enqueue_groups(groups, retry=True)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(
                f"could not enqueue {len(jobs)} job(s): Redis at {describe(self.connection)} did not answer within "
                f"{self.enqueue_timeout:g}s ({tries} tries): {exc}"
            ) from exc
        except redis.RedisError as exc:
            raise BackendError(f"could not enqueue {len(jobs)} job(s): {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - Retrying re-raises

    def _enqueue_groups(self, groups: list[list[Prepared]], *, retry: bool) -> set[str]:
        if len(groups) == 1:
            return set(self._enqueue_call(groups[0], self.connection, retry=retry))  # the common case: no pipeline
        with self.connection.pipeline(transaction=False) as pipe:
            for group in groups:
                self._enqueue_call(group, pipe, retry=retry)
            replies = pipe.execute()
        return {i.decode() for reply in replies for i in reply}

    @staticmethod
    def _groups(jobs: Sequence[Prepared]) -> list[list[Prepared]]:
        if len(jobs) == 1:
            return [list(jobs)]

        def shape(job: Prepared) -> tuple[Any, ...]:
            due = epoch_ms(job.due_at) if job.due_at is not None else -1
            return (job.queue, job.name, job.priority, due, job.unique, job.concurrency_limit)

        groups: list[list[Prepared]] = []
        for _, members in groupby(jobs, key=shape):
            batch = list(members)
            groups.extend(batch[i : i + BATCH] for i in range(0, len(batch), BATCH))
        return groups

    def _enqueue_call(self, group: list[Prepared], client: Any, *, retry: bool = False) -> Any:
        keys, args = enqueue_script_call(self.keys, group, self.events.maxlen, retry=retry)
        reply = self.scripts.enqueue(keys=keys, args=args, client=client)
        return {i.decode() for i in reply} if client is self.connection else reply

    # -- reading ----------------------------------------------------------------------

    def find_queue(self, job_id: str) -> str | None:
        """The queue whose keys hold `job_id`: the known queues first, then (a job of a queue this process
        does not declare, e.g. the CLI pointed at another application's Redis) a SCAN."""
        queues = sorted(self.queues)
        if queues:
            with self.connection.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.exists(self.keys.queue(queue).job(job_id))
                found = pipe.execute()
            hit = next((q for q, exists in zip(queues, found) if exists), None)
            if hit is not None:
                return hit
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in job_id)
        for key in self.connection.scan_iter(match=f"{self.keys.prefix}:{{*}}:job:{escaped}", count=1000):
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            start, end = text.find(":{") + 2, text.find("}:job:")
            if start > 1 and end > start:
                return text[start:end]
        return None

    def state(self, job_id: str, queue: str | None = None) -> JobState:
        queue = queue or self.find_queue(job_id)
        if queue is None:
            return JobState(Status.UNKNOWN)
        qk = self.keys.queue(queue)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hmget(qk.job(job_id), STATE_FIELDS)
            pipe.hexists(qk.active, job_id)
            fields, running = pipe.execute()
        record = self.dead_letters.get(job_id) if state_needs_dead_letter(fields, running) else None
        return state_from(queue, fields, running, record)

    def _parked(self, queue: str) -> list[bytes]:
        """The parked-job lists of the queue's concurrency keys."""
        qk = self.keys.queue(queue)
        return [qk.parked_jobs(k) for k in sorted(cast(set[bytes], self.connection.smembers(qk.parked)))]

    def counts(self, queues: Sequence[str]) -> list[QueueCounts]:
        """Per queue: waiting (including jobs parked behind a full concurrency key, and stalled jobs awaiting
        their retry), scheduled, running, succeeded and kept, dead-lettered."""
        dead_by_queue: dict[str, int] = {}
        for record in self.dead_letters.recent(limit=self.dead_letters.count() or 1):
            dead_by_queue[record.queue or "?"] = dead_by_queue.get(record.queue or "?", 0) + 1
        parked = {queue: self._parked(queue) for queue in queues}
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in queues:
                qk = self.keys.queue(queue)
                lists: list[Any] = [*qk.waits, qk.stalled, *parked[queue]]
                for key in lists:
                    pipe.llen(key)
                pipe.zcard(qk.delayed)
                pipe.hlen(qk.active)
                pipe.zcard(qk.done)
                pipe.zcard(qk.cancelled)
            replies = iter(int(n) for n in pipe.execute())
        rows = []
        for queue in queues:
            waiting = sum(next(replies) for _ in range(len(PRIORITIES) + 1 + len(parked[queue])))
            scheduled, running, finished, cancelled = next(replies), next(replies), next(replies), next(replies)
            dead = dead_by_queue.get(queue, 0)
            rows.append(QueueCounts(queue, waiting, scheduled, running, finished, dead, cancelled))
        return rows

    def pending(self, queues: Iterable[str], horizon_ms: float = 0.0) -> int:
        """Jobs waiting, running, stalled, or delayed and due within `horizon_ms` of now (client clock)."""
        until = time.time() * 1000 + horizon_ms
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in queues:
                qk = self.keys.queue(queue)
                for key in qk.waits:
                    pipe.llen(key)
                pipe.llen(qk.stalled)
                pipe.hlen(qk.active)
                pipe.zcount(qk.delayed, "-inf", until)
            return sum(int(n) for n in pipe.execute())

    # -- inspection -----------------------------------------------------------------------

    def job_detail(self, job_id: str) -> JobDetail | None:
        """Everything stored about one job: its record and its place in the queue's structures read in one
        MULTI (a consistent snapshot), then its position on a wait list and its dead letter."""
        from ..inspection import JobDetail, State

        dead = self.dead_letters.get(job_id)
        queue = self.find_queue(job_id)
        if queue is None:
            return _detail_from_dead_letter(dead) if dead is not None else None
        qk = self.keys.queue(queue)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.hgetall(qk.job(job_id))
            pipe.hget(qk.active, job_id)
            pipe.zscore(qk.delayed, job_id)
            pipe.zscore(qk.done, job_id)
            pipe.zscore(qk.failed, job_id)
            pipe.lpos(qk.stalled, job_id)
            pipe.lrange(qk.log(job_id), 0, -1)
            pipe.zscore(qk.cancelled, job_id)
            fields, owner, due, done, failed, stalled, logs, cancelled = pipe.execute(raise_on_error=False)
        if isinstance(fields, Exception):  # not a hash: a corrupt record, shown as it is
            kind, content = read_record(self.connection, qk.job(job_id))
            fields = {b"raw": f"{kind}: {content}".encode()}
        if not fields:
            return _detail_from_dead_letter(dead) if dead is not None else None
        record = _Record(job_id, queue, fields)
        state, status = record.place(owner, due, stalled)
        position = None
        if state is State.WAITING and record.priority is not None:
            position = self.connection.lpos(qk.wait(record.priority), job_id)
            if position is None and record.concurrency_key:
                parked: Any = qk.parked_jobs(record.concurrency_key.encode())
                position = self.connection.lpos(parked, job_id)
                state = State.PARKED if position is not None else state
        error = dead.error if dead is not None and state is State.FAILED else record.error
        attempts = record.history
        if dead is not None and len(dead.attempts) >= len(attempts):
            attempts = dead.attempts  # the dead letter also holds the last attempt
        expiry = {State.SUCCEEDED: done, State.FAILED: failed, State.CANCELLED: cancelled}.get(state)
        summary = record.summary(state, owner=owner, due=due, expires=expiry, error=error)
        return JobDetail(
            **dict(summary),
            status=status,
            payload=record.envelope.payload if record.envelope is not None else None,
            options=record.options(),
            attempts=attempts,
            result=record.result,
            traceback=dead.traceback or None if dead is not None else None,
            logs=[raw_text(line) for line in logs] if isinstance(logs, list) else [],
            position=position,
            dead_letter=dead,
            raw=record.raw,
        )

    def list_jobs(self, queue: str, state: State, *, name: str | None = None, limit: int = 50) -> list[JobSummary]:
        """Up to `limit` jobs of `queue` in `state`. Ids are read from the state's structure a chunk at a time
        and their records in one round trip per chunk, so a long list costs nothing past `limit`; a list that
        changes meanwhile may show a job twice or miss one, never a job that was not there."""
        from ..inspection import State

        found: list[JobSummary] = []
        if state is State.DEAD:  # newest first, a page at a time: the index spans every queue
            offset = 0
            while page := self.dead_letters.recent(limit=self._CHUNK, offset=offset):
                for letter in page:
                    if letter.queue == queue and name in (None, letter.name):
                        found.append(_detail_from_dead_letter(letter).summary())
                        if len(found) >= limit:
                            return found
                offset += self._CHUNK
            return found
        qk = self.keys.queue(queue)
        for chunk in self._ids_in(queue, state):
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id, _ in chunk:
                    key: Any = qk.job_bytes(job_id)
                    pipe.hgetall(key)
                replies = pipe.execute(raise_on_error=False)
            for (job_id, where), fields in zip(chunk, replies):
                if isinstance(fields, Exception) or not fields:
                    fields = {b"raw": b"(no job record)"} if not fields else {b"raw": b"(not a hash)"}
                record = _Record(shown_id(job_id), queue, fields)
                if name is not None and record.name != name:
                    continue
                found.append(record.summary(state, **where))
                if len(found) >= limit:
                    return found
        return found

    _CHUNK = 200

    def _ids_in(self, queue: str, state: State) -> Iterator[list[tuple[bytes, dict[str, Any]]]]:
        """Chunks of (id, what the structure says about it) in the order the state lists them."""
        from ..inspection import State

        qk = self.keys.queue(queue)
        conn = self.connection
        if state is State.ACTIVE:
            owners = cast(dict[bytes, bytes], conn.hgetall(qk.active))
            yield sorted(((i, {"owner": o}) for i, o in owners.items()), key=lambda item: _owner(item[1]["owner"])[1])
        elif state is State.WAITING:
            for key in qk.waits:
                yield from self._list_chunks(key)
        elif state is State.PARKED:
            for ck in sorted(cast(set[bytes], conn.smembers(qk.parked))):
                yield from self._list_chunks(qk.parked_jobs(ck))
        elif state is State.STALLED:
            yield from self._list_chunks(qk.stalled)
        elif state is State.DELAYED:
            yield from self._zset_chunks(qk.delayed, "due", reverse=False)
        elif state is State.SUCCEEDED:
            yield from self._zset_chunks(qk.done, "expires", reverse=True)
        elif state is State.FAILED:
            yield from self._zset_chunks(qk.failed, "expires", reverse=True)
        elif state is State.CANCELLED:
            yield from self._zset_chunks(qk.cancelled, "expires", reverse=True)

    def _list_chunks(self, key: Any) -> Iterator[list[tuple[bytes, dict[str, Any]]]]:
        start = 0
        while True:
            ids = cast(list[bytes], self.connection.lrange(key, start, start + self._CHUNK - 1))
            if ids:
                yield [(i, {}) for i in ids]
            if len(ids) < self._CHUNK:
                return
            start += self._CHUNK

    def _zset_chunks(self, key: str, field: str, *, reverse: bool) -> Iterator[list[tuple[bytes, dict[str, Any]]]]:
        start = 0
        while True:
            read = self.connection.zrevrange if reverse else self.connection.zrange
            pairs = cast(list[tuple[bytes, float]], read(key, start, start + self._CHUNK - 1, withscores=True))
            if pairs:
                yield [(i, {field: score}) for i, score in pairs]
            if len(pairs) < self._CHUNK:
                return
            start += self._CHUNK

    # -- cancel -----------------------------------------------------------------------------

    def cancel(self, job_id: str, *, keep_for: Callable[[str | None], float] = lambda name: 3600.0) -> Cancellation:
        """Cancel a job (see `cancel.lua`): a waiting, parked, delayed or stalled one is recorded as cancelled
        at once; a running one is marked, and its worker's handler sees `ctx.cancelled` within a heartbeat.
        `keep_for(job name)`: seconds its record is kept afterwards (its result TTL, as a succeeded job's)."""
        queue = self.find_queue(job_id)
        if queue is None:
            return Cancellation(job_id, None, "unknown", None, None)
        qk = self.keys.queue(queue)
        raw = self.connection.hget(qk.job(job_id), "d")
        try:
            name = decode_envelope(cast(bytes, raw)).name if raw else None
        except EnvelopeError:
            name = None
        keys = [*qk.standard, qk.stalled, self.keys.events, qk.metrics, qk.cancelled, qk.cancels]
        args: list[Any] = [
            qk.job_prefix,
            qk.ck_prefix,
            job_id,
            max(1, round(keep_for(name) * 1000)),
            time.time_ns() // 1_000_000,
            self.events.maxlen,
            queue,
        ]
        outcome, name, status = self.scripts.cancel(keys=keys, args=args)
        shown = _STATUS.get(status, Status.UNKNOWN) if isinstance(status, bytes) else None
        return Cancellation(job_id, queue, raw_text(outcome), raw_text(name) if name else None, shown)

    # -- delete, promote, live workers (the dashboard's actions and worker list) ---------------

    def remove_waiting(self, job_id: str) -> str:
        """Delete a waiting, parked or delayed job and its log, atomically (remove.lua)."""
        queue = self.find_queue(job_id)
        if queue is None:
            return "unknown"
        qk = self.keys.queue(queue)
        script = self.connection.register_script(script_source("remove"))
        outcome, _ = script(keys=[*qk.standard, qk.job(job_id), qk.log(job_id)], args=[qk.ck_prefix, job_id])
        return raw_text(outcome)

    def promote(self, job_id: str) -> bool:
        """Move a delayed job to its wait list now (promote_now.lua)."""
        queue = self.find_queue(job_id)
        if queue is None:
            return False
        qk = self.keys.queue(queue)
        script = self.connection.register_script(script_source("promote_now"))
        return bool(script(keys=[*qk.standard, qk.job(job_id)], args=[job_id]))

    def live_slots(self, queues: Iterable[str]) -> dict[str, list[str]]:
        names = sorted(queues)
        seconds, micros = self.connection.time()
        now_ms = seconds * 1000 + micros // 1000
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in names:
                pipe.zrangebyscore(self.keys.queue(queue).workers, f"({now_ms}", "+inf")
            replies = pipe.execute()
        return {queue: sorted(raw_text(slot) for slot in slots) for queue, slots in zip(names, replies)}

    # -- dedupe and debounce --------------------------------------------------------------

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
        if not taken:
            return taken
        # The events and the deduplicated counters travel together, in the one round trip the events took.
        with self.connection.pipeline(transaction=False) as pipe:
            for job in wanted:
                if job.job_id in taken:
                    event = Event(
                        kind=EventKind.DEDUPLICATED,
                        job_id=job.job_id,
                        name=job.name,
                        queue=job.queue,
                        data={"existing": taken[job.job_id]},
                    )
                    self.events.append(event, pipeline=pipe)
                    pipe.hincrby(self.keys.queue(job.queue).metrics, f"deduplicated|{job.name}", 1)
            pipe.execute()
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
                job = build(current)
                qk = self.keys.queue(job.queue)
                pipe.watch(qk.job(current))  # a worker promoting it meanwhile makes us try again
                if pipe.hget(qk.job(current), "s") == b"scheduled":
                    assert job.due_at is not None
                    pipe.multi()
                    due_ms = epoch_ms(job.due_at)
                    pipe.hset(qk.job(current), mapping={"d": job.envelope, "q": due_ms})
                    pipe.zadd(qk.delayed, {current: due_ms})
                    pipe.pexpire(pointer, ttl_ms)
                    return current, True
            job = build(new_id)
            pipe.multi()
            self._enqueue_call([job], pipe)
            pipe.set(pointer, new_id, px=ttl_ms)
            return new_id, False

        return cast(
            tuple[str, bool],
            self.connection.transaction(transaction, pointer, value_from_callable=True),  # type: ignore[arg-type]
        )

    # -- logs and progress ----------------------------------------------------------------

    def append_log(self, queue: str, job_id: str, line: str) -> None:
        key = self.keys.queue(queue).log(job_id)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.rpush(key, line)
            pipe.ltrim(key, -self.LOG_LINES, -1)
            pipe.expire(key, self.LOG_TTL)
            pipe.execute()

    def logs(self, job_id: str) -> list[str]:
        queue = self.find_queue(job_id)
        if queue is None:
            return []
        key = self.keys.queue(queue).log(job_id)
        return [b.decode() for b in cast(list[bytes], self.connection.lrange(key, 0, -1))]

    def report_progress(self, queue: str, job_id: str, value: ProgressValue) -> None:
        self.connection.hset(self.keys.queue(queue).job(job_id), "pg", json.dumps(value, separators=(",", ":")))

    # -- queue administration ------------------------------------------------------------

    def forget(self, job_id: str) -> None:
        queue = self.find_queue(job_id)
        if queue is None:
            return
        qk = self.keys.queue(queue)
        with self.connection.pipeline() as pipe:
            for key in qk.waits:
                pipe.lrem(key, 0, job_id)
            pipe.zrem(qk.delayed, job_id)
            pipe.zrem(qk.done, job_id)
            pipe.zrem(qk.failed, job_id)
            pipe.zrem(qk.cancelled, job_id)
            pipe.delete(qk.job(job_id), qk.log(job_id))
            pipe.execute()

    def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self.connection.sadd(self.keys.paused, queue)
        else:
            self.connection.srem(self.keys.paused, queue)

    def paused(self) -> set[str]:
        return {m.decode() for m in cast(set[bytes], self.connection.smembers(self.keys.paused))}

    def drain(self, queue: str) -> int:
        qk = self.keys.queue(queue)
        lists: list[Any] = [*qk.waits, *self._parked(queue)]
        with self.connection.pipeline() as pipe:
            for key in lists:
                pipe.lrange(key, 0, -1)
                pipe.delete(key)
            pipe.zrange(qk.delayed, 0, -1)
            pipe.delete(qk.delayed, qk.parked)
            replies = pipe.execute()
        ids = {i for reply in replies[0::2] for i in reply}
        for chunk in _chunks(sorted(ids), 500):
            self.connection.delete(*[qk.job_bytes(i) for i in chunk])
        return len(ids)

    def running(self, queue: str) -> int:
        return int(self.connection.hlen(self.keys.queue(queue).active))

    def obliterate(self, queue: str) -> int:
        qk = self.keys.queue(queue)
        jobs = 0
        batch: list[bytes] = []
        for key in self.connection.scan_iter(match=qk.pattern, count=1000):
            batch.append(key)
            jobs += key.startswith(qk.job_prefix.encode())
            if len(batch) >= 500:
                self.connection.delete(*batch)
                batch = []
        if batch:
            self.connection.delete(*batch)
        for record in self.dead_letters.recent(limit=self.dead_letters.count() or 1):
            if record.queue == queue:
                self.dead_letters.remove(record.id)
        self.set_paused(queue, False)
        return jobs

    def close(self) -> None:
        self.connection.close()


def _from_ms(ms: float | int | bytes | str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(ms) / 1000, UTC) if ms not in (None, b"", "") else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _owner(owner: bytes) -> tuple[str, int]:
    """An active hash value `<slot>|<start ms>` as (slot, start ms)."""
    slot, _, start = raw_text(owner).rpartition("|")
    return slot, int(start) if start.isdigit() else 0


class _Record:
    """One job hash read back (`d` envelope, `p`, `s`, `r`, `e`, `ft`, `pg`, `ck`, `cl`), tolerant of damage."""

    def __init__(self, job_id: str, queue: str, fields: dict[bytes, bytes]) -> None:
        self.id, self.queue, self.fields = job_id, queue, fields
        self.envelope = None
        self.raw: str | None = raw_text(fields[b"raw"]) if b"raw" in fields else None
        self.doc: dict[str, Any] = {}
        if b"d" in fields:
            try:
                self.envelope = decode_envelope(fields[b"d"])
            except EnvelopeError:
                self.raw = raw_text(fields[b"d"])
            try:
                loaded = json.loads(fields[b"d"])
                self.doc = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                pass

    def _text(self, key: bytes) -> str | None:
        value = self.fields.get(key)
        return raw_text(value) if value else None

    @property
    def started(self) -> str | None:
        """When the attempt that ended last started (ms), kept by fetch.lua with its outcome."""
        return self._text(b"st")

    def _json(self, key: bytes) -> Any:
        value = self.fields.get(key)
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return raw_text(value)

    @property
    def name(self) -> str | None:
        name = self.doc.get("name")
        return name if isinstance(name, str) else None

    @property
    def priority(self) -> int | None:
        text = self._text(b"p")
        return int(text) if text is not None and text.isdigit() else None

    @property
    def concurrency_key(self) -> str | None:
        return self._text(b"ck")

    @property
    def error(self) -> str | None:
        return self._text(b"e")

    @property
    def result(self) -> Any:
        return self._json(b"r")

    @property
    def history(self) -> list[Any]:
        return list(self.envelope.history) if self.envelope is not None else []

    def options(self) -> dict[str, Any]:
        options = dict(self.envelope.options) if self.envelope is not None else {}
        if self.concurrency_key is not None:
            options["concurrency_key"] = self.concurrency_key
            limit = self._text(b"cl")
            options["concurrency_limit"] = int(limit) if limit and limit.isdigit() else limit
        return options

    def place(self, owner: Any, due: Any, stalled: Any) -> tuple[State, Status]:
        """Where the job is, and its status, from the structures that hold it."""
        from ..inspection import State

        status = _STATUS.get(self.fields.get(b"s", b""), Status.UNKNOWN)
        if owner is not None and not isinstance(owner, Exception):
            return State.ACTIVE, Status.RUNNING
        if isinstance(stalled, int):
            return State.STALLED, status
        if isinstance(due, float):
            return State.DELAYED, status
        if status is Status.SUCCEEDED:
            return State.SUCCEEDED, status
        if status is Status.FAILED:
            return State.FAILED, status
        if status is Status.CANCELLED:
            return State.CANCELLED, status
        return State.WAITING, status

    def summary(
        self,
        state: State,
        *,
        owner: Any = None,
        due: Any = None,
        expires: Any = None,
        error: str | None = None,
    ) -> JobSummary:
        from ..inspection import JobSummary, State

        attempt = self.doc.get("attempt")
        enqueued = self.doc.get("enqueued_at")
        slot, started = _owner(owner) if isinstance(owner, bytes) else (None, None)
        try:
            enqueued_at = datetime.fromisoformat(enqueued) if isinstance(enqueued, str) else None
        except ValueError:
            enqueued_at = None
        return JobSummary(
            id=self.id,
            queue=self.queue,
            state=state,
            name=self.name,
            priority=self.priority,
            attempt=attempt if isinstance(attempt, int) else None,
            enqueued_at=enqueued_at,
            due_at=_from_ms(due) if isinstance(due, float) else None,
            started_at=_from_ms(started) if started else _from_ms(self.started),
            finished_at=_from_ms(self._text(b"ft")),
            expires_at=_from_ms(expires) if isinstance(expires, float) else None,
            worker=slot,
            progress=self._json(b"pg"),
            error=error if error is not None else self.error if state in (State.FAILED, State.DEAD) else None,
            concurrency_key=self.concurrency_key,
        )


def _detail_from_dead_letter(record: DeadLetter) -> JobDetail:
    """A job known only by its dead letter (its record expired, or it never was a readable job)."""
    from ..inspection import JobDetail, State

    return JobDetail(
        id=record.id,
        queue=record.queue or "?",
        state=State.DEAD,
        status=Status.FAILED,
        name=record.name,
        priority=record.priority,
        attempt=record.attempts[-1].attempt if record.attempts else None,
        finished_at=record.died_at,
        error=record.error,
        payload=record.payload,
        attempts=record.attempts,
        traceback=record.traceback or None,
        dead_letter=record,
        raw=record.raw,
    )


def _chunks(items: Sequence[bytes], size: int) -> Iterable[Sequence[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
