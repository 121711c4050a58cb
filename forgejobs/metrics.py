"""Metrics: cluster-wide counters, histograms and gauges kept in Redis, and their Prometheus exposition.

What it guarantees:

- **Cluster-wide and exact.** The runtime's scripts add to a hash per queue (`forgejobs:{q}:metrics`)
  inside the calls that record what they count (`enqueue.lua`, `fetch.lua`, `settle.lua`,
  `cancel.lua`): a counter moves if and only if the step it counts was recorded, whichever process
  or host ran it, with no extra round trip (docs/decisions/0008). Whoever serves `/metrics` reads
  them; nothing is kept in a worker's memory, so a worker that dies loses nothing.
- **Per minute, bounded.** Jobs succeeded and attempts failed per queue per minute
  (`forgejobs:{q}:minutes`), kept 24 h by the workers' retention pass, for graphs (`per_minute`).
- **Gauges are read at scrape time**: jobs per state, live workers (a live lease), the oldest
  waiting job's age per queue, paused queues.

`MetricsReader(connection, keys, queues).snapshot()` reads everything in a few round trips;
`RedisCollector` turns a snapshot into Prometheus metric families; `asgi_app(settings)` and
`wsgi_app(settings)` serve them (`forgejobs metrics --port N` runs the WSGI one). `prometheus-client`
is imported only by the last three. docs/observability.md says what each metric means.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from .keys import Keys
from .runtime.scripts import METRIC_BUCKETS_MS

if TYPE_CHECKING:
    import redis
    from prometheus_client.registry import CollectorRegistry

    from .backends.redis import RedisBackend
    from .settings import Settings

__all__ = [
    "COUNTERS",
    "CounterValue",
    "HistogramValue",
    "MetricsReader",
    "MinuteCount",
    "RedisCollector",
    "Snapshot",
    "asgi_app",
    "collector_registry",
    "wsgi_app",
]

COUNTERS: dict[str, str] = {
    "enqueued": "Jobs stored by an enqueue (a duplicate that was not stored is not counted).",
    "started": "Attempts taken by a worker (the wait-time histogram's count).",
    "succeeded": "Attempts whose handler returned.",
    "retried": "Failed attempts (raised, timed out or stalled) after which the job runs again.",
    "failed": "Failed attempts: retried plus dead-lettered.",
    "dead_lettered": "Jobs that failed for good, by reason (exhausted, unrecoverable, stalled, ...).",
    "stalled": "Attempts whose worker died or hung (recovered from an expired lease).",
    "rate_limited": "Runs put off by a rate limit (the job's, its queue's, or ctx.rate_limited); no attempt used.",
    "deferred": "Runs put off by RetryLater; no attempt used.",
    "deduplicated": "Enqueues dropped as duplicates (unique_for, or an id that exists).",
    "cancelled": "Jobs cancelled (waiting, delayed, or running and stopped).",
    "aborted": "Attempts interrupted by a worker's forced stop (run again).",
}
"""Every counter, as `forgejobs_jobs_<name>_total{queue, job_name}` (dead_lettered also by `reason`)."""

STORED = frozenset(COUNTERS) - {"started", "failed"}
"""The counters the scripts store; `started` and `failed` are derived when read."""

STATES = ("waiting", "delayed", "active", "succeeded", "dead", "cancelled")
_DISCOVERY_TTL = 60.0


@dataclass(frozen=True)
class CounterValue:
    name: str  # a key of COUNTERS
    queue: str
    job_name: str
    value: int
    reason: str | None = None  # dead_lettered only


@dataclass(frozen=True)
class HistogramValue:
    """One histogram series: cumulative counts per upper bound (seconds; the last is +Inf)."""

    name: str  # "run" or "wait"
    queue: str
    job_name: str
    buckets: list[tuple[float, int]]
    sum_seconds: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


@dataclass(frozen=True)
class MinuteCount:
    """One minute of one queue: jobs that succeeded and attempts that failed in it."""

    minute: datetime
    succeeded: int
    failed: int


@dataclass
class Snapshot:
    """Everything the metrics say at one moment (`MetricsReader.snapshot`)."""

    taken_at: datetime
    counters: list[CounterValue] = field(default_factory=list)
    histograms: list[HistogramValue] = field(default_factory=list)
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)  # queue -> state -> jobs
    oldest_waiting: dict[str, float | None] = field(default_factory=dict)  # queue -> seconds
    slots_alive: dict[str, int] = field(default_factory=dict)  # queue -> worker slots with a live lease
    workers_alive: int = 0  # worker processes with at least one live lease
    paused: set[str] = field(default_factory=set)

    def total(self, name: str, queue: str | None = None, job_name: str | None = None) -> int:
        """The sum of counter `name` over the series matching `queue` and `job_name` (None: any)."""
        return sum(
            c.value
            for c in self.counters
            if c.name == name and queue in (None, c.queue) and job_name in (None, c.job_name)
        )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _parse(queue: str, fields: dict[bytes, bytes]) -> tuple[list[CounterValue], list[HistogramValue]]:
    """A queue's metrics hash as counter and histogram values (see runtime/scripts/metrics.lua)."""
    counts: dict[tuple[str, str, str | None], int] = defaultdict(int)
    buckets: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], int] = defaultdict(int)
    width = len(METRIC_BUCKETS_MS) + 1
    for raw_key, raw_value in fields.items():
        key = _text(raw_key)
        try:
            value = int(raw_value)
        except ValueError:
            continue
        parts = key.split("|")
        if len(parts) == 3 and parts[0] in ("run", "wait") and parts[2].isdigit():
            index = int(parts[2]) - 1
            if 0 <= index < width:
                buckets.setdefault((parts[0], parts[1]), [0] * width)[index] += value
        elif len(parts) == 2 and parts[0] in ("run_ms", "wait_ms"):
            sums[(parts[0][:-3], parts[1])] += value
        elif len(parts) == 2:
            counter, _, reason = parts[0].partition(":")
            if counter in STORED:
                counts[(counter, parts[1], reason or None)] += value
    histograms = []
    bounds = [b / 1000 for b in METRIC_BUCKETS_MS] + [float("inf")]
    for (kind, name), per_bucket in sorted(buckets.items()):
        running, cumulative = 0, []
        for bound, n in zip(bounds, per_bucket):
            running += n
            cumulative.append((bound, running))
        histograms.append(HistogramValue(kind, queue, name, cumulative, sums[(kind, name)] / 1000))
    counters = [CounterValue(c, queue, name, n, reason) for (c, name, reason), n in sorted(counts.items())]
    # derived: started = every wait observation; failed = retried + dead-lettered
    derived: dict[tuple[str, str], int] = defaultdict(int)
    for h in histograms:
        if h.name == "wait":
            derived[("started", h.job_name)] += h.count
    for c in counters:
        if c.name in ("retried", "dead_lettered"):
            derived[("failed", c.job_name)] += c.value
    counters += [CounterValue(n, queue, name, v) for (n, name), v in sorted(derived.items())]
    return counters, histograms


