"""Every Redis key and RQ queue name forgejobs uses, named in one place.

RQ keeps its own keys under `rq:`; the names below are forgejobs' additions.
"""

from __future__ import annotations

from dataclasses import dataclass

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
class Keys:
    prefix: str = "forgejobs"

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

    def alive(self, worker_name: str) -> str:
        """String with a TTL: "this RQ worker (a forgejobs slot) is alive"; renewed by its process's heartbeat."""
        return f"{self.prefix}:alive:{worker_name}"

    def dedupe(self, key: str) -> str:
        """String with a TTL: the job that holds a dedupe key (unique_for)."""
        return f"{self.prefix}:unique:{key}"

    def debounce(self, key: str) -> str:
        """String with a TTL: the pending job that a debounce key currently points at."""
        return f"{self.prefix}:debounce:{key}"

    def log(self, job_id: str) -> str:
        """List: one job's log lines (capped, expiring)."""
        return f"{self.prefix}:log:{job_id}"

    def progress(self, job_id: str) -> str:
        return f"{self.prefix}:progress:{job_id}"

    @property
    def schedule_last_runs(self) -> str:
        """Hash: schedule name -> its last run (tick, job id, note) as JSON."""
        return f"{self.prefix}:schedules:last"
