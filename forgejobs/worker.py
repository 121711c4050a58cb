"""Workers: the loops that take jobs from Redis and hand them to execution.

Two ways to run the same slots (one RQ `SimpleWorker` per unit of
concurrency, listening to its queue's priority sub-queues highest first):

- `ProcessWorker` (what `forgejobs worker` runs): one child process per slot
  under a supervisor, plus one child for RQ's scheduler. Timeouts use SIGALRM,
  so they stop a handler even inside a blocking call; a crashed child is
  replaced.
- `Worker`: the slots as threads of the calling process (the demo, tests,
  embedding). Lighter, but a timeout can only interrupt Python code.

Neither decides anything about retries or dead letters: that is
`forgejobs.execution`. The RQ subclasses below only adapt RQ's loop to run
under a supervisor.

Signals: the first SIGTERM (or SIGINT) lets running jobs finish and then
exits; a second one aborts them, and each aborted job is put back to run
again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from .backends import retention
from .backends import rq as rq_backend
from .backends.stalls import Heartbeat, reap
from .client import Client, set_client
from .deadletter import DeadLetter, DeadLetterStore, Reason
from .errors import ForgeJobsError
from .events import Hooks
from .execution import Outcome, Runtime, WorkerShutdown
from .keys import Keys, rq_job_key, rq_queue_key, rq_queue_names, split_rq_queue_name
from .ratelimit import RedisRateLimiter
from .registry import Registry
from .settings import Settings, load_hooks, load_resources
from .specs import QueueSpec
from .timeouts import WatchdogDeathPenalty

log = logging.getLogger("forgejobs.worker")


class _QuietDeadLetters(logging.Filter):
    """RQ logs a traceback for every job that raised; a dead letter is already logged once by execution."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and "forgejobs.backends.rq.DeadLetteredError" in str(args[-1]))


_rq_log = logging.getLogger("rq.worker")
if not any(isinstance(f, _QuietDeadLetters) for f in _rq_log.filters):
    _rq_log.addFilter(_QuietDeadLetters())


