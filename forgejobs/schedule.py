"""Repeats: when a job fires by itself (cron pattern or fixed interval), in which time zone,
and what happens to ticks that overlap or were missed.

Declared on a job class (`schedule=cron("0 0 * * *", tz="UTC")` or
`every=timedelta(minutes=5)`) or in `specs/schedules.yaml`; validated where
written: a bad pattern, an unknown zone or a payload the job refuses fails at
import or at `forgejobs check`, not at midnight.

Tick times are pure functions of the declaration, never of the process's
clock zone or start time: a cron pattern is read in its own `tz` (DST
included), and an interval is aligned to the Unix epoch. Two scheduler
processes therefore compute the same ticks, which is what makes each tick's
job id (`<schedule>-<tick>`) a reliable key for "fire once".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .types import Duration

Overlap = Literal["skip", "allow"]
CatchUp = Literal["latest", "none", "all"]

SCHEDULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


class Schedule(BaseModel):
    """A cron pattern or an interval, plus the policies for overlapping and missed ticks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str | None = None
    every: Duration | None = None
    tz: str = "UTC"
    overlap: Overlap = "skip"
    catch_up: CatchUp = "latest"
    max_catch_up: int = Field(default=100, ge=1, le=10_000)
    misfire_grace: Duration = timedelta(seconds=60)
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            value = " ".join(value.split())
            if len(value.split()) != 5 or not croniter.is_valid(value):
                raise ValueError(f"{value!r} is not a 5-field cron pattern (minute hour day month weekday)")
        return value

    @field_validator("tz")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Europe/Berlin')") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of 'cron' and 'every'")
        if self.every is not None and self.every.total_seconds() < 1:
            raise ValueError("'every' must be at least 1 second")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def describe(self) -> str:
        text = f"cron {self.cron} {self.tz}" if self.cron else f"every {self.every_seconds:g}s"
        return text if self.enabled else f"{text} (disabled)"

    @property
    def every_seconds(self) -> float:
        assert self.every is not None
        return self.every.total_seconds()

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`, in UTC."""
        moment = moment.astimezone(UTC)
        if self.cron is not None:
            tick: datetime = croniter(self.cron, moment.astimezone(self.zone)).get_next(datetime)
            return tick.astimezone(UTC)
        period = self.every_seconds
        count = int(moment.timestamp() // period) + 1
        return datetime.fromtimestamp(count * period, UTC)

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Ticks in (after, until], oldest first."""
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)

    def upcoming(self, now: datetime, count: int = 3) -> list[datetime]:
        out, moment = [], now
        for _ in range(count):
            moment = self.next_after(moment)
            out.append(moment)
        return out


def cron(
    pattern: str,
    *,
    tz: str = "UTC",
    overlap: Overlap = "skip",
    catch_up: CatchUp = "latest",
    enabled: bool = True,
) -> Schedule:
    """Fire at each time matching a 5-field cron `pattern`, read in zone `tz`."""
    return Schedule(cron=pattern, tz=tz, overlap=overlap, catch_up=catch_up, enabled=enabled)


def every(
    interval: timedelta | float | str, *, overlap: Overlap = "skip", catch_up: CatchUp = "latest", enabled: bool = True
) -> Schedule:
    """Fire every `interval`, at multiples of it since the Unix epoch (so every process agrees on the ticks)."""
    return Schedule(every=interval, overlap=overlap, catch_up=catch_up, enabled=enabled)


class ScheduleSpec(Schedule):
    """A schedule in `specs/schedules.yaml`: which job, with which payload."""

    job: str
    payload: dict[str, Any] = Field(default_factory=dict)


def tick_id(schedule_name: str, tick: datetime) -> str:
    """The job id of one tick: the same in every process, valid as an RQ job id."""
    stamp = tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{id_part(schedule_name)}-{stamp}"


def id_part(schedule_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", schedule_name)
