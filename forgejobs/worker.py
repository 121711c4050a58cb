"""`forgejobs worker`: run each served queue's concurrency as threads in one process.

Each slot is an RQ `SimpleWorker` (no fork per job) listening to its queue's
priority sub-queues, highest first. The subclass below only adapts RQ to
running in a thread; retry, dead-letter and outcome decisions live in
`forgejobs.execution`. RQ's scheduler loop runs in a thread of this process,
so delayed jobs and retries fire without a separate process.

Signals: the first SIGTERM (or SIGINT) lets running jobs finish and then
exits; a second one aborts them, and each aborted job is put back to run
again.
"""

from __future__ import annotations

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
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job as RQJob
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from .backends import rq as rq_backend
from .client import Client, set_client
from .deadletter import DeadLetter, Reason
from .errors import ForgeJobsError
from .execution import Outcome, Runtime, WorkerShutdown
from .keys import rq_queue_names, split_rq_queue_name
from .registry import Registry
from .settings import Settings

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
    """Outcomes seen by this process, by kind (`succeeded`, `retried`, `dead`, `aborted`)."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1


class _ThreadWorker(SimpleWorker):
    """RQ's SimpleWorker, adapted to run in a non-main thread.

    Signals belong to the main thread, timeouts use a timer thread instead of
    SIGALRM, there is no per-worker pub/sub thread, and a job hash RQ cannot
    read is dead-lettered instead of ending the loop.
    """

    death_penalty_class = TimerDeathPenalty
    on_corrupt: Callable[[str, str, Exception], None] | None = None

    def _install_signal_handlers(self) -> None:
        pass

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass

    def stop_after_current(self) -> None:
        self._stop_requested = True

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # RQ keeps blocking until a job arrives; come back after each empty wait
        # so that a stop request is seen within `timeout` seconds.
        while True:
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time or timeout)
                if result is not None or self._stop_requested or max_idle_time is not None:
                    return result
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                queue = getattr(exc, "queue", None)
                if job_id is None or self.on_corrupt is None:
                    raise
                self.on_corrupt(str(job_id), getattr(queue, "name", "?"), exc)


class Worker:
    """Serves some queues with their concurrency, in threads of this process."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        connection: redis.Redis | None = None,
        resources: Any = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        names = queues or sorted(registry.queues)
        unknown = [q for q in names if q not in registry.queues]
        if unknown:
            raise ForgeJobsError(f"unknown queue(s): {', '.join(unknown)}; declared: {', '.join(sorted(registry.queues))}")
        self.queues = names
        self.concurrency = {q: concurrency or registry.queues[q].concurrency for q in names}
        self.connection = connection or rq_backend.connect(settings.redis_url_or_default())
        self.backend = rq_backend.RQBackend(self.connection, dead_letter_limit=settings.dead_letter_limit)
        self.stats = WorkerStats()
        self._user_on_outcome = on_outcome
        self.runtime = Runtime(
            registry=registry,
            dead_letters=self.backend.dead_letters,
            resources=resources,
            report_progress=self.backend.report_progress,
            on_outcome=self._on_outcome,
        )
        self._rq_workers: list[_ThreadWorker] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._signals = 0
        self.name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"

    # -- outcomes -----------------------------------------------------------------

    def _on_outcome(self, name: str, outcome: Outcome) -> None:
        kind = type(outcome).__name__.lower()
        self.stats.add({"retry": "retried", "deadlettered": "dead"}.get(kind, kind))
        if self._user_on_outcome is not None:
            self._user_on_outcome(name, outcome)

    def _dead_letter_unreadable(self, job_id: str, rq_queue: str, exc: BaseException) -> None:
        raw = {k.decode(): v.decode("utf-8", "replace") for k, v in self.connection.hgetall(f"rq:job:{job_id}").items()}
        queue = split_rq_queue_name(rq_queue)[0] if ":p" in rq_queue else rq_queue
        self.backend.dead_letters.add(
            DeadLetter(id=job_id, queue=queue, reason=Reason.CORRUPT, error=f"unreadable job: {exc!r}", raw=str(raw))
        )
        self.stats.add("dead")
        log.error("dead-lettered unreadable job %s from %s: %r", job_id, rq_queue, exc)

    def _exception_handler(self, job: RQJob, exc_type: type[BaseException], exc: BaseException, tb: Any) -> bool:
        if isinstance(exc, rq_backend.DeadLetteredError):
            return True
        # Failed outside execution (e.g. data RQ cannot deserialise): keep it as a dead letter.
        self._dead_letter_unreadable(job.id, job.origin, exc)
        return True

    # -- running ------------------------------------------------------------------

    def _make_rq_worker(self, queue: str, slot: int) -> _ThreadWorker:
        rq_queues = [Queue(n, connection=self.connection, serializer=JSONSerializer) for n in rq_queue_names(queue)]
        worker = _ThreadWorker(
            rq_queues,
            connection=self.connection,
            serializer=JSONSerializer,
            name=f"{self.name}.{queue}.{slot}",
            worker_ttl=16,  # RQ blocks for ttl-15 s between checks for a stop request
            exception_handlers=[self._exception_handler],
            disable_default_exception_handler=False,
        )
        worker.on_corrupt = self._dead_letter_unreadable
        worker.log_result_lifespan = False
        return worker

    def _serve(self, worker: _ThreadWorker, max_jobs: int | None) -> None:
        while not self._stop.is_set():
            try:
                worker.work(burst=False, logging_level="WARNING", max_jobs=max_jobs, with_scheduler=False)
            except WorkerShutdown:
                pass
            except Exception:
                log.exception("worker loop %s crashed; restarting it", worker.name)
            if max_jobs is not None or worker._stop_requested:
                return

    def _scheduler_loop(self) -> None:
        names = [n for q in self.queues for n in rq_queue_names(q)]
        scheduler = RQScheduler(
            names, connection=self.connection, serializer=JSONSerializer, interval=1  # lock TTL is interval + 60 s
        )
        scheduler.log.setLevel(logging.WARNING)
        scheduler.register_birth()
        try:
            while not self._stop.is_set():
                try:
                    if scheduler.should_reacquire_locks:
                        scheduler.acquire_locks()
                    scheduler.heartbeat()
                    scheduler.enqueue_scheduled_jobs()
                except redis.RedisError as exc:
                    log.warning("scheduler: %s", exc)
                self._stop.wait(self.settings.scheduler_interval)
        finally:
            scheduler.release_locks()
            scheduler.register_death()

    def start(self, max_jobs: int | None = None) -> None:
        rq_backend.install_runtime(self.runtime)
        set_client(Client(self.backend, self.registry))
        for queue in self.queues:
            for slot in range(self.concurrency[queue]):
                worker = self._make_rq_worker(queue, slot)
                self._rq_workers.append(worker)
                thread = threading.Thread(target=self._serve, args=(worker, max_jobs), name=worker.name, daemon=True)
                self._threads.append(thread)
        scheduler = threading.Thread(target=self._scheduler_loop, name=f"{self.name}.scheduler", daemon=True)
        self._threads.append(scheduler)
        for thread in self._threads:
            thread.start()
        log.info(
            "worker %s serving %s",
            self.name,
            ", ".join(f"{q}×{self.concurrency[q]}" for q in self.queues),
        )

    def stop(self) -> None:
        """Finish running jobs, then stop."""
        self._stop.set()
        for worker in self._rq_workers:
            worker.stop_after_current()

    def abort(self) -> None:
        """Stop now: running jobs are interrupted and put back on their queue."""
        self.stop()
        for worker, thread in zip(self._rq_workers, self._threads):
            if worker.get_state() == WorkerStatus.BUSY and thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerShutdown))

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._threads)

    def _busy(self) -> bool:
        return any(w.get_state() == WorkerStatus.BUSY for w in self._rq_workers)

    def drained(self, horizon: float = 0.0) -> bool:
        """Nothing waiting, nothing running, and nothing scheduled to be due within `horizon` seconds."""
        names = [n for q in self.queues for n in rq_queue_names(q)]
        with self.connection.pipeline() as pipe:
            for name in names:
                pipe.llen(f"rq:queue:{name}")
                pipe.zcount(ScheduledJobRegistry(name, connection=self.connection).key, 0, time.time() + horizon)
            counts = pipe.execute()
        return sum(counts) == 0 and not self._busy()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("signal %d: finishing running jobs, then exiting (send again to abort them)", signum)
            self.stop()
        else:
            log.warning("signal %d again: aborting running jobs; they will run again", signum)
            self.abort()

    def run(self, *, burst: bool = False, horizon: float = 10.0, max_jobs: int | None = None) -> WorkerStats:
        """Work until stopped by a signal (or, with `burst`, until drained). Returns the outcome counts."""
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
            self.join(timeout=30)
            rq_backend.install_runtime(None)
        return self.stats


def _describe_loop(worker: Worker) -> str:  # pragma: no cover - used by the CLI's log line
    return ", ".join(f"{q}×{worker.concurrency[q]}" for q in worker.queues)