class MetricsReader:
    """Reads the metrics of `queues` (None: every queue that has metrics or workers, found by SCAN and
    cached for a minute) from Redis. Thread-safe; each call reads afresh."""

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys | None = None,
        queues: Sequence[str] | None = None,
        *,
        backend: RedisBackend | None = None,
    ) -> None:
        from .backends.redis import RedisBackend

        self.connection = connection
        self.keys = keys or Keys()
        self._queues = list(queues) if queues is not None else None
        self.backend = backend or RedisBackend(connection, self.keys)
        self._found: list[str] = []
        self._found_at = float("-inf")
        self._lock = threading.Lock()

    def queues(self) -> list[str]:
        """The queues read: as given, or those whose metrics, workers or wait lists exist."""
        if self._queues is not None:
            return self._queues
        with self._lock:
            if time.monotonic() - self._found_at > _DISCOVERY_TTL:
                found: set[str] = set()
                start = len(self.keys.prefix) + 2
                for pattern in (f"{self.keys.prefix}:{{*}}:metrics", f"{self.keys.prefix}:{{*}}:workers"):
                    for key in self.connection.scan_iter(match=pattern, count=1000):
                        text = _text(key)
                        end = text.find("}:", start)
                        if end > start:
                            found.add(text[start:end])
                self._found, self._found_at = sorted(found), time.monotonic()
            return self._found

    def snapshot(self) -> Snapshot:
        """Counters, histograms and gauges of every queue, now."""
        queues = self.queues()
        conn = self.connection
        with conn.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(self.keys.paused)
            for queue in queues:
                qk = self.keys.queue(queue)
                pipe.hgetall(qk.metrics)
                pipe.zrange(qk.workers, 0, -1, withscores=True)
                for wait in qk.waits:
                    pipe.lindex(wait, 0)
            replies = pipe.execute()
        seconds, micros = replies[0]
        now_ms = seconds * 1000 + micros / 1000
        snap = Snapshot(taken_at=datetime.fromtimestamp(now_ms / 1000, UTC))
        snap.paused = {_text(m) for m in cast(set[bytes], replies[1])}
        processes: set[str] = set()
        heads: dict[str, list[bytes]] = {}
        position = 2
        for queue in queues:
            fields, leases = replies[position], replies[position + 1]
            heads[queue] = [h for h in replies[position + 2 : position + 12] if h is not None]
            position += 12
            counters, histograms = _parse(queue, cast(dict[bytes, bytes], fields))
            snap.counters += counters
            snap.histograms += histograms
            live = [_text(slot) for slot, expiry in leases if expiry > now_ms]
            snap.slots_alive[queue] = len(live)
            processes.update(slot.split("/", 1)[0] for slot in live)
        snap.workers_alive = len(processes)
        snap.oldest_waiting = self._oldest(queues, heads, now_ms)
        for row in self.backend.counts(queues) if queues else []:
            snap.jobs[row.queue] = {
                "waiting": row.waiting,
                "delayed": row.scheduled,
                "active": row.running,
                "succeeded": row.finished,
                "dead": row.failed,
                "cancelled": row.cancelled,
            }
        return snap

    def _oldest(self, queues: list[str], heads: dict[str, list[bytes]], now_ms: float) -> dict[str, float | None]:
        """Per queue: seconds since the longest-waiting job at the head of a wait list became ready."""
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in queues:
                qk = self.keys.queue(queue)
                for head in heads[queue]:
                    key: Any = qk.job_bytes(head)
                    pipe.hget(key, "q")
            readies = iter(pipe.execute(raise_on_error=False))
        out: dict[str, float | None] = {}
        for queue in queues:
            times = []
            for _ in heads[queue]:
                ready = next(readies)
                try:
                    times.append(float(ready))
                except (TypeError, ValueError):
                    continue
            out[queue] = max(0.0, (now_ms - min(times)) / 1000) if times else None
        return out

    def per_minute(self, queue: str, minutes: int = 60) -> list[MinuteCount]:
        """The last `minutes` minutes of `queue` (the current one last, partly over), oldest first; minutes
        with nothing in them are there with zeros. At most 24 h are kept."""
        if not 1 <= minutes <= 24 * 60:
            raise ValueError(f"minutes must be within 1..1440 (24 h are kept), not {minutes}")
        seconds, _ = self.connection.time()
        current = seconds // 60
        wanted = list(range(current - minutes + 1, current + 1))
        fields = [f"{m}|{kind}" for m in wanted for kind in ("c", "f")]
        values = cast(list[bytes | None], self.connection.hmget(self.keys.queue(queue).minutes, fields))
        out = []
        for i, minute in enumerate(wanted):
            done, failed = values[2 * i], values[2 * i + 1]
            out.append(MinuteCount(datetime.fromtimestamp(minute * 60, UTC), int(done or 0), int(failed or 0)))
        return out


