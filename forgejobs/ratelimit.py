"""Rate limits: at most `max` acquisitions per key in any window of length `per`.

Guarantee (sliding-window log): for one key and one limit, every half-open
interval `(t - per, t]` of the limiter's clock contains at most `max`
successful `acquire` calls, whichever processes and hosts made them. For the
Redis limiter the clock is the Redis server's (`TIME`, microseconds), so client
clock skew cannot let a burst through, and the check-and-take is one Lua script,
so it is atomic. A refused call takes nothing and returns how long until the
oldest counted acquisition leaves the window: calling again after that wait
succeeds unless someone else took the slot first.

Cost: one sorted-set entry per acquisition still in the window, so memory per
key is O(max); idle keys expire after about 2 x `per`.

Declarations import this module, so it never imports `redis` at run time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .types import Duration

if TYPE_CHECKING:
    import redis


class RateLimit(BaseModel):
    """`{max: 100, per: 1s}`: at most 100 acquisitions in any 1-second window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max: int = Field(ge=1)
    per: Duration

    @field_validator("per")
    @classmethod
    def _per_positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("'per' must be positive")
        return value

    def describe(self) -> str:
        return f"{self.max}/{self.per.total_seconds():g}s"


@runtime_checkable
class RateLimiter(Protocol):
    def acquire(self, key: str, limit: RateLimit) -> float:
        """0.0 if a slot was taken; otherwise seconds to wait (> 0), and nothing was taken."""
        ...


def ratelimit_key(prefix: str, key: str) -> str:
    """Sorted set: one member per acquisition still in the window, scored by server time in microseconds."""
    return f"{prefix}:ratelimit:{key}"


# KEYS[1]: the log. ARGV: max, window (µs), ttl (ms). Returns 0, or µs to wait.
# Members are "<time>-<count>", unique because calls are serialised; ZADD NX guards against a clock step back.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', key)
if count < max then
    local score = string.format('%.0f', now)
    local member = score .. '-' .. count
    while redis.call('ZADD', key, 'NX', score, member) == 0 do member = member .. '+' end
    redis.call('PEXPIRE', key, ARGV[3])
    return 0
end
local freeing = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
return math.max(1, tonumber(freeing[2]) + window - now)
"""


def _window_us(limit: RateLimit) -> int:
    return max(1, round(limit.per.total_seconds() * 1_000_000))


class RedisRateLimiter:
    """Atomic across processes and hosts sharing one Redis; timed by the Redis server's clock."""

    def __init__(self, connection: redis.Redis, prefix: str = "forgejobs") -> None:
        self.prefix = prefix
        self._script = connection.register_script(_ACQUIRE)

    def acquire(self, key: str, limit: RateLimit) -> float:
        window_us = _window_us(limit)
        ttl_ms = math.ceil(2 * window_us / 1000)
        wait_us = self._script(keys=[ratelimit_key(self.prefix, key)], args=[limit.max, window_us, ttl_ms])
        return int(wait_us) / 1_000_000


class MemoryRateLimiter:
    """The same sliding-window log in one process, for the fake queue and unit tests.

    Like the Redis script it counts in whole microseconds, so an acquisition exactly `per` old has left the
    window on both, without float rounding deciding the boundary.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, limit: RateLimit) -> float:
        window = _window_us(limit)
        with self._lock:
            now = round(self._clock() * 1_000_000)
            log = self._logs.setdefault(key, deque())
            while log and log[0] <= now - window:
                log.popleft()
            if len(log) < limit.max:
                log.append(now)
                return 0.0
            # If `max` shrank, several entries must leave before a slot frees.
            return max(1, log[len(log) - limit.max] + window - now) / 1_000_000
