"""Runs on Redis: each atomic step is one `workflow.lua` call on the run's own keys (one Cluster slot)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from ..keys import WorkflowKeys, workflow_index
from ..runtime.scripts import source

_STARTS = itertools.count()  # runs started by this process, in order

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from ..backends.base import Backend


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """`RunStore` on one Redis connection under one key prefix."""

    def __init__(self, connection: redis.Redis, prefix: str) -> None:
        self.connection = connection
        self.prefix = prefix
        self.index = workflow_index(prefix)
        self.active = workflow_index(prefix) + ":active"
        self.script: Script = connection.register_script(source("workflow"))

    @classmethod
    def for_backend(cls, backend: Backend) -> RedisStore:
        from ..backends.redis import RedisBackend

        if not isinstance(backend, RedisBackend):
            raise TypeError(f"workflows run on Redis or on the fake queue, not on {type(backend).__name__}")
        return cls(backend.connection, backend.keys.prefix)

    def keys(self, run_id: str) -> WorkflowKeys:
        return WorkflowKeys(self.prefix, run_id)

    def _call(self, run_id: str, op: str, now: int, *args: Any) -> Any:
        return self.script(keys=self.keys(run_id).all, args=[op, now, *args])

    def create(self, run_id: str, fields: dict[str, str], ready: list[str], now: int) -> bool:
        # The index first: a run it names that was never stored is dropped by the recovery pass, while a
        # run stored but not indexed would be invisible to it.
        # Scored by start time, and runs this process starts within one millisecond in the order it started
        # them (a 1/4096 step: exact in a double next to today's milliseconds), so "newest first" holds.
        score = now + next(_STARTS) % 4096 / 4096
        self.connection.zadd(self.index, {run_id: score}, nx=True)
        self.connection.zadd(self.active, {run_id: score}, nx=True)
        pairs = [v for item in fields.items() for v in item]
        return bool(self._call(run_id, "create", now, len(fields), *pairs, *ready))

    def read(self, run_id: str) -> dict[str, str] | None:
        raw = self.connection.hgetall(self.keys(run_id).run)
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    def fields(self, run_id: str, *names: str) -> dict[str, str] | None:
        values = self.connection.hmget(self.keys(run_id).run, list(names))
        if all(v is None for v in values):
            return None
        return {n: _text(v) for n, v in zip(names, values, strict=True) if v is not None}

    def ready(self, run_id: str) -> list[str]:
        return sorted(_text(m) for m in self.connection.smembers(self.keys(run_id).ready))

    def expand(self, run_id: str, step: str, count: int, now: int) -> list[str]:
        return [_text(s) for s in self._call(run_id, "expand", now, step, count)]

    def enqueued(self, run_id: str, step: str) -> None:
        self._call(run_id, "enqueued", 0, step)

    def finish(
        self, run_id: str, step: str, index: int, mode: str, output: str, error: str, now: int
    ) -> tuple[str, list[str]]:
        reply = [_text(v) for v in self._call(run_id, "finish", now, step, index, mode, output, error)]
        return reply[0], reply[1:]

    def stop(self, run_id: str, status: str, reason: str, now: int) -> tuple[str, list[str]]:
        reply = [_text(v) for v in self._call(run_id, "stop", now, status, reason)]
        return reply[0], reply[1:]

    def runs(self) -> list[str]:
        return [_text(m) for m in self.connection.zrange(self.index, 0, -1)]

    def active_runs(self) -> list[str]:
        """Runs not yet seen ended by a recovery pass (which removes them then)."""
        return [_text(m) for m in self.connection.zrange(self.active, 0, -1)]

    def settled(self, run_id: str) -> None:
        self.connection.zrem(self.active, run_id)

    def forget(self, run_id: str) -> None:
        """Delete a run and its index entry (retention)."""
        self.connection.delete(*self.keys(run_id).all)
        self.connection.zrem(self.index, run_id)
        self.connection.zrem(self.active, run_id)
