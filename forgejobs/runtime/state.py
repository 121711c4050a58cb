"""What a worker process's threads share: its slots, its view of each queue, the server's clock, and the
events written outside the slots. The worker owns it; the waiter and the upkeep thread read and act on it
through `Process`, so neither imports the worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import redis

if TYPE_CHECKING:
    from ..events import Event, EventStream
    from ..execution import Runtime
    from ..keys import Keys, QueueKeys
    from ..outage import Outage
    from ..specs import QueueSpec
    from .scripts import Scripts

STUCK_GRACE = 30.0
"""A slot still inside a job this long after its timeout has stopped being a live slot: its lease is
no longer renewed, so its job is recovered and run elsewhere."""


@dataclass
class Slot:
    queue: str
    index: int
    ident: str
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    job_started: float | None = None  # monotonic, while inside a job
    job_timeout: float = 0.0
    in_handler: bool = False
    job_id: bytes | None = None  # the job it runs, as stored
    cancel: threading.Event = field(default_factory=threading.Event)  # set: its job's cancel was asked for
    retired: bool = False
    jobs: int = 0

    def alive(self) -> bool:
        """Whether this slot's lease should be renewed: its loop runs and is not stuck in a job."""
        if self.retired or self.thread is None or not self.thread.is_alive():
            return False
        started = self.job_started
        return started is None or time.monotonic() - started < self.job_timeout + STUCK_GRACE


@dataclass
class QueueState:
    """One queue as this process serves it."""

    name: str
    keys: QueueKeys
    spec: QueueSpec
    slots: list[Slot] = field(default_factory=list)
    idle: deque[Slot] = field(default_factory=deque)
    paused: bool = False
    next_due: float = math.inf  # server ms of the next delayed job, as far as this process knows
    promoted: bool = False
    retired_idents: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def has_idle(self) -> bool:
        return bool(self.idle)

    def wake_one(self) -> bool:
        """Wake one idle slot of this queue; False if none was idle."""
        with self.lock:
            slot = self.idle.popleft() if self.idle else None
        if slot is not None:
            slot.wake.set()
        return slot is not None


class ServerClock:
    """The Redis server's clock, read as this host's clock plus an offset measured once a second."""

    def __init__(self) -> None:
        self.offset_ms = 0.0

    def set_server_ms(self, server_ms: float) -> None:
        self.offset_ms = server_ms - time.time() * 1000

    def now_ms(self) -> float:
        return time.time() * 1000 + self.offset_ms


class EventBuffer:
    """Job events of this process's slots, written to the stream in batches (within TICK seconds)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self._buffer: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, events: Sequence[Event]) -> None:
        if events:
            with self._lock:
                self._buffer.extend(events)

    def flush(self) -> None:
        with self._lock:
            events, self._buffer = self._buffer, []
        if not events:
            return
        try:
            self.stream.append_many(events)
        except redis.RedisError:
            with self._lock:
                self._buffer[:0] = events  # written with the next flush
            raise


class Waking(Protocol):
    def poke(self, queue: str | None = None) -> None:
        """Make the waiter look again (a slot of `queue` went idle, or due times changed)."""


class Process(Protocol):
    """The parts of a worker process its waiter and upkeep thread use (`forgejobs.runtime.worker.Worker`)."""

    @property
    def connection(self) -> redis.Redis: ...
    @property
    def scripts(self) -> Scripts: ...
    @property
    def keys(self) -> Keys: ...
    @property
    def name(self) -> str: ...
    @property
    def lease_ms(self) -> int: ...
    @property
    def states(self) -> dict[str, QueueState]: ...
    @property
    def events(self) -> EventBuffer: ...
    @property
    def outage(self) -> Outage: ...
    @property
    def clock(self) -> ServerClock: ...
    @property
    def waiter(self) -> Waking: ...

    def supervise(self) -> None: ...

    def runtime_for(self, state: QueueState) -> Runtime: ...

    def failure_ttl_ms(self, name: str | None) -> int: ...
