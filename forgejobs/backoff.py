"""Backoff strategies: how long to wait before the next attempt.

Each strategy is a small frozen Pydantic model, so the same value can be
written on a job class (`backoff.exponential(seconds=1)`) or in a spec
(`backoff: {kind: exponential, seconds: 1}`) and printed by `forgejobs check`.
`delay(attempt, error)` takes the number of the attempt that just failed
(1-based) and the exception it failed with, and returns seconds to wait before
the next one. Only `custom` strategies look at the error.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, overload

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator


class _Strategy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def delay(self, attempt: int, error: BaseException | None = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class Fixed(_Strategy):
    """The same wait after every failed attempt."""

    kind: Literal["fixed"] = "fixed"
    seconds: float = Field(ge=0)

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        return self.seconds

    def describe(self) -> str:
        return f"fixed {self.seconds:g}s"


class Exponential(_Strategy):
    """`seconds * factor**(attempt-1)`, spread by `jitter`, then capped at `max_seconds`.

    `jitter=0.2` draws the wait uniformly from ±20 % of the computed value so
    that many jobs failing together do not retry together.
    """

    kind: Literal["exponential"] = "exponential"
    seconds: float = Field(gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_seconds: PositiveFloat | None = None
    jitter: float = Field(default=0.0, ge=0, le=1)

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        try:
            value = self.seconds * self.factor ** max(attempt - 1, 0)
        except OverflowError:
            value = math.inf
        if self.jitter:
            value *= random.uniform(1 - self.jitter, 1 + self.jitter)
        if self.max_seconds is not None:
            value = min(value, self.max_seconds)
        return value

    def describe(self) -> str:
        text = f"exponential {self.seconds:g}s x{self.factor:g}"
        if self.max_seconds is not None:
            text += f" max {self.max_seconds:g}s"
        if self.jitter:
            text += f" ±{self.jitter:.0%}"
        return text


class Schedule(_Strategy):
    """An explicit list of waits; the last one repeats for later attempts."""

    kind: Literal["schedule"] = "schedule"
    delays: tuple[float, ...]

    @field_validator("delays")
    @classmethod
    def _not_empty(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(d < 0 for d in value):
            raise ValueError("delays must be a non-empty list of non-negative seconds")
        return value

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        return self.delays[min(attempt, len(self.delays)) - 1]

    def describe(self) -> str:
        return "schedule " + ",".join(f"{d:g}s" for d in self.delays)


class Custom(_Strategy):
    """A function of the failed attempt number, and of the error when it takes two arguments.

    Which one is decided once, from the function's signature: a function that
    accepts two positional arguments (or `*args`) is called `fn(attempt, error)`,
    one that accepts a single positional argument `fn(attempt)`. `error` is the
    exception the attempt failed with (`JobTimeout` for a timeout, `JobStalled`
    when the worker running it died). Class declarations only (not YAML).
    """

    kind: Literal["custom"] = "custom"
    fn: Callable[..., float]

    @field_validator("fn")
    @classmethod
    def _callable_with_one_or_two(cls, fn: Callable[..., float]) -> Callable[..., float]:
        _arity(fn)
        return fn

    @property
    def sees_error(self) -> bool:
        """True when `fn` is called with the error as well as the attempt number."""
        return _arity(self.fn) == 2

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        value = float(self.fn(attempt, error) if self.sees_error else self.fn(attempt))
        if value < 0:
            raise ValueError(f"custom backoff returned a negative delay ({value}) for attempt {attempt}")
        if math.isnan(value):
            raise ValueError(f"custom backoff returned NaN for attempt {attempt}, not a number of seconds")
        return value

    def describe(self) -> str:
        return f"custom {getattr(self.fn, '__name__', 'function')}"


def _arity(fn: Callable[..., Any]) -> int:
    """2 when `fn` can be called with (attempt, error), else 1 when it can be called with (attempt).

    A callable whose signature Python cannot read (some builtins) is taken as one-argument.
    """
    if not callable(fn):
        raise ValueError(f"custom backoff needs a function, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    for count in (2, 1):
        try:
            signature.bind(*range(count))
        except TypeError:
            continue
        return count
    raise ValueError(
        f"custom backoff function {getattr(fn, '__name__', fn)!r}{signature} must take (attempt) or (attempt, error)"
    )


Backoff = Annotated[Union[Fixed, Exponential, Schedule, Custom], Field(discriminator="kind")]
"""Any backoff strategy; YAML picks one with `kind`."""


def fixed(seconds: float) -> Fixed:
    """Wait `seconds` after every failed attempt."""
    return Fixed(seconds=seconds)


def exponential(
    seconds: float, *, factor: float = 2.0, max_seconds: float | None = None, jitter: float = 0.0
) -> Exponential:
    """Wait `seconds`, then `seconds*factor`, ... (1 s, 2 s, 4 s by default)."""
    return Exponential(seconds=seconds, factor=factor, max_seconds=max_seconds, jitter=jitter)


def schedule(*delays: float) -> Schedule:
    """Wait `delays[0]` after the first failure, `delays[1]` after the second, ..."""
    return Schedule(delays=tuple(delays))


@overload
def custom(fn: Callable[[int], float]) -> Custom: ...


@overload
def custom(fn: Callable[[int, BaseException], float]) -> Custom: ...


def custom(fn: Callable[..., float]) -> Custom:
    """Wait `fn(attempt)` seconds after attempt number `attempt` failed, or `fn(attempt, error)` when `fn`
    takes two arguments (to wait longer after a 429 than after a 500, say). Decided by `fn`'s signature."""
    return Custom(fn=fn)


NONE = Fixed(seconds=0)
"""Retry at once."""
