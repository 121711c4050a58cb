"""What the dashboard's pages show, read through the public API (Client, Inspector, MetricsReader).

No page knows a Redis key: everything here goes through `forgejobs.client.Client`,
`forgejobs.inspection.Inspector`, `forgejobs.metrics.MetricsReader` and the repeat store. Payloads,
errors, tracebacks, log lines and results pass through `forgejobs.logs` masking before a template
sees them, so a secret field's value is never in a page.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ..deadletter import DeadLetter
from ..inspection import Inspector, JobDetail, JobSummary, State, job_name
from ..logs import has_secrets, job_model, mask_payload, mask_text, secret_values
from ..metrics import MetricsReader, MinuteCount

if TYPE_CHECKING:
    from ..backends.redis import RedisBackend
    from ..client import Client

STATE_TABS: tuple[State, ...] = (
    State.ACTIVE,
    State.WAITING,
    State.PARKED,
    State.DELAYED,
    State.STALLED,
    State.SUCCEEDED,
    State.FAILED,
    State.DEAD,
    State.CANCELLED,
)
# which count of `Snapshot.jobs` a tab shows (waiting includes parked and stalled jobs there)
TAB_COUNT = {
    State.ACTIVE: "active",
    State.WAITING: "waiting",
    State.DELAYED: "delayed",
    State.SUCCEEDED: "succeeded",
    State.DEAD: "dead",
    State.CANCELLED: "cancelled",
}
DEAD_SCAN = 5000  # dead letters read for the dead-letter page's filters and summary
EVENTS_READ = 1000  # event stream entries read for one job's page


@dataclass
class QueueRow:
    name: str
    counts: dict[str, int]
    paused: bool
    oldest_waiting: float | None
    slots: int
    minutes: list[MinuteCount]
    succeeded_hour: int
    failed_hour: int


@dataclass
class WorkerRow:
    """One worker process: its identity's host and pid, the queues its live slots serve, what runs now."""

    name: str
    host: str
    pid: str
    queues: list[str] = field(default_factory=list)
    slots: int = 0
    running: list[JobSummary] = field(default_factory=list)


@dataclass
class Overview:
    taken_at: datetime
    queues: list[QueueRow]
    workers: list[WorkerRow]
    dead_letters: int