@dataclass
class WorkerStats:
    """Outcomes seen, by kind (`succeeded`, `retried`, `dead`, `aborted`)."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.counts[kind] += n

    def add_outcome(self, outcome: Outcome) -> None:
        kind = type(outcome).__name__.lower()
        self.add({"retry": "retried", "deadlettered": "dead"}.get(kind, kind))


class SlotWorker(SimpleWorker):
    """RQ's SimpleWorker, run by a forgejobs supervisor rather than on its own.

    The supervisor owns signals; there is no per-worker pub/sub thread; an
    idle wait returns every second so a stop request is seen; a job hash RQ
    cannot read is handed to `on_unreadable` (which dead-letters it) instead
    of ending the loop.
    """

    on_unreadable: Callable[[str, str, Exception], None] | None = None
    is_paused: Callable[[], bool] | None = None

    def _install_signal_handlers(self) -> None:
        pass

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass

    def stop_after_current(self) -> None:
        self._stop_requested = True

    def handle_job_retry(self, job: RQJob, queue: Queue, retry: Any, *args: Any, **kwargs: Any) -> None:
        super().handle_job_retry(job, queue, retry, *args, **kwargs)
        due_at = getattr(retry, "due_at", None)
        if due_at is not None and job.get_status(refresh=False) == "scheduled":
            # RQ stored a whole-second score not earlier than due; store the exact one.
            self.connection.zadd(ScheduledJobRegistry(queue=queue).key, {job.id: due_at}, xx=True)

    @property
    def stop_requested(self) -> bool:
        return bool(self._stop_requested)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:
            if self.is_paused is not None and self.is_paused():
                if self._stop_requested or timeout is None:
                    return None
                self.heartbeat()
                time.sleep(min(1.0, timeout))  # paused: take nothing, look again in a second
                continue
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time or timeout)
                if result is not None or self._stop_requested or max_idle_time is not None or timeout is None:
                    return result  # timeout None: RQ's burst mode, which asks once and stops when empty
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                queue = getattr(exc, "queue", None)
                if job_id is None or self.on_unreadable is None:
                    raise
                self.on_unreadable(str(job_id), getattr(queue, "name", "?"), exc)


class PauseFlag:
    """Whether a queue is paused, read from Redis at most once a second (no per-job cost)."""

    def __init__(self, connection: redis.Redis, keys: Keys, queue: str, every: float = 1.0) -> None:
        self.connection = connection
        self.key = keys.paused
        self.queue = queue
        self.every = every
        self._value = False
        self._read_at = float("-inf")

    def __call__(self) -> bool:
        if time.monotonic() - self._read_at >= self.every:
            # On a Redis error keep the last known state; RQ's own loop reports the connection problem.
            with contextlib.suppress(redis.RedisError):
                self._value = bool(self.connection.sismember(self.key, self.queue))
            self._read_at = time.monotonic()
        return self._value


class ThreadSlotWorker(SlotWorker):
    """A slot in a thread: SIGALRM only reaches the main thread, so timeouts use the shared watchdog."""

    death_penalty_class = WatchdogDeathPenalty


def dead_letter_unreadable(
    connection: redis.Redis, dead_letters: DeadLetterStore, job_id: str, rq_queue: str, exc: BaseException
) -> None:
    """Keep a job RQ could not load (or that failed outside execution) as a dead letter, raw fields and all."""
    fields = cast(dict[bytes, bytes], connection.hgetall(rq_job_key(job_id)))
    raw = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
    queue = split_rq_queue_name(rq_queue)[0] if ":p" in rq_queue else rq_queue
    record = DeadLetter(id=job_id, queue=queue, reason=Reason.CORRUPT, error=f"unreadable job: {exc!r}", raw=str(raw))
    dead_letters.add(record)
    log.error("dead-lettered unreadable job %s from %s: %r", job_id, rq_queue, exc)


def make_slot(
    worker_class: type[SlotWorker],
    connection: redis.Redis,
    dead_letters: DeadLetterStore,
    queue: str,
    name: str,
    on_dead: Callable[[], None] | None = None,
    heartbeat: Heartbeat | None = None,
    keys: Keys | None = None,
) -> SlotWorker:
    """One RQ worker listening to `queue`'s priority sub-queues, highest first."""

    def unreadable(job_id: str, rq_queue: str, exc: BaseException) -> None:
        dead_letter_unreadable(connection, dead_letters, job_id, rq_queue, exc)
        if on_dead is not None:
            on_dead()

    def exception_handler(job: RQJob, exc_type: type[BaseException], exc: BaseException, tb: Any) -> bool:
        if isinstance(exc, AbandonedJobError):
            rq_backend.on_abandoned(job)  # its worker died: retry or dead-letter as stalled
        elif not isinstance(exc, rq_backend.DeadLetteredError):
            # It failed outside execution (e.g. data RQ cannot deserialise).
            unreadable(job.id, job.origin, exc)
        return True

    rq_queues = [Queue(n, connection=connection, serializer=JSONSerializer) for n in rq_queue_names(queue)]
    worker = worker_class(
        rq_queues,
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        worker_ttl=16,  # RQ waits ttl-15 s per idle poll
        exception_handlers=[exception_handler],
    )
    worker.on_unreadable = unreadable
    if heartbeat is not None:
        heartbeat.register(name)
    worker.is_paused = PauseFlag(connection, Keys() if keys is None else keys, queue)
    worker.log_result_lifespan = False
    return worker


LOCK_RETRY_SECONDS = 2.0


REAP_SECONDS = 1.0
TRIM_SECONDS = 5.0


