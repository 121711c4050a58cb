"""One waiter thread per worker process: wakes idle slots, promotes delayed jobs when they fall due.

It blocks in one BZPOPMIN over the marker sets of the queues that have idle slots (plus the
process's own wake set, which a slot going idle pokes). A marker "0" means jobs wait: one idle
slot of that queue is woken (and, having taken a job, it puts the marker back so another slot or
process follows). A marker "d" carries the due time of a delayed job: the waiter blocks no
longer than that, then runs `promote.lua`, which moves due jobs onto their wait lists and sets
the "0" marker. Redis times blocking commands out on its 100 ms clock (hz 10), so the last
stretch before a due time is waited here, on a local event, for precision.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import redis

from ..outage import UNREACHABLE

if TYPE_CHECKING:
    from .state import Process, QueueState

log = logging.getLogger("forgejobs.worker")

MAX_BLOCK = 1.0
LOCAL_WAIT = 0.15
"""Due within this many seconds: wait locally instead of in Redis (whose block timeouts step by 100 ms)."""


class Waiter:
    def __init__(self, worker: Process) -> None:
        self.worker = worker
        self.connection = worker.connection
        self.wake_key = worker.keys.wake(worker.name)
        self._local = threading.Event()
        self._blocked_on: set[str] = set()
        self._in_redis = False
        self._lock = threading.Lock()

    def poke(self, queue: str | None = None) -> None:
        """A slot of `queue` went idle (or due times changed): make the waiter look again, unless it already
        watches that queue."""
        with self._lock:
            if queue is not None and queue in self._blocked_on:
                return
            self._local.set()
            in_redis = self._in_redis
        if in_redis:
            # On an error the waiter's own call fails too, and it looks again after its backoff.
            with contextlib.suppress(redis.RedisError):
                self.connection.zadd(self.wake_key, {"poke": 0})

    def run(self, stop: threading.Event) -> None:
        outage = self.worker.outage
        while not stop.is_set():
            try:
                self.step(stop)
                outage.recovered()
            except UNREACHABLE as exc:
                stop.wait(outage.failed(exc))
            except Exception:  # noqa: BLE001 - the waiter must go on, or idle slots never wake
                log.exception("worker waiter failed; trying again")
                stop.wait(0.5)
        with contextlib.suppress(redis.RedisError):
            self.connection.delete(self.wake_key)

    def step(self, stop: threading.Event) -> None:
        worker = self.worker
        states = list(worker.states.values())
        now = worker.clock.now_ms()
        for state in states:
            if state.next_due <= now + 1:
                self.promote(state)
        next_due = min((s.next_due for s in states), default=math.inf)
        remaining = (next_due - worker.clock.now_ms()) / 1000
        if remaining < LOCAL_WAIT:
            self._local.wait(max(0.002, remaining))
            self._local.clear()
            self.wake_waiting(states)
            return
        watching = [s for s in states if s.has_idle() and not s.paused]
        block = MAX_BLOCK if remaining >= MAX_BLOCK + 0.1 else math.floor((remaining - 0.05) * 10) / 10
        with self._lock:
            self._blocked_on = {s.name for s in watching}
            if self._local.is_set():  # poked since we looked: look again first
                self._local.clear()
                self._blocked_on = set()
                return
            self._in_redis = True
        try:
            popped: Any = self.connection.bzpopmin([*(s.keys.marker for s in watching), self.wake_key], block)
        finally:
            with self._lock:
                self._in_redis = False
                self._blocked_on = set()
        if not popped:
            return
        key, member, score = popped
        key = key.decode() if isinstance(key, bytes) else key
        for state in watching:
            if key == state.keys.marker:
                if member in (b"0", "0"):
                    if not state.wake_one():
                        # Its idle slot found work by itself meanwhile: leave the marker for another process.
                        self.connection.zadd(state.keys.marker, {"0": 0})
                elif float(score) < state.next_due:  # "d": a delayed job falls due then
                    state.next_due = float(score)
                break

    def wake_waiting(self, states: list[QueueState]) -> None:
        """After a local wait: idle slots of queues whose jobs were just promoted try to take them."""
        for state in states:
            if state.promoted:
                state.promoted = False
                state.wake_one()

    def promote(self, state: QueueState) -> None:
        moved, nxt = self.worker.scripts.promote(keys=state.keys.standard, args=[state.keys.job_prefix, 1000])
        state.next_due = float(nxt) if nxt is not None else math.inf
        if moved:
            state.promoted = True
            state.wake_one()