class Reader:
    """The dashboard's read side over one client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.backend = cast("RedisBackend", client.backend)
        self.registry = client.registry
        self.inspector = Inspector(client.backend, client.registry)
        self.queues = sorted(client.registry.queues)
        self.metrics = MetricsReader(self.backend.connection, self.backend.keys, self.queues, backend=self.backend)

    # -- overview ------------------------------------------------------------------------------

    def overview(self, minutes: int = 60) -> Overview:
        snap = self.metrics.snapshot()
        rows = []
        for queue in self.queues:
            series = self.metrics.per_minute(queue, minutes)
            rows.append(
                QueueRow(
                    queue,
                    snap.jobs.get(queue, {}),
                    queue in snap.paused,
                    snap.oldest_waiting.get(queue),
                    snap.slots_alive.get(queue, 0),
                    series,
                    sum(m.succeeded for m in series),
                    sum(m.failed for m in series),
                )
            )
        return Overview(snap.taken_at, rows, self.workers(), self.backend.dead_letters.count())

    def workers(self) -> list[WorkerRow]:
        """Worker processes with a live lease, from their slots' identities (`<host>.<pid>.<hex>/<queue>/...`)."""
        found: dict[str, WorkerRow] = {}
        slot_owner: dict[str, WorkerRow] = {}
        for queue, slots in self.backend.live_slots(self.queues).items():
            for slot in slots:
                name = slot.split("/", 1)[0]
                parts = name.rsplit(".", 2)
                host, pid = (parts[0], parts[1]) if len(parts) == 3 else (name, "?")
                row = found.setdefault(name, WorkerRow(name, host, pid))
                if queue not in row.queues:
                    row.queues.append(queue)
                row.slots += 1
                slot_owner[slot] = row
        for queue in self.queues:
            for job in self.inspector.jobs(queue, State.ACTIVE, limit=500):
                owner = slot_owner.get(job.worker or "")
                if owner is None and job.worker:
                    owner = found.get(job.worker.split("/", 1)[0])
                if owner is not None:
                    owner.running.append(job)
        return sorted(found.values(), key=lambda w: (w.host, w.pid))

    # -- a queue's jobs ------------------------------------------------------------------------

    def jobs(
        self, queue: str, state: State, *, name: str | None, page: int, per_page: int
    ) -> tuple[list[JobSummary], bool]:
        """One page of `queue`'s jobs in `state` (of type `name`), and whether there is a next page."""
        self.inspector.queue(queue)
        offset = (page - 1) * per_page
        found = self.inspector.jobs(queue, state, name=name, limit=offset + per_page + 1)
        return found[offset : offset + per_page], len(found) > offset + per_page

    def counts(self, queue: str) -> tuple[dict[str, int], bool]:
        row = self.backend.counts([queue])[0]
        counts = {
            "active": row.running,
            "waiting": row.waiting,
            "delayed": row.scheduled,
            "succeeded": row.finished,
            "dead": row.failed,
            "cancelled": row.cancelled,
        }
        return counts, queue in self.backend.paused()

    def job_names(self, queue: str) -> list[str]:
        return sorted(e.job_type.job_name() for e in self.registry if e.options.queue == queue)

    # -- one job -------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobView:
        detail = self.inspector.job(job_id)
        values = self._secret_values(detail)
        view = JobView.of(detail, self.registry, values)
        events, view.events_cut = self.events(detail)
        view.events = [{**e, "data": mask_text(e["data"], values)} for e in events]
        return view

    def _secret_values(self, detail: JobDetail) -> list[str]:
        """The job's secret values as stored (the Inspector's copy may already show them as ***), to mask
        wherever they appear in text: errors, log lines, events."""
        model = job_model(self.registry, job_name(detail))
        if model is None or not has_secrets(model):
            return []
        stored = self.backend.job_detail(detail.id)
        payload = None
        if stored is not None:
            payload = stored.payload if stored.payload is not None else None
            if payload is None and stored.dead_letter is not None:
                payload = stored.dead_letter.payload
        return secret_values(model, payload)

    def events(self, detail: JobDetail) -> tuple[list[dict[str, Any]], bool]:
        """The job's events among the first EVENTS_READ stream entries from a minute before it was enqueued
        (stream ids are server times; the slack covers a producer's clock), and whether more were left unread."""
        if detail.enqueued_at is None:
            return [], False
        start = int(detail.enqueued_at.timestamp() * 1000) - 60_000
        read = self.backend.events.read(after=f"{max(start, 0)}-0", count=EVENTS_READ)
        mine = [
            {"at": e.at, "kind": e.kind.value, "attempt": e.attempt, "data": json.dumps(e.data, default=str)}
            for e in read
            if e.job_id == detail.id
        ]
        return mine, len(read) >= EVENTS_READ

    # -- dead letters --------------------------------------------------------------------------

    def dead_letters(
        self, *, reason: str | None, name: str | None
    ) -> tuple[list[DeadLetterView], Counter[tuple[str, str]], int]:
        """The newest dead letters (up to DEAD_SCAN) matching the filters, a count of all of them by
        (reason, job), and how many there are in all."""
        total = self.backend.dead_letters.count()
        letters = self.client.dead_letters(limit=DEAD_SCAN)
        summary: Counter[tuple[str, str]] = Counter((d.reason.value, d.name or "?") for d in letters)
        chosen = [
            DeadLetterView.of(d, self.registry)
            for d in letters
            if reason in (None, d.reason.value) and name in (None, d.name or "?")
        ]
        return chosen, summary, total

    def matching_dead_letters(self, *, reason: str | None, name: str | None) -> list[DeadLetter]:
        return [
            d
            for d in self.client.dead_letters(limit=DEAD_SCAN)
            if reason in (None, d.reason.value) and name in (None, d.name or "?")
        ]

    # -- schedules -----------------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        from ..backends.rqscheduler import RQSchedulerStore

        store = RQSchedulerStore(self.backend.connection, self.backend.keys)
        stored = store.entries()
        now = datetime.now(UTC)
        rows = []
        for name, scheduled in sorted(self.registry.schedules.items()):
            when = scheduled.schedule
            entry = stored.get(name)
            upcoming = when.upcoming(now) if when.enabled else []
            if entry is not None and entry.next_at > now and when.enabled:
                upcoming = [entry.next_at, *when.upcoming(entry.next_at, 2)]
            last = store.last_run(name)
            status = None
            if last is not None and last.job_id is not None:
                status = self.backend.state(last.job_id).status.value
            rows.append(
                {
                    "name": name,
                    "job": scheduled.job_type.job_name(),
                    "when": when.describe(),
                    "tz": when.tz,
                    "enabled": when.enabled,
                    "overlap": when.overlap,
                    "catch_up": when.catch_up,
                    "source": scheduled.source,
                    "registered": entry is not None,
                    "next_runs": [(t, t.astimezone(when.zone)) for t in upcoming],
                    "last": last,
                    "last_status": status,
                }
            )
        return rows


