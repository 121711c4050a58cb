"""Job timeouts: `JobTimeout` raised inside a handler that runs past its `timeout`.

Two guards, chosen by where the slot runs:

- `watchdog_guard` (slots that are threads): one watchdog thread per process keeps every
  slot's deadline in a heap; arming and disarming cost a heap push and a dict update (a timer
  thread per job cost 7-10 % of a no-op job's time). When a deadline passes, the watchdog raises
  `JobTimeout` in the job's thread. Python delivers it at the thread's next bytecode, so a
  handler blocked inside a C call is stopped when the call returns.
- `alarm_guard` (a slot in a child process's main thread, `mode: processes`): SIGALRM, which
  also interrupts blocking system calls.

The fake queue of the test kit has a third, on its fake clock (`FakeClock.timeout_guard`): a
handler that moves the clock past its deadline gets the same `JobTimeout` there and then.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import FrameType
from typing import Any, cast

from .errors import JobTimeout


def timeout_message(timeout: float) -> str:
    """What a `JobTimeout` says, from every guard (the watchdog, the alarm, the fake queue's clock)."""
    return f"the job ran longer than its timeout ({timeout:g}s)"


def job_timeout(timeout: float) -> JobTimeout:
    """The `JobTimeout` a guard raises for a job whose `timeout` (seconds) has passed."""
    return JobTimeout(timeout_message(timeout))


@cache
def _with_message(exception: Any, timeout: float) -> type[BaseException]:
    """An async exception can only be a class; bake the message into a subclass (one per timeout value)."""
    message = timeout_message(timeout)

    def __init__(self: BaseException, *args: object) -> None:
        exception.__init__(self, message)

    return type(exception.__name__, (exception,), {"__init__": __init__, "__module__": exception.__module__})


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[float, int, type[BaseException]]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, thread_id: int, exception: type[BaseException]) -> int:
        deadline = time.monotonic() + seconds
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (deadline, thread_id, exception)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="forgejobs-timeouts", daemon=True)
                self._thread.start()
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)
            # Disarmed deadlines stay in the heap until they reach its top; rebuild before it bloats.
            if len(self._heap) > 2 * len(self._armed) + 64:
                self._heap = [(deadline, t) for t, (deadline, _, _) in self._armed.items()]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                heapq.heappop(self._heap)
                _, thread_id, exception = self._armed.pop(token)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception))


WATCHDOG = Watchdog()


@contextmanager
def watchdog_guard(seconds: float, exception: type[BaseException] = JobTimeout) -> Iterator[None]:
    """Raise `exception` in this thread if the block runs longer than `seconds` (no limit if <= 0)."""
    if seconds <= 0:
        yield
        return
    token = WATCHDOG.arm(seconds, threading.get_ident(), _with_message(cast(Any, exception), seconds))
    try:
        yield
    finally:
        WATCHDOG.disarm(token)


@contextmanager
def alarm_guard(seconds: float, exception: type[BaseException] = JobTimeout) -> Iterator[None]:
    """SIGALRM after `seconds` (whole seconds, rounded up) raises `exception`; main thread only."""
    if seconds <= 0:
        yield
        return
    cls = _with_message(cast(Any, exception), seconds)

    def fire(signum: int, frame: FrameType | None) -> None:
        raise cls()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
