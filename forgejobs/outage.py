"""Redis going away and coming back, as long-running loops report it: one line each way, backoff between.

Used by the worker's threads and by the scheduler. `UNREACHABLE` names the errors that mean Redis cannot
be reached; any other `RedisError` is an answer (WRONGTYPE, NOSCRIPT...) and is handled where it happens.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger("forgejobs.worker")

UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
"""The errors that mean Redis cannot be reached (anything else is an answer, e.g. WRONGTYPE)."""


class Outage:
    """One log line when Redis stops answering, one when it answers again; backoff in between.

    A failure is reported once it has lasted QUIET seconds (a server shutting down answers some calls and
    refuses others for a moment; that flapping is not worth a line); the recovery is reported only after a
    reported failure."""

    QUIET = 0.5

    def __init__(self, what: str, where: str = "", logger: logging.Logger = log) -> None:
        self.log = logger
        self.what = what
        self.where = f" at {where}" if where else ""
        self.since: float | None = None
        self.said = False
        self.pause = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> float:
        """Note a failure; returns how long to wait before the next try."""
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
            if not self.said and now - self.since >= self.QUIET:
                self.said = True
                self.log.warning("%s: Redis%s cannot be reached (%s); retrying", self.what, self.where, exc)
            self.pause = min(self.pause * 2, 2.0) if self.pause else 0.05
            return self.pause

    def recovered(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is not None:
                if self.said:
                    down = time.monotonic() - self.since
                    self.log.warning("%s: Redis%s answers again after %.1f s", self.what, self.where, down)
                self.since = None
                self.said = False
                self.pause = 0.0
