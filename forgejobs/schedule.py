"""Repeats: when a job fires by itself (cron pattern or fixed interval), in which time zone,
and what happens to ticks that overlap or were missed.

Declared on a job class (`schedule=cron("0 0 * * *", tz="UTC")` or
`every=timedelta(minutes=5)`) or in `specs/schedules.yaml`; validated where
written: a bad pattern, an unknown zone or a payload the job refuses fails at
import or at `forgejobs check`, not at midnight.

Tick times are pure functions of the declaration, never of the process's
clock zone or start time: a cron pattern is read in its own `tz`, with
cron's rules on daylight-saving changes (see `Schedule.fixed_time`), and an
interval is aligned to the Unix epoch. Two scheduler
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
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: 'America' names a folder of the database
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
            return self._next_cron_tick(moment)
        period = self.every_seconds
        count = int(moment.timestamp() // period) + 1
        return datetime.fromtimestamp(count * period, UTC)

    @property
    def fixed_time(self) -> bool:
        """True when neither the minute nor the hour field starts with `*` (cron's "fixed-time" jobs).

        Across a daylight-saving change, cron runs a fixed-time job once: on
        the first occurrence of a repeated wall-clock time, and at the end of
        the gap for a skipped one. A wildcard job (`*/15 * * * *`, `0 * * * *`)
        goes by the clock instead: it fires in both passes of a repeated hour
        and not at all for times that do not exist.
        """
        assert self.cron is not None
        minute, hour = self.cron.split()[:2]
        return not (minute.startswith("*") or hour.startswith("*"))

    def _next_cron_tick(self, moment: datetime) -> datetime:
        # The pattern is matched on naive wall-clock times of `tz`; each match is
        # then placed in time by `_instants` (DST rules above). Instants grow with
        # wall-clock times except inside a repeated hour, whose second pass comes
        # after every first-pass time: a search there starts that much earlier and
        # ends once it has left the repeated hour.
        assert self.cron is not None
        zone, fixed = self.zone, self.fixed_time
        local = moment.astimezone(zone)
        start = local.replace(tzinfo=None)
        if local.fold == 0 and _is_repeated(start, zone):  # in a repeated hour's first pass
            start -= (local.utcoffset() or timedelta(0)) - (local.replace(fold=1).utcoffset() or timedelta(0))
        matches = croniter(self.cron, start)
        best: datetime | None = None
        while True:
            wall: datetime = matches.get_next(datetime)
            repeated = _is_repeated(wall, zone)
            if best is not None and not repeated:
                return best
            for instant in _instants(wall, zone, fixed):
                if instant > moment and (best is None or instant < best):
                    best = instant
            if best is not None and not repeated:
                return best

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


def _is_repeated(wall: datetime, zone: ZoneInfo) -> bool:
    """True when the naive wall-clock time `wall` happens twice in `zone` (a fall-back hour)."""
    return wall.replace(tzinfo=zone, fold=0).utcoffset() != wall.replace(tzinfo=zone, fold=1).utcoffset()


def _instants(wall: datetime, zone: ZoneInfo, fixed: bool) -> list[datetime]:
    """The UTC instants a pattern matching the naive wall-clock time `wall` fires at."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != wall:  # in a spring-forward gap: it does not exist
        if not fixed:
            return []
        # the first valid time after the gap: the change itself, somewhere between the two readings
        low, high = min(first, second), max(first, second)
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(zone).utcoffset() == high.astimezone(zone).utcoffset():
                high = middle
            else:
                low = middle
        return [high.replace(microsecond=0)]
    if first != second and not fixed:  # a repeated time, for a wildcard pattern: both passes
        return [first, second]
    return [first]  # the only, or a fixed-time pattern's first, occurrence


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
