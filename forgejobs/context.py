"""The typed context a handler receives: who it is, which attempt, how to report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

ProgressValue = int | float | dict[str, Any]

_log = logging.getLogger("forgejobs.job")

ResourcesT = TypeVar("ResourcesT")


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes each message with the job's name, id and attempt, and puts them in `extra`
    (`job_id`, `job_name`, `queue`, `attempt`) for structured handlers."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra['job_name']} {extra['job_id']} #{extra['attempt']}] {msg}", kwargs


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
    log_lines: list[str] = field(default_factory=list, init=False)
    last_progress: ProgressValue | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.logger = JobLogger(
            _log, {"job_id": self.job_id, "job_name": self.name, "queue": self.queue, "attempt": self.attempt}
        )

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