def _attempts(attempts: list[Any], values: list[str]) -> list[dict[str, Any]]:
    return [{"attempt": a.attempt, "at": a.at, "error": mask_text(a.error, values), "delay": a.delay} for a in attempts]


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False, sort_keys=True)


@dataclass
class JobView:
    """A job as the job page shows it: every text that could hold a secret already masked."""

    detail: JobDetail
    payload_json: str | None
    result_json: str | None
    progress_json: str | None
    error: str | None
    traceback: str | None
    logs: list[str]
    attempts: list[dict[str, Any]]
    dead_letter: DeadLetterView | None
    raw: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    events_cut: bool = False

    @classmethod
    def of(cls, detail: JobDetail, registry: Any, stored_secrets: list[str] | None = None) -> JobView:
        model = job_model(registry, job_name(detail))
        payload = detail.payload
        if payload is None and detail.dead_letter is not None:
            payload = detail.dead_letter.payload
        values = sorted({*secret_values(model, payload), *(stored_secrets or [])}, key=len, reverse=True)

        def text(value: str | None) -> str | None:
            return mask_text(value, values) if value is not None else None

        shown = mask_payload(model, payload)
        return cls(
            detail=detail,
            payload_json=_json(shown) if shown is not None else None,
            result_json=text(_json(detail.result)) if detail.result is not None else None,
            progress_json=text(json.dumps(detail.progress, default=str)) if detail.progress is not None else None,
            error=text(detail.error),
            traceback=text(detail.traceback),
            logs=[mask_text(line, values) for line in detail.logs],
            attempts=_attempts(detail.attempts, values),
            dead_letter=DeadLetterView.of(detail.dead_letter, registry) if detail.dead_letter else None,
            raw=text(detail.raw),
        )


@dataclass
class DeadLetterView:
    record: DeadLetter
    payload_json: str | None
    error: str
    traceback: str
    raw: str | None
    attempts: list[dict[str, Any]]

    @classmethod
    def of(cls, record: DeadLetter, registry: Any) -> DeadLetterView:
        model = job_model(registry, record.name)
        values = secret_values(model, record.payload)
        shown = mask_payload(model, record.payload)
        return cls(
            record=record,
            payload_json=_json(shown) if shown is not None else None,
            error=mask_text(record.error, values),
            traceback=mask_text(record.traceback, values),
            raw=mask_text(record.raw, values) if record.raw is not None else None,
            attempts=_attempts(record.attempts, values),
        )
