"""Small annotated types shared by option and spec models."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: Any) -> Any:
    """Accept `timedelta`, seconds as a number, or text like `500ms`, `30s`, `5m`, `2h`, `1d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '30s', not a boolean")
    try:
        if isinstance(value, (int, float)):
            return timedelta(seconds=value)
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
            raise ValueError(f"cannot read {value!r} as a duration; write e.g. '30s', '5m', '2h' or '1d'")
    except OverflowError:  # inf, 1e20 seconds, '1000000000d': beyond what a timedelta holds
        raise ValueError(f"{value!r} is too long a duration (at most about 2.7 million years)") from None
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda td: td.total_seconds(), return_type=float),
]
"""A non-negative span of time, from a timedelta, seconds, or `'30s'`-style text."""

Priority = Annotated[int, Field(ge=1, le=10)]
"""1 is the highest priority, 10 the lowest."""