# -- Prometheus ------------------------------------------------------------------------------


class RedisCollector:
    """A prometheus-client collector that reads a `MetricsReader` snapshot at every scrape."""

    def __init__(self, reader: MetricsReader) -> None:
        self.reader = reader

    def describe(self) -> list[Any]:
        return []  # registering must not read Redis; the families are known only at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.reader.snapshot()
        for name, doc in COUNTERS.items():
            labels = ["queue", "job_name", "reason"] if name == "dead_lettered" else ["queue", "job_name"]
            family = CounterMetricFamily(f"forgejobs_jobs_{name}", doc, labels=labels)
            for c in snap.counters:
                if c.name == name:
                    values = [c.queue, c.job_name, c.reason or ""] if name == "dead_lettered" else [c.queue, c.job_name]
                    family.add_metric(values, c.value)
            yield family
        docs = {
            "run": "Run time of an attempt (handler and bookkeeping), by job type.",
            "wait": "Wait from ready (enqueued, or due) to start, by job type.",
        }
        for kind, doc in docs.items():
            hist = HistogramMetricFamily(f"forgejobs_job_{kind}_seconds", doc, labels=["queue", "job_name"])
            for h in snap.histograms:
                if h.name == kind:
                    buckets = [("+Inf" if b == float("inf") else f"{b:g}", n) for b, n in h.buckets]
                    hist.add_metric([h.queue, h.job_name], buckets, h.sum_seconds)
            yield hist
        jobs = GaugeMetricFamily("forgejobs_queue_jobs", "Jobs in each state now.", labels=["queue", "state"])
        for queue, states in snap.jobs.items():
            for state, n in states.items():
                jobs.add_metric([queue, state], n)
        yield jobs
        oldest = GaugeMetricFamily(
            "forgejobs_queue_oldest_waiting_seconds",
            "Seconds the longest-waiting ready job has waited (0 when none waits).",
            labels=["queue"],
        )
        for queue, age in snap.oldest_waiting.items():
            oldest.add_metric([queue], age or 0.0)
        yield oldest
        slots = GaugeMetricFamily(
            "forgejobs_queue_worker_slots", "Worker slots serving the queue with a live lease.", labels=["queue"]
        )
        for queue, n in snap.slots_alive.items():
            slots.add_metric([queue], n)
        yield slots
        paused = GaugeMetricFamily("forgejobs_queue_paused", "1 while the queue is paused.", labels=["queue"])
        for queue in snap.jobs or snap.slots_alive:
            paused.add_metric([queue], 1 if queue in snap.paused else 0)
        yield paused
        yield GaugeMetricFamily(
            "forgejobs_workers_alive", "Worker processes holding at least one live lease.", value=snap.workers_alive
        )