def run_scheduler(
    connection: redis.Redis,
    rq_queues: list[str],
    interval: float,
    stop: threading.Event,
    name: str | None = None,
    reaper: Callable[[list[Queue]], object] | None = None,
    specs: dict[str, QueueSpec] | None = None,
) -> None:
    """Move due delayed jobs and retries onto their queues until `stop` is set.

    RQ's scheduler takes a lock per queue, so any number of workers can run
    this loop and each due job is enqueued once. Locks not held are retried
    every LOCK_RETRY_SECONDS (RQ waits 120 s), so when a scheduler stops
    another takes over within seconds. A stable `name` (per supervisor) lets a
    restarted scheduler child refresh its predecessor's locks at once.
    """
    scheduler = RQScheduler(rq_queues, connection=connection, serializer=JSONSerializer, interval=1)
    if name:
        scheduler.name = name
    scheduler.log.setLevel(logging.WARNING)
    scheduler.register_birth()
    queues = {name: Queue(name, connection=connection, serializer=JSONSerializer) for name in rq_queues}
    wanted = set(rq_queues)
    last_try = last_reap = last_trim = 0.0
    try:
        while not stop.is_set():
            try:
                if set(scheduler.acquired_locks) != wanted and time.monotonic() - last_try >= LOCK_RETRY_SECONDS:
                    last_try = time.monotonic()
                    scheduler.acquire_locks()
                scheduler.heartbeat()
                held = [queues[name] for name in scheduler.acquired_locks]
                if held:
                    rq_backend.enqueue_due(connection, held, time.time())
                    if reaper is not None and time.monotonic() - last_reap >= REAP_SECONDS:
                        last_reap = time.monotonic()
                        reaper(held)
                    if specs is not None and time.monotonic() - last_trim >= TRIM_SECONDS:
                        last_trim = time.monotonic()
                        retention.trim(connection, held, specs)
            except redis.RedisError as exc:
                log.warning("scheduler: %s", exc)
            except Exception:  # noqa: BLE001 - one bad entry must not stop delayed jobs, retries and reaping
                log.exception("scheduler pass failed; trying again in %.2f s", interval)
            stop.wait(interval)
    finally:
        scheduler.release_locks()
        scheduler.register_death()


