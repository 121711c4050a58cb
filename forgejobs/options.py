"""Validated option models: what a job class may declare and what one enqueue may ask.

Options are checked when a class is created, so a typo fails at import with
the class name in the message, not in a worker at 3 a.m.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import backoff as _backoff
from .ratelimit import RateLimit
from .schedule import Schedule
from .types import Duration, Priority, parse_duration

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

DEFAULT_PRIORITY = 5


def _positive(value: timedelta | None, what: str) -> timedelta | None:
    if value is not None and value.total_seconds() <= 0:
        raise ValueError(f"{what} must be positive")
    return value


class JobOptions(BaseModel):
    """The effective options of one job type (class defaults, then spec overrides)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    queue: str | None = Field(default=None, pattern=NAME_PATTERN)
    attempts: int = Field(default=3, ge=1, le=1000)
    backoff: _backoff.Backoff = Field(default_factory=lambda: _backoff.exponential(1, max_seconds=3600))
    priority: Priority = DEFAULT_PRIORITY
    timeout: Duration = timedelta(minutes=5)
    max_payload_bytes: int = Field(default=16 * 1024, ge=64)
    result_ttl: Duration = timedelta(hours=1)
    failure_ttl: Duration = timedelta(days=7)
    max_stalled: int = Field(default=1, ge=0, le=100)
    schedule: Schedule | None = None
    unique_for: Duration | None = None
    """Deduplication window: an enqueue matching a job enqueued less than this ago returns that job instead."""
    debounce: Duration | None = None
    """An enqueue matching a job still waiting to start replaces its payload and pushes its start back by this."""
    dedupe_key: tuple[str, ...] | Callable[[Any], str] | None = None
    """Which payload fields (or a function of the job) make two enqueues "the same"; default: the whole payload."""
    rate_limit: RateLimit | None = None
    """Per key: at most `max` runs per `per` for each value of `rate_limit_key` (all of this job if unset)."""
    rate_limit_key: str | Callable[[Any], str] | None = None
    """A payload field name, or a function of the job instance, naming the key a `rate_limit` applies to."""
    concurrency_key: str | Callable[[Any], str] | None = None
    """A payload field name, or a function of the job instance: at most `concurrency_limit` jobs with the same
    key run at once, across every worker process and host (e.g. per organisation or per endpoint)."""
    concurrency_limit: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("timeout", "result_ttl", "failure_ttl")
    @classmethod
    def _durations_positive(cls, value: timedelta) -> timedelta:
        return _positive(value, "duration") or value

    def describe_timeout(self) -> str:
        return f"{self.timeout.total_seconds():g}s"


# Options a job class may set; `abstract` and `every` are handled by the class machinery.
CLASS_OPTION_NAMES = frozenset(JobOptions.model_fields)

__all__ = ["Duration", "EnqueueOptions", "JobOptions", "JobOverride", "Priority", "parse_duration"]


class JobOverride(BaseModel):
    """What a spec may change about a job declared in code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int | None = Field(default=None, ge=1, le=1000)
    backoff: _backoff.Backoff | None = None
    priority: Priority | None = None
    timeout: Duration | None = None
    max_payload_bytes: int | None = Field(default=None, ge=64)
    result_ttl: Duration | None = None
    failure_ttl: Duration | None = None
    max_stalled: int | None = Field(default=None, ge=0, le=100)
    rate_limit: RateLimit | None = None

    @field_validator("timeout", "result_ttl", "failure_ttl")
    @classmethod
    def _durations_positive(cls, value: timedelta | None) -> timedelta | None:
        return _positive(value, "duration")

    def apply(self, options: JobOptions) -> JobOptions:
        """`options` with this override's values; the result is validated like a class declaration."""
        changes = {key: getattr(self, key) for key in type(self).model_fields if getattr(self, key) is not None}
        return JobOptions.model_validate({**dict(options), **changes})


class EnqueueOptions(BaseModel):
    """Options for one enqueue call. Never mixed with payload fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delay: Duration | None = None
    at: datetime | None = None
    priority: Priority | None = None
    job_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    """Your own id. While a job with this id is still known (pending, or kept for its result/failure TTL),
    enqueueing it again stores nothing and returns a handle to the existing job (`handle.existing`)."""
    scheduled_for: datetime | None = None
    """The tick a repeat fired for (set by the scheduler; handlers read it as `ctx.scheduled_for`)."""

    @field_validator("at", "scheduled_for")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return value

    def model_post_init(self, __context: Any) -> None:
        if self.delay is not None and self.at is not None:
            raise ValueError("give 'delay' or 'at', not both")
        if self.delay is not None and self.delay.total_seconds() < 0:
            raise ValueError("'delay' must not be negative")

    def due_at(self, now: datetime) -> datetime | None:
        """When the job may start, or None to start as soon as a worker is free."""
        if self.at is not None:
            return self.at.astimezone(UTC)
        if self.delay is not None and self.delay.total_seconds() > 0:
            return now + self.delay
        return None
