"""Every Redis key forgejobs uses, named in one place.

A queue's keys share the hash tag `{<queue>}` (`forgejobs:{email}:wait:p05`), so every
server-side script, which touches one queue, can run on Redis Cluster. docs/decisions/0007
lists each key, who writes it and which script. The `rq_*` helpers name RQ's own keys, which
only rq-scheduler's repeat store and the benchmarks still use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

PRIORITIES = range(1, 11)


def rq_queue_name(queue: str, priority: int) -> str:
    """One RQ queue per (queue, priority): workers listen to them in priority order."""
    return f"{queue}:p{priority:02d}"


def rq_queue_names(queue: str) -> list[str]:
    return [rq_queue_name(queue, p) for p in PRIORITIES]


def rq_queue_key(rq_queue: str) -> str:
    """RQ's list of waiting job ids for one RQ queue (RQ's own naming)."""
    return f"rq:queue:{rq_queue}"


def rq_job_key(job_id: str) -> str:
    """RQ's hash for one job (RQ's own naming)."""
    return f"rq:job:{job_id}"


def rq_results_key(job_id: str) -> str:
    """RQ's stream of results for one job (RQ's own naming)."""
    return f"rq:results:{job_id}"


def split_rq_queue_name(name: str) -> tuple[str, int]:
    queue, _, p = name.rpartition(":p")
    return queue, int(p)


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue. All share the hash tag `{queue}`."""

    prefix: str
    queue: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    def wait(self, priority: int) -> str:
        """List: ids waiting to start at one priority, oldest first."""
        return f"{self.tag}:wait:p{priority:02d}"

    @cached_property
    def waits(self) -> list[str]:
        return [self.wait(p) for p in PRIORITIES]

    @property
    def active(self) -> str:
        """Hash: running job id -> "<slot>|<start ms>" (the slot holding its lease)."""
        return f"{self.tag}:active"

    @property
    def workers(self) -> str:
        """Sorted set: slot id -> lease expiry (server ms); renewed by each process's heartbeat and by a fetch
        after idle."""
        return f"{self.tag}:workers"

    @property
    def marker(self) -> str:
        """Sorted set woken on: "0" (jobs wait) at score 0, "d" at the due time of the next delayed job."""
        return f"{self.tag}:marker"

    @property
    def delayed(self) -> str:
        """Sorted set: delayed jobs and retries, id -> due (server ms)."""
        return f"{self.tag}:delayed"

    @property
    def done(self) -> str:
        """Sorted set: succeeded jobs, id -> expiry (ms); trimmed by retention."""
        return f"{self.tag}:done"

    @property
    def failed(self) -> str:
        """Sorted set: failed jobs, id -> expiry (ms); trimmed by retention. The dead letters hold the detail."""
        return f"{self.tag}:failed"

    @property
    def stalled(self) -> str:
        """List: ids taken from dead slots, waiting for a worker to retry or dead-letter them."""
        return f"{self.tag}:stalled"

    @property
    def cancelled(self) -> str:
        """Sorted set: cancelled jobs, id -> expiry (ms); trimmed by retention like succeeded ones."""
        return f"{self.tag}:cancelled"

    @property
    def cancels(self) -> str:
        """Set: ids of running jobs someone asked to cancel; read by the workers' heartbeat (beat.lua)."""
        return f"{self.tag}:cancels"

    @property
    def workflow_outbox(self) -> str:
        """Hash: id -> outcome of a finished workflow step job not yet recorded on its run (written by fetch.lua
        with the outcome, removed once the run has it; see docs/decisions/0009-workflows.md)."""
        return f"{self.tag}:wfout"

    @property
    def metrics(self) -> str:
        """Hash: the queue's counters and histogram buckets (see runtime/scripts/metrics.lua)."""
        return f"{self.tag}:metrics"

    @property
    def minutes(self) -> str:
        """Hash: "<minute>|<kind>" -> jobs succeeded (c) or attempts failed (f) in that minute; 24 h kept."""
        return f"{self.tag}:minutes"

    @property
    def check(self) -> str:
        """String with a short TTL: one recovery pass per queue per interval, whichever worker runs it."""
        return f"{self.tag}:check"

    @property
    def trim(self) -> str:
        """String with a short TTL: one retention pass per queue per interval."""
        return f"{self.tag}:trim"

    @property
    def job_prefix(self) -> str:
        return f"{self.tag}:job:"

    def job(self, job_id: str) -> str:
        """Hash: one job (d envelope, p priority, s status, r result, e error, ft finished ms, st start ms of
        the attempt that ended last, q when it became ready to start (ms), pg progress, ck/cl concurrency key
        and its limit, x: a cancel was asked for while it ran (how long to keep it, ms))."""
        return f"{self.job_prefix}{job_id}"

    def job_bytes(self, job_id: bytes) -> bytes:
        """`job()` for an id read back from Redis, which may not be UTF-8."""
        return self.job_prefix.encode() + job_id

    @property
    def log_prefix(self) -> str:
        return f"{self.tag}:log:"

    def log(self, job_id: str) -> str:
        """List: one job's `ctx.log` lines (capped, expiring; deleted with the job by retention)."""
        return f"{self.log_prefix}{job_id}"

    @property
    def ck_prefix(self) -> str:
        """`<prefix><key>:run` (set of running ids) and `<prefix><key>:wait` (list of parked ids) per key."""
        return f"{self.tag}:ck:"

    @property
    def parked(self) -> str:
        """Set: the concurrency keys that have (or had) parked jobs, so `info` and `drain` find their lists."""
        return f"{self.ck_prefix}parked"

    def parked_jobs(self, key: bytes) -> bytes:
        """List: the jobs of one concurrency key waiting for a place (`key` as read back from `parked`)."""
        return self.ck_prefix.encode() + key + b":wait"

    @cached_property
    def fetch_keys(self) -> list[str]:
        """The keys fetch.lua takes after the standard ones and the event stream."""
        return [self.metrics, self.minutes, self.cancelled, self.cancels, self.workflow_outbox]

    @cached_property
    def standard(self) -> list[str]:
        """The keys every runtime script takes, in this order (see runtime/scripts/common.lua)."""
        return [self.active, self.workers, self.marker, self.delayed, self.done, self.failed, *self.waits]

    @property
    def pattern(self) -> str:
        """Every key of this queue (for SCAN when the queue is obliterated)."""
        return f"{self.tag}:*"


