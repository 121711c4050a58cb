"""`ProcessWorker`: what `forgejobs worker` runs. A supervisor and one child per slot.

The supervisor loads the registry, forks one child process per unit of
concurrency (each running one `SlotWorker` in its main thread) and one child
running RQ's scheduler, then only watches: it forwards signals, replaces a
child that dies unexpectedly, and in burst mode stops the children once
nothing is pending. It never touches Redis in a thread, so forking stays safe.

Each child builds its own Redis connection and `ctx.resources` after the
fork. Timeouts use SIGALRM in the child's main thread, which stops a handler
even inside a blocking call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from rq import Queue

from .backends import rq as rq_backend
from .backends.stalls import Heartbeat, reap
from .client import Client, set_client
from .execution import Outcome, Runtime, WorkerShutdown
from .keys import Keys
from .ratelimit import RedisRateLimiter
from .registry import Registry
from .settings import Settings, load_hooks, load_resources
from .worker import SlotWorker, WorkerBase, WorkerStats, make_slot, run_scheduler

log = logging.getLogger("forgejobs.worker")

SCHEDULER = "<scheduler>"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class _Child:
    pid: int
    queue: str  # or SCHEDULER
    index: int
    report_fd: int
    started: float


class ProcessWorker(WorkerBase):
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(settings, registry, queues=queues, concurrency=concurrency)
        self._children: dict[int, _Child] = {}
        self._stopping = False
        self._signals = 0
        self._stop_early = False  # set in a child by a SIGTERM that came before its handler

    # -- supervisor -------------------------------------------------------------

    def run(self, *, burst: bool = False, horizon: float = 10.0) -> WorkerStats:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for queue in self.queues:
            for index in range(self.concurrency[queue]):
                self._spawn(queue, index)
        self._spawn(SCHEDULER, 0)
        log.info("worker %s (processes) serving %s", self.name, self.describe())
        connection = rq_backend.connect(self.settings.redis_url_or_default()) if burst else None
        idle_checks = 0
        while self._children:
            self._reap()
            if connection is not None and not self._stopping:
                idle_checks = idle_checks + 1 if self.pending(connection, horizon) == 0 else 0
                if idle_checks >= 3:
                    self.stop()
            time.sleep(0.1)
        return self.stats

    def stop(self) -> None:
        """Tell every child to finish its running job and exit."""
        self._stopping = True
        self._signal_children(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("signal %d: finishing running jobs, then exiting (send again to abort them)", signum)
        else:
            log.warning("signal %d again: aborting running jobs; they will run again", signum)
        self.stop()

    def _signal_children(self, sig: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _spawn(self, queue: str, index: int) -> None:
        # Signals are blocked across the fork: a SIGTERM arriving in between is then seen by the
        # supervisor after it has recorded the child (and forwarded to it), and by the child only
        # once it has its own handler, never by the supervisor's handler running in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child
                os.close(read_fd)
                self._child_main(queue, index, write_fd)
            os.close(write_fd)
            self._children[pid] = _Child(pid, queue, index, read_fd, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                continue
            self._collect(child)
            if self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error("child %d (%s #%d) exited with %s; starting another", pid, child.queue, child.index, code)
            if time.monotonic() - child.started < 1:
                time.sleep(1)  # do not spin if children die at start
            if not self._stopping:  # a stop may have come during the pause
                self._spawn(child.queue, child.index)

    def _collect(self, child: _Child) -> None:
        chunks = []
        while True:
            chunk = os.read(child.report_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(child.report_fd)
        if chunks:
            try:
                for kind, n in json.loads(b"".join(chunks)).items():
                    self.stats.add(kind, int(n))
            except ValueError:
                pass

    # -- children ----------------------------------------------------------------

    def _child_main(self, queue: str, index: int, report_fd: int) -> NoReturn:
        code = 0
        stats = WorkerStats()
        try:
            # A terminal's Ctrl+C reaches the supervisor, which forwards it as SIGTERM.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, self._early_stop)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            if queue == SCHEDULER:
                self._scheduler_child()
            else:
                self._slot_child(queue, index, stats)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                os.write(report_fd, json.dumps(dict(stats.counts)).encode())
                os.close(report_fd)
            finally:
                logging.shutdown()
                os._exit(code)

    def _early_stop(self, signum: int, frame: FrameType | None) -> None:
        """A child's SIGTERM handler until it has set up its own."""
        self._stop_early = True

    def _scheduler_child(self) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        if self._stop_early:
            stop.set()
        connection = rq_backend.connect(self.settings.redis_url_or_default())
        keys = Keys(self.settings.key_prefix)
        backend = rq_backend.RQBackend.for_connection(connection, self.settings)
        runtime = Runtime(self.registry, backend.dead_letters, events=backend.events.append_many)
        timeout = self.settings.stall_timeout

        def reaper(queues: list[Queue]) -> None:
            reap(connection, queues, runtime, keys, timeout)

        # One name per supervisor: a replaced scheduler child refreshes its predecessor's locks.
        run_scheduler(
            connection,
            self.rq_queue_names,
            self.settings.scheduler_interval,
            stop,
            f"{self.name}-scheduler",
            reaper,
            self.registry.queues,
        )

    def _slot_child(self, queue: str, index: int, stats: WorkerStats) -> None:
        connection = rq_backend.connect(self.settings.redis_url_or_default())
        keys = Keys(self.settings.key_prefix)
        backend = rq_backend.RQBackend.for_connection(connection, self.settings)

        def on_outcome(name: str, outcome: Outcome) -> None:
            stats.add_outcome(outcome)

        heartbeat = Heartbeat(connection, keys, self.settings.stall_timeout, backend.events)
        rq_backend.install_runtime(
            Runtime(
                self.registry,
                backend.dead_letters,
                load_resources(self.settings),
                backend.report_progress,
                on_outcome,
                load_hooks(self.settings),
                RedisRateLimiter(connection, keys.prefix),
                backend.append_log,
                heartbeat.emit,
            )
        )
        set_client(Client(backend, self.registry))
        slot: SlotWorker = make_slot(
            SlotWorker,
            connection,
            backend.dead_letters,
            queue,
            f"{self.name}.{queue}.{index}.{os.getpid()}",  # unique: a replaced child's record may still be live
            on_dead=lambda: stats.add("dead"),
            heartbeat=heartbeat,
            keys=keys,
        )
        signals = 0

        def on_term(signum: int, frame: FrameType | None) -> None:
            nonlocal signals
            signals += 1
            slot.stop_after_current()
            # Interrupt only a running handler: anywhere else (waiting, RQ's bookkeeping) the job
            # could be lost, and the loop ends by itself within a second.
            if signals > 1 and rq_backend.handler_running():
                raise WorkerShutdown()

        signal.signal(signal.SIGTERM, on_term)
        if self._stop_early:
            slot.stop_after_current()
        while not slot.stop_requested:
            try:
                slot.work(burst=False, logging_level="WARNING", with_scheduler=False)
            except WorkerShutdown:
                break
            except Exception:
                log.exception("worker loop %s crashed; restarting it in 1 s", slot.name)
                time.sleep(1)
        heartbeat.close()  # write the last events before the process exits
