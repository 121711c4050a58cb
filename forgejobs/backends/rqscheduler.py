"""The one module that uses rq-scheduler: repeats stored in its sorted set and job hashes.

rq-scheduler gives the storage (one RQ job hash per repeat plus the
`rq:scheduler:scheduled_jobs` sorted set of next run times), the scheduler
registry (birth, heartbeat, death) and the lock that keeps concurrent
schedulers from scanning at once. Its known defects are kept out:

- it pickles job hashes: repeats are stored with RQ's JSON serializer, and each
  tick is enqueued by forgejobs' client as a normal JSON envelope;
- two schedulers can enqueue one tick twice (its lock is a plain expiring SET):
  each tick is enqueued under the id `<schedule>-<tick>`, stored at most once;
- its lock lives `interval + 10` s, so a scheduler killed during a pass
  stopped all the others that long: passes take a lease of their own
  (`forgejobs:scheduler:lease`, LEASE_MS, released by its token);
- it ignores `use_local_timezone` and reads cron in the process's zone: tick
  times come from `forgejobs.schedule` (each schedule's own `tz`), never from
  rq-scheduler's `get_next_scheduled_time`;
- interval repeats pile up when no worker runs: `overlap="skip"` (see
  `forgejobs.scheduling.Repeater.fire`);
- restarts: `sync` upserts by schedule name and removes what is gone;
- downtime: missed ticks follow `catch_up` (see `ticks_to_fire`).

Swapping rq-scheduler for RQ's own cron means writing another `RepeatStore`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq_scheduler import Scheduler

from ..keys import Keys, rq_job_key
from ..outage import UNREACHABLE, Outage
from ..registry import ScheduledJob
from ..schedule import id_part
from ..scheduling import LastRun, Repeater, RepeatStore, StoredRepeat
from .redis import describe

log = logging.getLogger("forgejobs.scheduler")

REPEAT_FUNC = "forgejobs.backends.rqscheduler.repeat_placeholder"
ID_PREFIX = "fj-repeat-"


def repeat_placeholder(*args: Any) -> None:
    """Stored as the function of each repeat's hash; forgejobs never enqueues the hash itself."""
    raise RuntimeError("a forgejobs repeat entry was run as a job; run `forgejobs scheduler`, not `rqscheduler`")


class JSONJob(RQJob):
    """RQ's job with the JSON serializer by default, so rq-scheduler's hashes hold no pickle."""

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=serializer or JSONSerializer)


class _Scheduler(Scheduler):  # type: ignore[misc]
    job_class = JSONJob


