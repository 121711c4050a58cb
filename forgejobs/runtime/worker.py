"""`Worker`: every slot of the chosen queues as a thread of one process.

Each slot loops: `fetch.lua` records the outcome of the job it just ran and takes the next one in
the same round trip; execution runs the job; repeat. A slot that finds nothing waits until the
process's waiter wakes it (see `waiter.py`); the upkeep thread (see `upkeep.py`) renews leases,
recovers dead workers' jobs, applies retention and writes events.

Signals (when `run` is called in the main thread): the first SIGTERM or SIGINT lets running jobs
finish and then exits; a second one aborts them, and each aborted job is put back at the front of
its queue to run the same attempt again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

from ..backends.redis import RedisBackend, describe
from ..backends.redis import connect as redis_connect
from ..client import Client, set_client
from ..deadletter import DeadLetter, Reason
from ..errors import BackendUnavailable, ForgeJobsError, UnknownJob
from ..events import Event, EventKind, Hooks
from ..execution import (
    Aborted,
    Cancelled,
    DeadLettered,
    Outcome,
    Retry,
    Runtime,
    Succeeded,
    WorkerOutcome,
    WorkerShutdown,
    execute_cancellable,
    retry_counter,
)
from ..keys import Keys
from ..logs import job_line
from ..outage import UNREACHABLE, Outage
from ..ratelimit import RedisRateLimiter
from ..registry import Registry
from ..settings import Settings, load_hooks, load_resources
from ..timeouts import watchdog_guard
from ..workflows.worker import WorkerWorkflows, outbox_entry
from .corrupt import read_record, shown_id
from .scripts import Scripts
from .state import EventBuffer, QueueState, ServerClock, Slot
from .upkeep import Upkeep
from .waiter import Waiter

log = logging.getLogger("forgejobs.worker")

IDLE_POLL = 2.0
"""An idle slot looks for work by itself this often, whatever the waiter does (a marker lost with a
killed process cannot strand jobs for longer)."""


def slot_pid(ident: str | bytes) -> int:
    """The process id in a slot's identity (`<host>.<pid>.<hex6>/<queue>/<index>/<generation>`, made by
    `Worker._new_ident`): which process holds a lease, for operators and fault tests."""
    text = ident.decode() if isinstance(ident, bytes) else ident
    return int(text.split("/", 1)[0].rsplit(".", 2)[1])


def slots_per_queue(registry: Registry, queues: list[str] | None, concurrency: int | None) -> dict[str, int]:
    """Queue -> slots to run: `queues` (default every declared queue) at `concurrency` (default each spec's).
    Refuses an undeclared queue or a concurrency below 1, naming them."""
    names = queues or sorted(registry.queues)
    unknown = [q for q in names if q not in registry.queues]
    if unknown:
        declared = ", ".join(sorted(registry.queues))
        raise ForgeJobsError(f"unknown queue(s): {', '.join(unknown)}; declared: {declared}")
    if concurrency is not None and concurrency < 1:
        raise ForgeJobsError("concurrency must be at least 1")
    return {q: concurrency or registry.queues[q].concurrency for q in names}


def _event_values(event: Event) -> list[str]:
    """An event's fields in the order fetch.lua reads them."""
    fields = event.to_fields()
    return [fields[name] for name in ("kind", "job_id", "name", "queue", "attempt", "at", "data")]


def _outcome_word(finish: Finish) -> str:
    """What the job line says happened: the first counter the finish adds to, without a reason (succeeded,
    retried, rate_limited, deferred, dead_lettered, cancelled, aborted). Every finish names its counters."""
    return finish.counters.split(" ", 1)[0].split(":", 1)[0]


def connect(url: str) -> redis.Redis:
    """A connection for a worker: socket timeouts above the waiter's longest block (1 s)."""
    return redis_connect(url, timeout=15, connect_timeout=5)


@dataclass
class WorkerStats:
    """Outcomes seen, by kind (`succeeded`, `retried`, `dead`, `aborted`)."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.counts[kind] += n

    def add_outcome(self, outcome: WorkerOutcome) -> None:
        kind = type(outcome).__name__.lower()
        self.add({"retry": "retried", "deadlettered": "dead"}.get(kind, kind))


@dataclass
class Fetched:
    """A job a slot took: its id as stored, its envelope (None: the record is not readable)."""

    id: bytes
    envelope: bytes | None
    priority: int
    concurrency_key: bytes | None


@dataclass
class Finish:
    """What to record about a job a slot ran, sent with the slot's next fetch."""

    mode: str  # done, failed, retry, requeue, cancelled
    job: Fetched
    payload: str | bytes
    ms: int
    owner: str  # the slot identity that took it
    events: list[str] = field(default_factory=list)  # outcome events, 7 fields each, written with the outcome
    name: str = "?"  # the job's name, for the metrics
    run_ms: int | None = None  # how long it ran (None: its handler did not run)
    counters: str = ""  # metric counters to add 1 to, space-separated (see runtime/scripts/metrics.lua)
    minute: str = ""  # per-minute kind: "c" succeeded, "f" a failed attempt
    workflow: str = ""  # a workflow step's final outcome, for its queue's workflow outbox (workflows/worker.py)


class Worker:
    """The slots of `queues` (default: every declared queue, at its spec concurrency) as threads."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        connection: redis.Redis | None = None,
        resources: Any = None,  # None: built by load_resources(settings)
        on_outcome: Callable[[str, Outcome], None] | None = None,  # not called for cancelled runs
        hooks: Hooks | None = None,  # None: load_hooks(settings)
        guard: Callable[[float], AbstractContextManager[object]] = watchdog_guard,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.concurrency = slots_per_queue(registry, queues, concurrency)
        self.queues = names = list(self.concurrency)
        self.stats = WorkerStats()
        self.name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.connection = connection or connect(settings.redis_url_or_default())
        self.keys = Keys(settings.key_prefix)
        self.backend = RedisBackend.for_connection(self.connection, settings)
        self.backend.use_queues(registry.queues)
        self.scripts = Scripts(self.connection)
        self.lease_ms = round(settings.stall_timeout * 1000)
        self.events = EventBuffer(self.backend.events)
        self.outage = Outage(f"worker {self.name}", describe(self.connection))
        self.clock = ServerClock()
        self.states = {q: QueueState(q, self.keys.queue(q), registry.queues[q]) for q in names}
        self._user_on_outcome = on_outcome
        self._resources = resources if resources is not None else load_resources(settings)
        self._hooks = hooks if hooks is not None else load_hooks(settings)
        self._limiter = RedisRateLimiter(self.connection, self.keys.prefix)
        self._guard = guard
        self._runtimes = {q: self._runtime(q) for q in names}
        self.waiter = Waiter(self)
        self.upkeep = Upkeep(self)
        self._stop = threading.Event()  # take no new jobs
        self._halt = threading.Event()  # the waiter and upkeep threads end
        self._threads: list[threading.Thread] = []
        self._signals = 0
        self._max_jobs: int | None = None
        self._generation = 0
        self._inline = False
        self._slot_local = threading.local()
        self._workflows: WorkerWorkflows | None = None

    # -- the pieces execution needs -------------------------------------------------------

    def _runtime(self, queue: str) -> Runtime:
        backend = self.backend

        def progress(job_id: str, value: Any) -> None:
            backend.report_progress(queue, job_id, value)

        def log_line(job_id: str, line: str) -> None:
            backend.append_log(queue, job_id, line)

        return Runtime(
            registry=self.registry,
            dead_letters=backend.dead_letters,
            resources=self._resources,
            report_progress=progress,
            on_outcome=self._on_outcome,
            hooks=self._hooks,
            limiter=self._limiter,
            report_log=log_line,
            events=self._route_events,
            guard=self._guard,
        )

    def _route_events(self, events: Sequence[Event]) -> None:
        """Where execution's events go. In a slot thread: `started` is written by fetch.lua with the take, and
        the outcome events with the outcome (atomically, in the slot's next fetch); progress is written at
        once. Elsewhere (recovery in the upkeep thread): the batched writer."""
        outbox: list[Event] | None = getattr(self._slot_local, "outbox", None)
        if outbox is None:
            self.events.emit(events)
            return
        for event in events:
            if event.kind is EventKind.STARTED:
                continue
            if event.kind is EventKind.PROGRESS:
                self.backend.events.append(event)
            else:
                outbox.append(event)

    def runtime_for(self, state: QueueState) -> Runtime:
        return self._runtimes[state.name]

    def _on_outcome(self, name: str, outcome: WorkerOutcome) -> None:
        self.stats.add_outcome(outcome)
        if self._user_on_outcome is not None and not isinstance(outcome, Cancelled):
            self._user_on_outcome(name, outcome)

    def _options(self, name: str | None) -> Any:
        try:
            return self.registry.resolve(name or "").options
        except UnknownJob:
            return None

    def result_ttl_ms(self, name: str | None) -> int:
        options = self._options(name)
        return round(options.result_ttl.total_seconds() * 1000) if options else 3_600_000

    def failure_ttl_ms(self, name: str | None) -> int:
        options = self._options(name)
        return round(options.failure_ttl.total_seconds() * 1000) if options else 7 * 86_400_000

    @property
    def workflows(self) -> WorkerWorkflows:
        """Reports workflow steps' outcomes to their runs and repairs what killed workers left."""
        if self._workflows is None:
            queues = [self.states[q].keys for q in self.queues]
            self._workflows = WorkerWorkflows(Client(self.backend, self.registry), queues)
        return self._workflows

    # -- lifecycle ---------------------------------------------------------------------

    def describe(self) -> str:
        return ", ".join(f"{q}×{self.concurrency[q]}" for q in self.queues)

    def _new_ident(self, queue: str, index: int) -> str:
        self._generation += 1
        return f"{self.name}/{queue}/{index}/{self._generation}"

    def reach_redis(self, give_up_after: float | None = None) -> bool:
        """Wait until Redis answers (one log line when it does not, one when it does again), with backoff and
        jitter. Raises BackendUnavailable after `give_up_after` seconds (None: wait on); False if stopped."""
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.upkeep.refresh()
                self.outage.recovered()
                return True
            except UNREACHABLE as exc:
                pause = self.outage.failed(exc) * random.uniform(0.5, 1.5)
                if give_up_after is not None and time.monotonic() - started + pause > give_up_after:
                    raise BackendUnavailable(
                        f"Redis at {describe(self.connection)} cannot be reached ({exc}); gave up after "
                        f"{give_up_after:g}s"
                    ) from None
                self._stop.wait(pause)
        return False

    def start(self, max_jobs: int | None = None, give_up_after: float | None = None) -> None:
        """Start the slot, waiter and upkeep threads and return, once Redis answers (see `reach_redis`)."""
        self._max_jobs = max_jobs
        set_client(Client(self.backend, self.registry))
        if not self.reach_redis(give_up_after):
            return
        if not self._inline:
            for queue in self.queues:
                state = self.states[queue]
                for index in range(self.concurrency[queue]):
                    state.slots.append(Slot(queue, index, self._new_ident(queue, index)))
        with contextlib.suppress(*UNREACHABLE):  # the slots register their leases with their first fetch
            self.upkeep.beat()
        if not self._inline:
            for state in self.states.values():
                for slot in state.slots:
                    self._start_slot(slot)
        daemons = [(self.waiter.run, "waiter"), (self.upkeep.run, "upkeep"), (self.workflows.run, "workflows")]
        for target, name in daemons:
            thread = threading.Thread(target=target, args=(self._halt,), name=f"forgejobs-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s serving %s", self.name, self.describe())

    def _start_slot(self, slot: Slot) -> None:
        slot.thread = threading.Thread(target=self._serve, args=(slot,), name=slot.ident, daemon=True)
        slot.thread.start()

    def supervise(self) -> None:
        """Replace slots whose thread died or that are stuck in a job, under a fresh identity."""
        if self._stop.is_set() or self._inline:
            return  # an inline slot is the process: its supervisor replaces the process
        for state in self.states.values():
            for position, slot in enumerate(state.slots):
                if slot.alive() or slot.thread is None:
                    continue
                if self._max_jobs is not None and slot.jobs >= self._max_jobs:
                    continue  # done, not dead
                log.error("worker slot %s stopped (died or stuck); starting another", slot.ident)
                slot.retired = True
                state.retired_idents.append(slot.ident)
                fresh = Slot(slot.queue, slot.index, self._new_ident(slot.queue, slot.index))
                state.slots[position] = fresh
                self._start_slot(fresh)

    def stop(self) -> None:
        """Finish running jobs, then stop."""
        self._stop.set()
        for state in self.states.values():
            for slot in state.slots:
                slot.wake.set()
        self.waiter.poke()

    def abort(self) -> None:
        """Stop now: running jobs are interrupted and put back to run the same attempt again."""
        self.stop()
        for slot in self._all_slots():
            thread = slot.thread
            if slot.in_handler and thread is not None and thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerShutdown)
                )

    def _all_slots(self) -> Iterator[Slot]:
        for state in self.states.values():
            yield from state.slots

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the slots to end, then stop the waiter and upkeep (writing the last events)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.current_thread()
        slots = [s for s in self._all_slots() if s.thread is not None and s.thread is not me]
        for slot in slots:
            assert slot.thread is not None
            slot.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(s.thread is not None and s.thread.is_alive() for s in slots):
            return False
        self._halt.set()
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def pending(self, horizon: float = 0.0) -> int:
        """Jobs of these queues waiting, running, or delayed and due within `horizon` seconds."""
        return self.backend.pending(self.queues, horizon * 1000)

    def drained(self, horizon: float = 0.0) -> bool:
        """Nothing waiting, running, or due within `horizon` seconds, on the queues that are not paused."""
        busy = any(slot.job_started is not None for slot in self._all_slots())
        serving = [q for q in self.queues if not self.states[q].paused]
        return not busy and self.backend.pending(serving, horizon * 1000) == 0

    def _say_paused(self, horizon: float) -> None:
        """At the end of a burst: name the paused queues that still hold jobs (a burst does not wait for them)."""
        for queue in self.queues:
            if self.states[queue].paused:
                left = self.backend.pending([queue], horizon * 1000)
                if left:
                    log.warning("%s is paused: %d job(s) left for when it is resumed", queue, left)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("signal %d: finishing running jobs, then exiting (send again to abort them)", signum)
            self.stop()
        else:
            log.warning("signal %d again: aborting running jobs; they will run again", signum)
            self.abort()

    def run_inline(self) -> WorkerStats:
        """Run this worker's one slot in the calling (main) thread until stopped: a `mode: processes` child,
        whose `alarm_guard` timeouts need the main thread. A second SIGTERM aborts the running job."""
        slots = sum(self.concurrency.values())
        if slots != 1 or threading.current_thread() is not threading.main_thread():
            raise ForgeJobsError("run_inline runs exactly one slot, in the main thread")

        # A second SIGTERM aborts the job: `abort` raises WorkerShutdown in the slot's thread, this main thread.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards a terminal's Ctrl+C
        state = self.states[self.queues[0]]
        slot = Slot(state.name, 0, self._new_ident(state.name, 0), thread=threading.main_thread())
        state.slots.append(slot)
        self._inline = True
        self.start()
        try:
            self._serve(slot)
        finally:
            self.stop()
            self.join(10)
        return self.stats

    def run(self, *, burst: bool = False, horizon: float = 10.0, max_jobs: int | None = None) -> WorkerStats:
        """Work until stopped (or, with `burst`, until drained). Returns the outcome counts."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start(max_jobs=max_jobs, give_up_after=self.settings.enqueue_timeout if burst else None)
        try:
            idle_checks = 0
            while not self._stop.is_set():
                if max_jobs is not None and all(s.jobs >= max_jobs for s in self._all_slots()):
                    break
                if burst:
                    try:
                        idle_checks = idle_checks + 1 if self.drained(horizon) else 0
                    except redis.RedisError as exc:
                        self.outage.failed(exc)
                        idle_checks = 0
                    if idle_checks >= 3:
                        with contextlib.suppress(redis.RedisError):
                            self._say_paused(horizon)
                        break
                self._stop.wait(0.05 if burst else 0.2)
        finally:
            self.stop()
            while not self.join(1.0):  # running jobs finish; a second signal aborts them
                pass
        return self.stats

    # -- one slot ------------------------------------------------------------------------

    def _may_take(self, slot: Slot, state: QueueState) -> bool:
        if self._stop.is_set() or slot.retired or state.paused:
            return False
        return self._max_jobs is None or slot.jobs < self._max_jobs

    def _serve(self, slot: Slot) -> None:
        state = self.states[slot.queue]
        finish: Finish | None = None
        woke = True
        while True:
            take = self._may_take(slot, state)
            if finish is None and not take:
                if self._stop.is_set() or slot.retired or (self._max_jobs is not None and slot.jobs >= self._max_jobs):
                    return
                self._idle(slot, state, 0.5)  # paused
                continue
            try:
                if finish is not None and finish.owner != slot.ident:
                    self._fetch(state, slot, finish, take=False, woke=False)  # under the identity that took it
                    finish = None
                    continue
                job, status = self._fetch(state, slot, finish, take=take, woke=woke)
                self.outage.recovered()
            except redis.RedisError as exc:
                ident = slot.ident
                if take:
                    # The reply is lost: the call may have run and given this identity a job we never saw.
                    # Take a fresh identity; the old one's lease runs out and recovery requeues what it held.
                    slot.ident = self._new_ident(slot.queue, slot.index)
                    woke = True  # the next fetch registers the new identity's lease
                if isinstance(exc, UNREACHABLE):
                    self._stop.wait(self.outage.failed(exc))
                else:  # Redis answered with an error: say so, and try again shortly
                    log.error("%s: fetch failed: %s", ident, exc)
                    self._stop.wait(1.0)
                continue
            finish = None
            if status == "lost":
                # This identity was taken for dead (its lease ran out while it worked): go on as a new one.
                slot.ident = self._new_ident(slot.queue, slot.index)
                woke = True
                continue
            if job is None:
                if status == "limited" or take:
                    woke = True
                    self._idle(slot, state, IDLE_POLL)
                continue
            if woke:
                state.wake_one()  # it found work: another idle slot may too
            woke = False
            finish = self._run(state, slot, job)
            slot.jobs += 1

    def _idle(self, slot: Slot, state: QueueState, timeout: float) -> None:
        with state.lock:
            state.idle.append(slot)
        self.waiter.poke(state.name)
        deadline = time.monotonic() + timeout
        while not slot.wake.is_set() and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            slot.wake.wait(min(remaining, 0.5))
        slot.wake.clear()
        with state.lock:
            if slot in state.idle:
                state.idle.remove(slot)

    def _fetch(
        self, state: QueueState, slot: Slot, finish: Finish | None, *, take: bool, woke: bool
    ) -> tuple[Fetched | None, str]:
        keys = state.keys
        args: list[Any] = [keys.job_prefix, finish.owner if finish else slot.ident, self.lease_ms]
        if finish is None:
            args += ["", "", "", 0, 0]
        else:
            args += [finish.mode, finish.job.id, finish.payload, finish.ms, finish.job.priority]
        limit = state.spec.global_concurrency or 0
        args += ["1" if take else "", limit, "1" if woke else "", keys.ck_prefix]
        args.append(finish.job.concurrency_key or "" if finish else "")
        args += [int(time.time() * 1000), self.backend.events.maxlen, state.name]
        if finish is None:
            args += [0, "", "", "", ""]
        else:
            args.append(len(finish.events) // 7)
            args += finish.events
            run_ms = "" if finish.run_ms is None else finish.run_ms
            args += [finish.name, run_ms, finish.counters, finish.minute, finish.workflow]
        lost, job_id, envelope, priority, ck, status = self.scripts.fetch(
            keys=[*keys.standard, self.keys.events, *keys.fetch_keys], args=args
        )
        if lost and finish is not None:
            log.warning(
                "%s %s: its lease had been recovered (the worker was too slow or cut off); this run's outcome "
                "(%s) is not recorded, the job runs again",
                state.name,
                shown_id(finish.job.id),
                finish.mode,
            )
        if not lost and finish is not None and finish.workflow:
            self.workflows.report(keys, finish.job.id, finish.workflow)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if job_id is None:
            return None, text
        return Fetched(job_id, envelope, int(priority), ck), text

    def _run(self, state: QueueState, slot: Slot, job: Fetched) -> Finish:
        shown = shown_id(job.id)
        if job.envelope is None:
            return self._corrupt(state, slot, job, shown)
        runtime = self._runtimes[state.name]
        slot.job_timeout = self._timeout_hint(job.envelope)
        slot.job_id = job.id
        slot.cancel = cancel = threading.Event()
        slot.job_started = started = time.monotonic()
        slot.in_handler = True
        outbox: list[Event] = []
        self._slot_local.outbox = outbox
        try:
            ran = execute_cancellable(job.envelope, runtime, job_id=shown, queue=state.name, cancel=cancel)
            finish = self._finish_for(ran, job, slot)
            outcome: WorkerOutcome | None = ran
        except WorkerShutdown:
            finish = Finish("requeue", job, job.envelope, 0, slot.ident, counters="aborted")
            outcome = None
        except BaseException:  # noqa: BLE001 - e.g. a timeout that fired after perform returned
            log.exception("%s %s: failed outside its handler; running it again in 1 s", state.name, shown)
            finish = Finish("retry", job, job.envelope, 1000, slot.ident, counters="retried", minute="f")
            outcome = None
        finally:
            self._slot_local.outbox = None
            slot.in_handler = False
            slot.job_started = None
            slot.job_id = None
        elapsed = time.monotonic() - started
        if finish.mode != "requeue" and not finish.counters.startswith("rate_limited"):
            finish.run_ms = round(elapsed * 1000)
        if finish.name == "?":
            finish.name = self._name_hint(job.envelope)
        finish.events = [value for event in outbox for value in _event_values(event)]
        if b'"workflow":"' in job.envelope:
            finish.workflow = outbox_entry(job.envelope, finish.mode, finish.payload)
        job_line(
            log,
            queue=state.name,
            job_id=shown,
            name=finish.name,
            attempt=self._attempt_hint(outcome),
            outcome=_outcome_word(finish),
            duration=elapsed,
            error=outcome.error
            if isinstance(outcome, Retry)
            else outcome.record.error
            if isinstance(outcome, DeadLettered)
            else None,
        )
        return finish

    def _finish_for(self, outcome: WorkerOutcome, job: Fetched, slot: Slot) -> Finish:
        name = outcome.name
        if isinstance(outcome, Succeeded):
            payload = json.dumps(outcome.value, separators=(",", ":"))
            ttl = self.result_ttl_ms(name)
            return Finish("done", job, payload, ttl, slot.ident, name=name, counters="succeeded", minute="c")
        if isinstance(outcome, Retry):
            counter, minute = retry_counter(outcome)
            delay = round(outcome.delay * 1000)
            encoded = outcome.envelope.encode()
            return Finish("retry", job, encoded, delay, slot.ident, name=name, counters=counter, minute=minute)
        if isinstance(outcome, DeadLettered):
            record = outcome.record
            counter = f"dead_lettered:{record.reason.value}"
            ttl = self.failure_ttl_ms(record.name)
            return Finish("failed", job, record.error, ttl, slot.ident, name=name, counters=counter, minute="f")
        if isinstance(outcome, Cancelled):
            ttl = self.result_ttl_ms(name)
            return Finish("cancelled", job, "", ttl, slot.ident, name=name, counters="cancelled")
        assert isinstance(outcome, Aborted)
        return Finish("requeue", job, outcome.envelope.encode(), 0, slot.ident, name=name, counters="aborted")

    @staticmethod
    def _name_hint(envelope: bytes) -> str:
        """The job's name, read from the first `"name":"` of its envelope (where the client writes it) without
        parsing the whole; "?" when there is none."""
        found = envelope.find(b'"name":"')
        if found < 0:
            return "?"
        start = found + 8
        end = envelope.find(b'"', start)
        return envelope[start:end].decode("utf-8", "replace") if end >= 0 else "?"

    @staticmethod
    def _attempt_hint(outcome: WorkerOutcome | None) -> int | None:
        if isinstance(outcome, Succeeded):
            return outcome.attempt
        if isinstance(outcome, Retry):
            history = outcome.envelope.history
            return history[-1].attempt if history else outcome.envelope.attempt
        if isinstance(outcome, DeadLettered):
            attempts = outcome.record.attempts
            return attempts[-1].attempt if attempts else 1
        if isinstance(outcome, (Aborted,)):
            return outcome.envelope.attempt
        if isinstance(outcome, Cancelled):
            return outcome.attempt
        return None

    def _timeout_hint(self, envelope: bytes) -> float:
        """The job's timeout, for the stuck-slot check (execution enforces it); 300 s for a name it does not
        know or cannot read."""
        options = self._options(self._name_hint(envelope))
        return options.timeout.total_seconds() if options else 300.0

    def _corrupt(self, state: QueueState, slot: Slot, job: Fetched, shown: str) -> Finish:
        """A record without a readable envelope: keep what is there as a dead letter, never run it."""
        try:
            kind, raw = read_record(self.connection, state.keys.job_bytes(job.id))
        except redis.RedisError as exc:
            kind, raw = "?", f"<unreadable: {exc}>"
        if kind == "none":
            error = "corrupt record: no envelope (an id on a wait list with no record)"
        elif kind == "hash":
            error = "corrupt record: no envelope"
        else:
            error = f"corrupt record: a {kind}, not a hash"
        record = DeadLetter(id=shown, queue=state.name, reason=Reason.CORRUPT, error=error, raw=raw)
        self._runtimes[state.name].dead_letters.add(record)
        log.error("dead-lettered %s from %s: %s", shown, state.name, error)
        self.stats.add("dead")
        counter = f"dead_lettered:{Reason.CORRUPT.value}"
        return Finish("failed", job, error, self.failure_ttl_ms(None), slot.ident, counters=counter, minute="f")