@dataclass(frozen=True)
class Keys:
    prefix: str = "forgejobs"

    def queue(self, queue: str) -> QueueKeys:
        return _queue_keys(self.prefix, queue)

    def wake(self, worker: str) -> str:
        """Sorted set a worker process's waiter also blocks on, so its own slots can wake it."""
        return f"{self.prefix}:wake:{worker}"

    @property
    def dead_index(self) -> str:
        """Sorted set: dead-letter id -> time it died."""
        return f"{self.prefix}:dead:index"

    def dead_record(self, job_id: str) -> str:
        """String: one dead letter as JSON."""
        return f"{self.prefix}:dead:{job_id}"

    @property
    def events(self) -> str:
        """Stream of job events (capped)."""
        return f"{self.prefix}:events"

    @property
    def paused(self) -> str:
        """Set of queue names whose workers take no new jobs."""
        return f"{self.prefix}:paused"

    def dedupe(self, key: str) -> str:
        """String with a TTL: the job that holds a dedupe key (unique_for)."""
        return f"{self.prefix}:unique:{key}"

    def debounce(self, key: str) -> str:
        """String with a TTL: the pending job that a debounce key currently points at."""
        return f"{self.prefix}:debounce:{key}"

    @property
    def scheduler_lease(self) -> str:
        """String with a short TTL: the scheduler process making a pass right now (a throttle, not an owner)."""
        return f"{self.prefix}:scheduler:lease"

    @property
    def schedule_last_runs(self) -> str:
        """Hash: schedule name -> its last run (tick, job id, note) as JSON."""
        return f"{self.prefix}:schedules:last"


@dataclass(frozen=True)
class WorkflowKeys:
    """The keys of one workflow run, tagged `{wf:<run>}`: every workflow.lua call touches one run's slot."""

    prefix: str
    run_id: str

    @property
    def run(self) -> str:
        """Hash: the run's status, input, per-step counts and per-instance outcomes (workflows/store.py)."""
        return f"{self.prefix}:{{wf:{self.run_id}}}:run"

    @property
    def ready(self) -> str:
        """Set: steps released but not yet enqueued (a recovery pass enqueues them again)."""
        return f"{self.prefix}:{{wf:{self.run_id}}}:ready"

    @property
    def order(self) -> str:
        """List: `<step>:<instance>` in the order they completed (compensations walk it back)."""
        return f"{self.prefix}:{{wf:{self.run_id}}}:order"

    @property
    def all(self) -> list[str]:
        return [self.run, self.ready, self.order]


def workflow_index(prefix: str) -> str:
    """Sorted set: run id -> start time (ms), every run kept; `forgejobs workflows list` and recovery read it."""
    return f"{prefix}:workflows"


@cache
def _queue_keys(prefix: str, queue: str) -> QueueKeys:
    """One `QueueKeys` per queue, so the key names it caches are built once per process."""
    return QueueKeys(prefix, queue)
