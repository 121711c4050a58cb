"""The job event stream: what happened to each job, for other processes and for in-process hooks.

Two channels, one `Event` type:

- `EventStream` appends events to one Redis stream, read by other processes
  (a dashboard, a CLI that tails it). `MemoryEventStream` is the same
  API in memory, for tests and the fake queue.
- `Hooks` calls the callbacks registered in this process, synchronously and
  without touching Redis.

What the stream guarantees:

- Appending costs no extra round trip: pass the pipeline that writes the state
  change the event reports, and the event travels (and, in a MULTI pipeline,
  commits) with it.
- The stream is bounded. Trimming is approximate (`XADD MAXLEN ~`): Redis only
  drops whole internal nodes, so once `maxlen` events were written it holds at
  least `maxlen` and at most about `maxlen` plus `stream-node-max-entries`
  (100 by default) of the latest ones. It is a log of recent history, not a queue.
- Entry ids increase strictly. `read(after=id)` returns only entries after
  `id`; `follow` yields every later entry once, in order, and after a lost
  connection resumes from the last entry it yielded, so an outage causes
  neither gaps nor duplicates, unless trimming removed entries before the
  reader got to them (more than about `maxlen` events behind).
- An entry that does not parse as an `Event` (written by a newer version, or by
  hand) is logged and skipped; readers move past it.

What hooks guarantee: they run in the emitting process, in registration order;
an exception from one is logged and never reaches the job or the other hooks.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.client import Pipeline

log = logging.getLogger("forgejobs.events")

DEFAULT_KEY = "forgejobs:events"
DEFAULT_MAXLEN = 100_000
ZERO_ID = "0-0"
"""The id before every entry: reading after it reads from the start."""

_FOLLOW_BATCH = 100
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class EventKind(StrEnum):
    ENQUEUED = "enqueued"  # accepted into a queue (data: delay, priority)
    STARTED = "started"  # a worker began an attempt
    PROGRESS = "progress"  # the handler reported progress (data: progress)
    COMPLETED = "completed"  # perform returned
    FAILED = "failed"  # an attempt raised (data: error); retrying or dead_lettered says what next
    RETRYING = "retrying"  # it will run again (data: delay, error)
    DEAD_LETTERED = "dead_lettered"  # failed for good (data: reason, error)
    STALLED = "stalled"  # its worker died mid-job (data: error)
    DEDUPLICATED = "deduplicated"  # an enqueue was dropped as a duplicate of job_id
    ABORTED = "aborted"  # its worker stopped mid-job; the same attempt runs again
    CANCELLED = "cancelled"  # someone cancelled it: taken off its queue, or stopped while it ran
    # workflow runs (docs/workflows.md): job_id is the run id, name the workflow, queue "workflows"
    WORKFLOW_STARTED = "workflow_started"  # data: key
    STEP_RELEASED = "step_released"  # everything the step waits for has finished (data: step)
    WORKFLOW_COMPLETED = "workflow_completed"  # every step finished
    WORKFLOW_FAILED = "workflow_failed"  # a step failed, or the timeout passed (data: status, error)
    WORKFLOW_CANCELLED = "workflow_cancelled"  # cancelled (data: error)


class Event(BaseModel):
    """One thing that happened to one job."""

    model_config = ConfigDict(frozen=True)

    id: str | None = None  # the stream entry id; set on events read back
    kind: EventKind
    job_id: str
    name: str
    queue: str
    attempt: int = 1
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for XADD. `data` is JSON; a value JSON cannot write is stored as its str()."""
        return {
            "kind": self.kind.value,
            "job_id": self.job_id,
            "name": self.name,
            "queue": self.queue,
            "attempt": str(self.attempt),
            "at": self.at.isoformat(),
            "data": json.dumps(self.data, default=str, separators=(",", ":")),
        }

    @classmethod
    def from_fields(cls, entry_id: str | bytes, fields: Mapping[Any, Any]) -> Event:
        """The event stored as `fields` (str or bytes) under `entry_id`. Raises ValueError if it is not one."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        try:
            data = json.loads(text.get("data") or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"event {_text(entry_id)}: data is not JSON: {exc}") from exc
        return cls.model_validate({**text, "id": _text(entry_id), "data": data})


Hook = Callable[[Event], object]
H = TypeVar("H", bound=Hook)


class BaseEventStream(ABC):
    """Append and read events; `read` and `follow` are built here on the backend's primitives."""

    key: str

    @abstractmethod
    def append(self, event: Event, pipeline: Pipeline | None = None) -> str | None:
        """Add `event`; returns its entry id, or None when queued on `pipeline` (run by the caller)."""

    @abstractmethod
    def latest_id(self) -> str:
        """The id of the newest entry, or ZERO_ID if there is none: read after it for new events only."""

    @abstractmethod
    def _entries(self, after: str, count: int, block_ms: int | None) -> list[tuple[str, Mapping[Any, Any]]]:
        """Up to `count` raw entries after `after`, waiting up to `block_ms` (0: forever) if there are none."""

    def append_many(self, events: Sequence[Event]) -> None:
        """Add several events (one round trip where the store allows)."""
        for event in events:
            self.append(event)

    def read(self, after: str = ZERO_ID, count: int = 100, block_ms: int | None = None) -> list[Event]:
        """Events after entry id `after`, oldest first; unparseable entries are skipped."""
        events = (self._parse(entry_id, fields) for entry_id, fields in self._entries(after, count, block_ms))
        return [event for event in events if event is not None]

    def follow(
        self,
        after: str | None = None,
        block_ms: int = 1000,
        job_name: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Every event after `after` (None: after the newest entry when `follow` is called), as it arrives.

        Runs until `stop` is set (noticed within `block_ms`). A lost connection is
        retried with a short backoff from the last entry read. With `job_name`,
        only that job type's events are yielded (filtered here: streams cannot).
        Give it a connection no other thread disconnects, with a `socket_timeout`
        (if any) longer than `block_ms`: redis-py cannot close a socket that
        another thread is reading from.
        """
        if block_ms <= 0:
            raise ValueError(f"block_ms must be positive so that stop is noticed, got {block_ms}")
        start = self.latest_id() if after is None else after  # fixed now, not on the first next()
        return self._follow(start, block_ms, job_name, stop or threading.Event())

    def _follow(self, last: str, block_ms: int, job_name: str | None, stop: threading.Event) -> Iterator[Event]:
        outage = _Outage(self.key)
        while not stop.is_set():
            try:
                entries = self._entries(last, _FOLLOW_BATCH, block_ms)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                stop.wait(outage.failed(exc, last))
                continue
            outage.recovered()
            for entry_id, fields in entries:
                last = entry_id
                event = self._parse(entry_id, fields)
                if event is None or (job_name is not None and event.name != job_name):
                    continue
                if stop.is_set():
                    return
                yield event

    def _parse(self, entry_id: str, fields: Mapping[Any, Any]) -> Event | None:
        try:
            return Event.from_fields(entry_id, fields)
        except ValueError as exc:
            log.warning("skipping event %s in %s: not an event: %s", entry_id, self.key, exc)
            return None


class EventStream(BaseEventStream):
    """Events in one Redis stream, capped at about `maxlen` entries."""

    def __init__(self, connection: redis.Redis, key: str = DEFAULT_KEY, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.connection = connection
        self.key = key
        self.maxlen = maxlen

    def append_many(self, events: Sequence[Event]) -> None:
        if events:
            with self.connection.pipeline(transaction=False) as pipe:
                for event in events:
                    self.append(event, pipeline=pipe)
                pipe.execute()

    def append(self, event: Event, pipeline: Pipeline | None = None) -> str | None:
        target = self.connection if pipeline is None else pipeline
        fields: dict[Any, Any] = event.to_fields()
        entry_id = target.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        return None if pipeline is not None else _text(entry_id)

    def latest_id(self) -> str:
        newest = cast(list[tuple[bytes | str, Any]], self.connection.xrevrange(self.key, "+", "-", count=1))
        return _text(newest[0][0]) if newest else ZERO_ID

    def _entries(self, after: str, count: int, block_ms: int | None) -> list[tuple[str, Mapping[Any, Any]]]:
        reply = cast(Any, self.connection.xread({self.key: after}, count=count, block=block_ms))
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: entries}
        streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
        return [(_text(entry_id), fields or {}) for entries in streams for entry_id, fields in entries]


class MemoryEventStream(BaseEventStream):
    """Events in this process's memory, capped at exactly `maxlen`. Ids are "1-0", "2-0", ..."""

    def __init__(self, key: str = DEFAULT_KEY, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.key = key
        self.maxlen = maxlen
        self._stored: deque[tuple[int, dict[str, str]]] = deque(maxlen=maxlen)
        self._counter = 0
        self._changed = threading.Condition()

    def append(self, event: Event, pipeline: Pipeline | None = None) -> str | None:
        """Adds at once, even with a pipeline (there is nothing to batch in memory); returns the id."""
        fields = event.to_fields()
        with self._changed:
            self._counter += 1
            self._stored.append((self._counter, fields))
            self._changed.notify_all()
            return f"{self._counter}-0"

    def latest_id(self) -> str:
        with self._changed:
            return f"{self._stored[-1][0]}-0" if self._stored else ZERO_ID

    def _entries(self, after: str, count: int, block_ms: int | None) -> list[tuple[str, Mapping[Any, Any]]]:
        start = _id_order(after)
        with self._changed:
            if block_ms is not None and (self._counter, 0) <= start:
                timeout = None if block_ms == 0 else block_ms / 1000
                self._changed.wait_for(lambda: (self._counter, 0) > start, timeout)
            found: list[tuple[str, Mapping[Any, Any]]] = [(f"{n}-0", f) for n, f in self._stored if (n, 0) > start]
            return found[:count]

    def __len__(self) -> int:
        return len(self._stored)


class Hooks:
    """In-process callbacks per event kind, called synchronously by `emit`; no Redis involved."""

    def __init__(self) -> None:
        self._hooks: dict[EventKind | None, list[Hook]] = {}

    def on(self, kind: EventKind | str, fn: H) -> H:
        """Call `fn(event)` for every event of `kind`. An unknown kind raises ValueError here, not later."""
        self._hooks.setdefault(EventKind(kind), []).append(fn)
        return fn

    def on_any(self, fn: H) -> H:
        """Call `fn(event)` for every event, after the hooks for its kind."""
        self._hooks.setdefault(None, []).append(fn)
        return fn

    def emit(self, event: Event) -> None:
        """Run the hooks for `event.kind`, then the `on_any` hooks; log, never raise, what they raise."""
        for fn in (*self._hooks.get(event.kind, ()), *self._hooks.get(None, ())):
            try:
                fn(event)
            except Exception:
                name = getattr(fn, "__qualname__", repr(fn))
                log.exception("hook %s failed on %s of %s %s", name, event.kind.value, event.name, event.job_id)

    def on_enqueued(self, fn: H) -> H:
        return self.on(EventKind.ENQUEUED, fn)

    def on_started(self, fn: H) -> H:
        return self.on(EventKind.STARTED, fn)

    def on_progress(self, fn: H) -> H:
        return self.on(EventKind.PROGRESS, fn)

    def on_completed(self, fn: H) -> H:
        return self.on(EventKind.COMPLETED, fn)

    def on_failed(self, fn: H) -> H:
        return self.on(EventKind.FAILED, fn)

    def on_retrying(self, fn: H) -> H:
        return self.on(EventKind.RETRYING, fn)

    def on_dead_lettered(self, fn: H) -> H:
        return self.on(EventKind.DEAD_LETTERED, fn)

    def on_stalled(self, fn: H) -> H:
        return self.on(EventKind.STALLED, fn)

    def on_deduplicated(self, fn: H) -> H:
        return self.on(EventKind.DEDUPLICATED, fn)

    def on_aborted(self, fn: H) -> H:
        return self.on(EventKind.ABORTED, fn)

    def on_cancelled(self, fn: H) -> H:
        return self.on(EventKind.CANCELLED, fn)


class _Outage:
    """Backoff and logging for `follow` while Redis is unreachable: one warning per outage, not per retry."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pause = 0.0

    def failed(self, exc: Exception, last: str) -> float:
        if not self.pause:
            log.warning("event stream %s: connection lost (%s); resuming after %s when it is back", self.key, exc, last)
        self.pause = min(self.pause * 2, _BACKOFF_MAX) if self.pause else _BACKOFF_FIRST
        return self.pause

    def recovered(self) -> None:
        if self.pause:
            log.info("event stream %s: reconnected", self.key)
        self.pause = 0.0


def _id_order(entry_id: str) -> tuple[int, int]:
    """A stream id ("ms-seq", or "ms" for "ms-0") as numbers that sort like the ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