class WorkerBase:
    """What both worker kinds share: which queues, how many slots, when drained."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        names = queues or sorted(registry.queues)
        unknown = [q for q in names if q not in registry.queues]
        if unknown:
            declared = ", ".join(sorted(registry.queues))
            raise ForgeJobsError(f"unknown queue(s): {', '.join(unknown)}; declared: {declared}")
        if concurrency is not None and concurrency < 1:
            raise ForgeJobsError("concurrency must be at least 1")
        self.queues = names
        self.concurrency = {q: concurrency or registry.queues[q].concurrency for q in names}
        self.stats = WorkerStats()
        self.name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"

    @property
    def rq_queue_names(self) -> list[str]:
        return [n for q in self.queues for n in rq_queue_names(q)]

    def describe(self) -> str:
        return ", ".join(f"{q}×{self.concurrency[q]}" for q in self.queues)

    def pending(self, connection: redis.Redis, horizon: float = 0.0) -> int:
        """Jobs waiting, running, or scheduled to be due within `horizon` seconds."""
        with connection.pipeline() as pipe:
            for name in self.rq_queue_names:
                pipe.llen(rq_queue_key(name))
                pipe.zcard(StartedJobRegistry(name, connection=connection).key)
                pipe.zcount(ScheduledJobRegistry(name, connection=connection).key, 0, time.time() + horizon)
            return sum(int(n) for n in pipe.execute())


class Worker(WorkerBase):
    """The slots as threads of this process. Used by the demo, tests and embedding."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        connection: redis.Redis | None = None,
        resources: Any = None,  # None: built by load_resources(settings)
        on_outcome: Callable[[str, Outcome], None] | None = None,
        hooks: Hooks | None = None,  # None: load_hooks(settings)
    ) -> None:
        super().__init__(settings, registry, queues=queues, concurrency=concurrency)
        if resources is None:
            resources = load_resources(settings)
        self.connection = connection or rq_backend.connect(settings.redis_url_or_default())
        self.keys = Keys(settings.key_prefix)
        self.backend = rq_backend.RQBackend.for_connection(self.connection, settings)
        self.heartbeat = Heartbeat(self.connection, self.keys, settings.stall_timeout, self.backend.events)
        self._user_on_outcome = on_outcome
        self.runtime = Runtime(
            registry=registry,
            dead_letters=self.backend.dead_letters,
            resources=resources,
            report_progress=self.backend.report_progress,
            on_outcome=self._on_outcome,
            hooks=hooks if hooks is not None else load_hooks(settings),
            limiter=RedisRateLimiter(self.connection, self.keys.prefix),
            report_log=self.backend.append_log,
            events=self.heartbeat.emit,
        )
        self._slots: list[SlotWorker] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._signals = 0

    def _on_outcome(self, name: str, outcome: Outcome) -> None:
        self.stats.add_outcome(outcome)
        if self._user_on_outcome is not None:
            self._user_on_outcome(name, outcome)

    def _serve(self, slot: SlotWorker, max_jobs: int | None) -> None:
        while not self._stop.is_set():
            try:
                slot.work(burst=False, logging_level="WARNING", max_jobs=max_jobs, with_scheduler=False)
            except WorkerShutdown:
                pass
            except Exception:
                log.exception("worker loop %s crashed; restarting it in 1 s", slot.name)
                self._stop.wait(1)
            if max_jobs is not None or slot.stop_requested:
                return

    def start(self, max_jobs: int | None = None) -> None:
        rq_backend.install_runtime(self.runtime)
        set_client(Client(self.backend, self.registry))
        for queue in self.queues:
            for index in range(self.concurrency[queue]):
                slot = make_slot(
                    ThreadSlotWorker,
                    self.connection,
                    self.backend.dead_letters,
                    queue,
                    f"{self.name}.{queue}.{index}",
                    on_dead=lambda: self.stats.add("dead"),
                    heartbeat=self.heartbeat,
                    keys=self.keys,
                )
                self._slots.append(slot)
                self._threads.append(
                    threading.Thread(target=self._serve, args=(slot, max_jobs), name=slot.name, daemon=True)
                )
        self._threads.append(
            threading.Thread(
                target=run_scheduler,
                args=(self.connection, self.rq_queue_names, self.settings.scheduler_interval, self._stop),
                kwargs={"name": f"{self.name}-scheduler", "reaper": self._reap, "specs": self.registry.queues},
                name=f"{self.name}.scheduler",
                daemon=True,
            )
        )
        for thread in self._threads:
            thread.start()
        log.info("worker %s (threads) serving %s", self.name, self.describe())

    def _reap(self, queues: list[Queue]) -> None:
        reap(self.connection, queues, self.runtime, self.keys, self.settings.stall_timeout)

    def stop(self) -> None:
        """Finish running jobs, then stop."""
        self._stop.set()
        for slot in self._slots:
            slot.stop_after_current()

    def abort(self) -> None:
        """Stop now: running jobs are interrupted and put back on their queue."""
        self.stop()
        for thread in self._threads:
            if thread.ident is not None and rq_backend.handler_running(thread.ident):
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerShutdown)
                )

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._threads)

    def drained(self, horizon: float = 0.0) -> bool:
        """Nothing waiting, running, or due within `horizon` seconds."""
        busy = any(s.get_state() == WorkerStatus.BUSY for s in self._slots)
        return not busy and self.pending(self.connection, horizon) == 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("signal %d: finishing running jobs, then exiting (send again to abort them)", signum)
            self.stop()
        else:
            log.warning("signal %d again: aborting running jobs; they will run again", signum)
            self.abort()

    def run(self, *, burst: bool = False, horizon: float = 10.0, max_jobs: int | None = None) -> WorkerStats:
        """Work until stopped (or, with `burst`, until drained). Returns the outcome counts."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start(max_jobs=max_jobs)
        try:
            idle_checks = 0
            while not self._stop.is_set():
                if max_jobs is not None and not any(t.is_alive() for t in self._threads[:-1]):
                    break
                if burst:
                    idle_checks = idle_checks + 1 if self.drained(horizon) else 0
                    if idle_checks >= 3:
                        break
                self._stop.wait(0.1)
        finally:
            self.stop()
            self.join()  # running jobs finish; a second signal aborts them (see _on_signal)
            self.heartbeat.close()
            rq_backend.install_runtime(None)
        return self.stats