class RQSchedulerStore(RepeatStore):
    def __init__(self, connection: redis.Redis, keys: Keys | None = None, interval: float = 0.2) -> None:
        self.connection = connection
        self.keys = keys or Keys()
        self.scheduler = _Scheduler(connection=connection, interval=max(1, int(interval)))

    @property
    def _zset(self) -> str:
        return str(self.scheduler.scheduled_jobs_key)

    def _job_id(self, name: str) -> str:
        return ID_PREFIX + id_part(name)

    def entries(self) -> dict[str, StoredRepeat]:
        rows = cast(list[tuple[bytes, float]], self.connection.zrange(self._zset, 0, -1, withscores=True))
        out: dict[str, StoredRepeat] = {}
        for raw_id, score in rows:
            job_id = raw_id.decode()
            if not job_id.startswith(ID_PREFIX):
                continue  # rq-scheduler entries that are not ours
            try:
                job = JSONJob.fetch(job_id, connection=self.connection)
            except NoSuchJobError:
                self.connection.zrem(self._zset, job_id)
                continue
            name = job.meta.get("schedule")
            if isinstance(name, str):
                out[name] = StoredRepeat(name, str(job.meta.get("fingerprint", "")), _from_ts(score))
        return out

    def upsert(self, scheduled: ScheduledJob, next_at: datetime) -> None:
        job = self.scheduler._create_job(
            REPEAT_FUNC,
            args=[scheduled.name],
            id=self._job_id(scheduled.name),
            description=f"repeat {scheduled.name}: {scheduled.schedule.describe()}",
            queue_name=scheduled.job_type.job_options().queue,
            meta={
                "schedule": scheduled.name,
                "fingerprint": scheduled.fingerprint(),
                "job": scheduled.job_type.job_name(),
                "when": scheduled.schedule.model_dump(mode="json"),
                "payload": scheduled.payload,
            },
            commit=True,
        )
        self.connection.zadd(self._zset, {job.id: next_at.timestamp()})

    def remove(self, name: str) -> None:
        job_id = self._job_id(name)
        with self.connection.pipeline() as pipe:
            pipe.zrem(self._zset, job_id)
            pipe.delete(rq_job_key(job_id))
            pipe.hdel(self.keys.schedule_last_runs, name)
            pipe.execute()

    def due(self, now: datetime) -> list[StoredRepeat]:
        entries = self.entries()
        return sorted((e for e in entries.values() if e.next_at <= now), key=lambda e: e.next_at)

    def set_next(self, name: str, next_at: datetime) -> None:
        # GT: a slower scheduler finishing an older pass never moves a repeat backwards.
        self.connection.zadd(self._zset, {self._job_id(name): next_at.timestamp()}, xx=True, gt=True)

    def last_run(self, name: str) -> LastRun | None:
        raw = cast(bytes | None, self.connection.hget(self.keys.schedule_last_runs, name))
        return LastRun.model_validate_json(raw) if raw else None

    def record(self, name: str, run: LastRun) -> None:
        self.connection.hset(self.keys.schedule_last_runs, name, run.model_dump_json())

    # -- the loop ----------------------------------------------------------------------------

    LEASE_MS = 2000
    """How long one pass holds the scheduler lease: a scheduler killed mid-pass holds up the others this long
    at most. A pass that runs longer may overlap another's; the tick ids keep each tick to one job."""

    _RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

    def run(self, repeater: Repeater, stop: threading.Event, interval: float = 0.2) -> None:
        """Sync, then fire due ticks every `interval` seconds until `stop` is set.

        Any number of schedulers may run: a short lease makes their passes take turns, and the tick ids
        make a tick fire once even if two passes overlap. While Redis cannot be reached it says so once,
        retries with backoff and jitter, and says so again when Redis is back; if the repeats have vanished
        from Redis meanwhile (its data was lost), it syncs them again.
        """
        outage = Outage("scheduler", describe(self.connection), log)
        release = self.connection.register_script(self._RELEASE)
        token = uuid.uuid4().hex
        born = synced = False
        try:
            while not stop.is_set():
                try:
                    if not born:
                        self.scheduler.register_birth()
                        born = True
                    self.scheduler.heartbeat()
                    if not synced or self._repeats_lost(repeater):
                        report = repeater.sync()
                        if synced:
                            log.warning(
                                "scheduler: the repeats were gone from Redis (its data was lost?); synced again: "
                                "%d added",
                                len(report.added),
                            )
                        synced = True
                    if self.connection.set(self.keys.scheduler_lease, token, nx=True, px=self.LEASE_MS):
                        try:
                            repeater.run_once()
                        finally:
                            release(keys=[self.keys.scheduler_lease], args=[token])
                    outage.recovered()
                except UNREACHABLE as exc:
                    stop.wait(outage.failed(exc) * random.uniform(0.5, 1.5))
                    continue
                except redis.RedisError as exc:
                    log.warning("scheduler pass failed: %s", exc)
                stop.wait(interval)
        finally:
            with contextlib.suppress(redis.RedisError):
                release(keys=[self.keys.scheduler_lease], args=[token])
                if born:
                    self.scheduler.register_death()

    def _repeats_lost(self, repeater: Repeater) -> bool:
        """Fewer repeats stored than enabled schedules declared: something deleted them (FLUSHALL, a restart
        without persistence). One ZCARD a pass."""
        wanted = sum(1 for s in repeater.schedules.values() if s.schedule.enabled)
        return int(self.connection.zcard(self._zset)) < wanted


def _from_ts(score: float) -> datetime:
    return datetime.fromtimestamp(score, UTC)
