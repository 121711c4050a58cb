"""Backoff strategies on their own: the waits they give, jitter and caps, and what `forgejobs check` prints."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest

from forgejobs import backoff


def test_exponential_doubles_by_default_and_starts_from_seconds() -> None:
    strategy = backoff.exponential(1.5)

    assert [strategy.delay(n) for n in (1, 2, 3, 4)] == [1.5, 3.0, 6.0, 12.0]
    assert strategy.delay(0) == 1.5  # an attempt number below 1 waits the first wait, never less


def test_exponential_takes_its_factor() -> None:
    assert [backoff.exponential(2, factor=3).delay(n) for n in (1, 2, 3)] == [2, 6, 18]


@pytest.fixture
def extreme_jitter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """random.uniform as seen by backoff answers the end of the range named in the list (default: upper)."""
    ends = ["high"]

    def uniform(low: float, high: float) -> float:
        return high if ends[0] == "high" else low

    monkeypatch.setattr(backoff.random, "uniform", uniform)
    return ends


def test_jitter_spreads_the_wait_both_ways_by_its_fraction(extreme_jitter: list[str]) -> None:
    strategy = backoff.exponential(10, jitter=0.2)

    longest = strategy.delay(1)
    extreme_jitter[0] = "low"
    shortest = strategy.delay(1)

    assert (shortest, longest) == pytest.approx((8.0, 12.0))


def test_jitter_draws_vary_around_the_computed_wait() -> None:
    strategy = backoff.exponential(10, jitter=0.5)

    draws = [strategy.delay(1) for _ in range(400)]

    assert all(5.0 <= d <= 15.0 for d in draws)
    assert min(draws) < 9.0 and max(draws) > 11.0  # both ways, not only shorter


def test_the_cap_applies_after_jitter_so_the_wait_never_exceeds_max_seconds(extreme_jitter: list[str]) -> None:
    strategy = backoff.exponential(10, max_seconds=11, jitter=0.5)

    assert strategy.delay(1) == 11  # 10 s * 1.5 would be 15 s: the cap comes last
    assert strategy.delay(5) == 11  # 160 s * 1.5, capped
    extreme_jitter[0] = "low"
    assert strategy.delay(1) == 5.0  # a jittered wait under the cap stays as drawn


def test_without_jitter_the_wait_is_exact() -> None:
    strategy = backoff.exponential(3, max_seconds=20)

    assert [strategy.delay(n) for n in (1, 2, 3, 4)] == [3, 6, 12, 20]


def test_an_overflowing_exponential_is_infinite_or_capped() -> None:
    assert backoff.exponential(1, factor=10).delay(10_000) == math.inf
    assert backoff.exponential(1, factor=10, max_seconds=3600).delay(10_000) == 3600


def test_a_schedule_repeats_its_last_wait() -> None:
    strategy = backoff.schedule(1, 2.5, 60)

    assert [strategy.delay(n) for n in (1, 2, 3, 4, 9)] == [1, 2.5, 60, 60, 60]


@pytest.mark.parametrize("delays", [(), (1, -1)])
def test_a_schedule_needs_non_negative_waits(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="delays must be a non-empty list of non-negative seconds"):
        backoff.schedule(*delays)


def test_fixed_waits_the_same_after_every_attempt() -> None:
    assert {backoff.fixed(7).delay(n) for n in (1, 2, 50)} == {7}


@pytest.mark.parametrize(
    ("strategy", "text"),
    [
        (backoff.fixed(5), "fixed 5s"),
        (backoff.exponential(1), "exponential 1s x2"),
        (backoff.exponential(0.5, factor=3, max_seconds=60, jitter=0.2), "exponential 0.5s x3 max 60s ±20%"),
        (backoff.schedule(1, 2.5, 60), "schedule 1s,2.5s,60s"),
    ],
)
def test_describe_says_what_the_strategy_waits(strategy: Any, text: str) -> None:
    assert strategy.describe() == text


def slow_down(attempt: int) -> float:
    return attempt * 10


def test_a_custom_strategy_is_described_by_its_function_name() -> None:
    assert backoff.custom(slow_down).describe() == "custom slow_down"
    assert backoff.custom(functools.partial(slow_down)).describe() == "custom function"


def test_a_custom_wait_of_zero_is_allowed_and_a_negative_or_nan_one_is_refused() -> None:
    assert backoff.custom(lambda attempt: 0).delay(1) == 0.0
    with pytest.raises(ValueError, match=r"negative delay \(-1.0\) for attempt 3"):
        backoff.custom(lambda attempt: -1).delay(3)
    with pytest.raises(ValueError, match="returned NaN for attempt 2"):
        backoff.custom(lambda attempt: math.nan).delay(2)


def test_a_custom_function_sees_the_error_only_when_it_takes_two_arguments() -> None:
    seen: list[Any] = []
    error = RuntimeError("boom")

    def two(attempt: int, err: BaseException) -> float:
        seen.append((attempt, err))
        return 1

    def star(*args: Any) -> float:
        seen.append(args)
        return 2

    assert backoff.custom(slow_down).sees_error is False
    assert backoff.custom(two).delay(4, error) == 1.0
    assert backoff.custom(star).delay(5, error) == 2.0
    assert seen == [(4, error), (5, error)]


def test_a_custom_strategy_needs_a_function_of_one_or_two_arguments() -> None:
    with pytest.raises(ValueError, match=r"fn\n  Input should be callable"):
        backoff.custom(3)  # type: ignore[call-overload]

    def three(a: int, b: int, c: int) -> float:
        return 0

    with pytest.raises(
        ValueError, match=r"custom backoff function 'three'\(a: 'int', b: 'int', c: 'int'\) -> 'float' must take"
    ):
        backoff.custom(three)  # type: ignore[call-overload]

    class Callable3:
        def __call__(self, a: int, b: int, c: int) -> float:
            return 0

        def __repr__(self) -> str:
            return "<three-argument callable>"

    with pytest.raises(ValueError, match="custom backoff function <three-argument callable>"):
        backoff.custom(Callable3())  # type: ignore[call-overload]