def _reader(settings: Settings | None, queues: Sequence[str] | None) -> MetricsReader:
    from .backends.redis import connect
    from .settings import Settings

    settings = settings or Settings()
    connection = connect(settings.redis_url_or_default(), settings.enqueue_timeout)
    return MetricsReader(connection, Keys(settings.key_prefix), queues)


def collector_registry(settings: Settings | None = None, queues: Sequence[str] | None = None) -> CollectorRegistry:
    """A prometheus-client registry holding only forgejobs' collector (queues: as `MetricsReader`)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(_reader(settings, queues)))
    return registry


def asgi_app(settings: Settings | None = None, queues: Sequence[str] | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics in Prometheus' text format: mount it, e.g.
    `app.mount("/metrics", forgejobs.metrics.asgi_app(settings))` in FastAPI or Starlette."""
    from prometheus_client import make_asgi_app

    app: Callable[..., Any] = make_asgi_app(collector_registry(settings, queues))
    return app


def wsgi_app(settings: Settings | None = None, queues: Sequence[str] | None = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the metrics (Flask: `DispatcherMiddleware(app.wsgi_app, {"/metrics": wsgi_app()})`)."""
    from prometheus_client import make_wsgi_app

    return cast(Callable[..., Iterable[bytes]], make_wsgi_app(collector_registry(settings, queues)))
