"""`ProcessWorker`: a supervisor for queues whose slots must be processes (`mode: processes`).

`forgejobs worker` runs every queue's slots as threads of one process (`forgejobs.runtime.Worker`)
unless a queue's spec says `mode: processes` or `--processes` is given. Then this supervisor forks
one child per slot of those queues, each running its slot in the child's main thread
(`Worker.run_inline`), where SIGALRM enforces timeouts even inside a blocking C call, plus one
child serving the thread-mode queues. It forwards signals, replaces a child that dies, and in
burst mode stops the children once nothing is pending. It opens no Redis connection before it
forks (redis-py connections must not cross a fork) and starts no thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from .backends.redis import RedisBackend
from .outage import UNREACHABLE
from .registry import Registry
from .runtime.worker import Worker, WorkerStats, connect, slots_per_queue
from .settings import Settings
from .timeouts import alarm_guard

log = logging.getLogger("forgejobs.worker")

THREADS = "<threads>"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class _Child:
    pid: int
    queue: str  # a process-mode queue, or THREADS
    index: int
    report_fd: int
    started: float


class ProcessWorker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        processes: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.concurrency = slots_per_queue(registry, queues, concurrency)
        self._concurrency = concurrency
        self.queues = names = list(self.concurrency)
        self.process_queues = [q for q in names if processes or registry.queues[q].mode == "processes"]
        self.thread_queues = [q for q in names if q not in self.process_queues]
        self.stats = WorkerStats()
        self._children: dict[int, _Child] = {}
        self._stopping = False
        self._signals = 0

    def describe(self) -> str:
        parts = [f"{q}×{self.concurrency[q]} (processes)" for q in self.process_queues]
        parts += [f"{q}×{self.concurrency[q]}" for q in self.thread_queues]
        return ", ".join(parts)

    # -- supervisor -------------------------------------------------------------

    def run(self, *, burst: bool = False, horizon: float = 10.0) -> WorkerStats:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.thread_queues:
            self._spawn(THREADS, 0)
        for queue in self.process_queues:
            for index in range(self.concurrency[queue]):
                self._spawn(queue, index)
        log.info("worker supervisor %d (processes) serving %s", os.getpid(), self.describe())
        backend = None
        if burst:
            backend = RedisBackend.for_connection(connect(self.settings.redis_url_or_default()), self.settings)
        idle_checks = 0
        while self._children:
            self._reap()
            if backend is not None and not self._stopping:
                try:
                    idle = backend.pending(self.queues, horizon * 1000) == 0
                except UNREACHABLE:
                    idle = False  # the children say so, once; they go on when Redis is back
                idle_checks = idle_checks + 1 if idle else 0
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
        # Signals are blocked across the fork: a SIGTERM arriving in between is seen by the supervisor
        # after it has recorded the child (and forwarded to it), and by the child only once its own
        # handler is installed.
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
            if not self._stopping:
                self._spawn(child.queue, child.index)

    def _collect(self, child: _Child) -> None:
        chunks = []
        while chunk := os.read(child.report_fd, 65536):
            chunks.append(chunk)
        os.close(child.report_fd)
        with contextlib.suppress(ValueError):
            for kind, n in json.loads(b"".join(chunks) or b"{}").items():
                self.stats.add(kind, int(n))

    # -- children ----------------------------------------------------------------

    def _child_main(self, queue: str, index: int, report_fd: int) -> NoReturn:
        code = 0
        stats = WorkerStats()
        try:
            stopped = [False]
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, lambda signum, frame: stopped.__setitem__(0, True))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            if queue == THREADS:
                worker = Worker(self.settings, self.registry, queues=self.thread_queues, concurrency=self._concurrency)
                if stopped[0]:
                    worker.stop()
                stats = worker.run()
            else:
                worker = Worker(self.settings, self.registry, queues=[queue], concurrency=1, guard=alarm_guard)
                if stopped[0]:
                    worker.stop()
                stats = worker.run_inline()
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
