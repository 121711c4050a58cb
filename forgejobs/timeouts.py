"""Job timeouts for slots that run as threads: one watchdog thread per process.

RQ's `TimerDeathPenalty` starts a new timer thread for every job, which the
throughput bench measured at 7-10 % of a no-op job's time. Here every slot
arms a deadline with one shared watchdog thread instead: arming and disarming
cost a heap push and a dict update. When a deadline passes, the watchdog
raises the timeout exception in the job's thread, as RQ's timer does; Python
delivers it at the thread's next bytecode, so a handler blocked inside a C
call is stopped when the call returns (process slots use SIGALRM instead).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time
from functools import cache

from rq.timeouts import BaseDeathPenalty


@cache
def _with_message(exception: type[BaseException], timeout: float) -> type[BaseException]:
    """An async exception can only be a class; bake the message into a subclass (one per timeout value)."""
    message = f"Task exceeded maximum timeout value ({timeout} seconds)"

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


class WatchdogDeathPenalty(BaseDeathPenalty):
    """RQ's death-penalty interface on the shared watchdog."""

    _token: int | None = None

    def setup_death_penalty(self) -> None:
        if self._timeout <= 0:
            return
        exception = _with_message(self._exception, self._timeout)
        self._token = WATCHDOG.arm(self._timeout, threading.get_ident(), exception)

    def cancel_death_penalty(self) -> None:
        if self._token is not None:
            WATCHDOG.disarm(self._token)
            self._token = None
