"""The typed context a handler receives: who it is, which attempt, how to report, whether it was cancelled."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

ProgressValue = int | float | dict[str, Any]

_log = logging.getLogger("forgejobs.job")

ResourcesT = TypeVar("ResourcesT")


class JobCancelled(Exception):  # noqa: N818 - named for what happened, like JobTimeout
    """Raised by `ctx.raise_if_cancelled()`: someone cancelled this job while it ran. The job ends as
    `cancelled` whatever the handler does after that, so letting this propagate is the simple way out."""


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes each message with the job's name, id and attempt, and puts them in `extra`
    (`job_id`, `job_name`, `queue`, `attempt`) for structured handlers.

    Lines at INFO and above (and DEBUG when the logger is enabled for it) are also appended to the job's
    own log, as `ctx.log` lines are, whatever the logging configuration does with them."""

    def __init__(self, logger: logging.Logger, extra: dict[str, Any], job_log: Callable[[str], None]) -> None:
        super().__init__(logger, extra)
        self._job_log = job_log

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra['job_name']} {extra['job_id']} #{extra['attempt']}] {msg}", kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level >= logging.INFO or self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self._job_log(f"{logging.getLevelName(level)} {text}")
        super().log(level, msg, *args, **kwargs)


@dataclass
class Context(Generic[ResourcesT]):
    """Passed to `Job.perform(ctx)`.

    Everything a handler needs from the framework is here, so a unit test can
    build one (see `forgejobs.testing.make_context`) and call `perform`
    directly.
    """

    job_id: str
    name: str
    queue: str
    attempt: int = 1
    max_attempts: int = 1
    enqueued_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    scheduled_for: datetime | None = None  # the repeat tick, for jobs a scheduler enqueued
    timeout: timedelta | None = None  # the effective timeout of this run (class option or spec override)
    resources: ResourcesT = None  # type: ignore[assignment]  # what the worker's resources factory built
    logger: JobLogger = field(init=False)
    _report_progress: Callable[[ProgressValue], None] | None = field(default=None, repr=False)
    _report_log: Callable[[str], None] | None = field(default=None, repr=False)
    _cancel: threading.Event | None = field(default=None, repr=False)
    log_lines: list[str] = field(default_factory=list, init=False)
    last_progress: ProgressValue | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.logger = JobLogger(
            _log,
            {"job_id": self.job_id, "job_name": self.name, "queue": self.queue, "attempt": self.attempt},
            self.log,
        )

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this job (`forgejobs job cancel ID`, `client.cancel(id)`) while it runs.

        The worker learns of it with its next heartbeat (within `stall_timeout / 5`, 2 s by default). A
        handler that checks it should stop early; the job then ends as `cancelled` whether the handler
        returns or raises."""
        return self._cancel is not None and self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `JobCancelled` if the job was cancelled: a one-line check for loops."""
        if self.cancelled:
            raise JobCancelled(f"{self.name} {self.job_id} was cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to `timeout` seconds (None: until cancelled) or until the job is cancelled; True if it
        was. Use it instead of `time.sleep` in a handler that waits, so a cancel stops it at once."""
        if self._cancel is None:
            if timeout is not None:
                time.sleep(timeout)
            return False
        return self._cancel.wait(timeout)

    async def wait_cancelled_async(self, timeout: float | None = None, poll: float = 0.05) -> bool:
        """`wait_cancelled` for `async def perform`: awaits (checking every `poll` seconds, never blocking the
        event loop) until the job is cancelled or `timeout` passes; True if it was cancelled. Run a task
        and this side by side (`asyncio.wait(..., return_when=FIRST_COMPLETED)`) to stop the task on cancel."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.cancelled:
            if deadline is not None and loop.time() >= deadline:
                return False
            step = poll if deadline is None else max(0.0, min(poll, deadline - loop.time()))
            await asyncio.sleep(step)
        return True

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def log(self, message: str) -> None:
        """Append a line to this job's own log (capped; readable with `handle.logs()` while it runs)."""
        line = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ} #{self.attempt} {message}"
        self.log_lines.append(line)
        if self._report_log is not None:
            self._report_log(line)

    def rate_limited(self, retry_after: float | timedelta) -> NoReturn:
        """Stop now and run again after `retry_after` (e.g. a remote's Retry-After), without using an attempt."""
        from .errors import RateLimited

        raise RateLimited(retry_after, "rate limited by the remote")

    def progress(self, value: ProgressValue) -> None:
        """Report progress: a percentage (0-100) or a dict such as `{"done": 10, "total": 50}`."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 <= value <= 100:
                raise ValueError(f"progress percentage must be within 0..100, got {value}")
        elif not isinstance(value, dict):
            raise TypeError(f"progress takes a number or a dict, not {type(value).__name__}")
        self.last_progress = value
        if self._report_progress is not None:
            self._report_progress(value)
