"""Rate limits: at most `max` acquisitions in any window of `per`, in memory and across processes on Redis."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest
import redis
import yaml
from pydantic import ValidationError

from forgejobs.ratelimit import MemoryRateLimiter, RateLimit, RateLimiter, RedisRateLimiter, ratelimit_key


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limit(text: str) -> RateLimit:
    return RateLimit.model_validate(yaml.safe_load(text))


# --- the declaration ---------------------------------------------------------------------------------------------


def test_a_limit_is_read_from_yaml_and_described() -> None:
    rate = limit("{max: 100, per: 1s}")
    assert rate.max == 100
    assert rate.per == timedelta(seconds=1)
    assert rate.describe() == "100/1s"
    assert limit("{max: 5, per: 500ms}").describe() == "5/0.5s"


@pytest.mark.parametrize(
    "text",
    ["{max: 0, per: 1s}", "{max: 10, per: 0s}", "{max: 10, per: -1}", "{max: 10}", "{max: 10, per: 1s, burst: 3}"],
)
def test_a_bad_limit_is_refused_where_it_is_written(text: str) -> None:
    with pytest.raises(ValidationError):
        limit(text)


def test_both_limiters_satisfy_the_protocol(conn: redis.Redis) -> None:
    assert isinstance(MemoryRateLimiter(), RateLimiter)
    assert isinstance(RedisRateLimiter(conn), RateLimiter)


# --- the in-memory limiter, on a fake clock --------------------------------------------------------------------


def test_exactly_max_acquisitions_fit_in_one_window() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    rate = RateLimit(max=3, per=timedelta(seconds=1))

    assert [limiter.acquire("k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k", rate) == pytest.approx(1.0)
    assert limiter.acquire("k", rate) == pytest.approx(1.0), "a refused call takes no slot"


def test_time_is_counted_in_whole_microseconds_down_to_a_one_microsecond_window() -> None:
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(clock)
    tiny = RateLimit(max=1, per=timedelta(microseconds=1))
    short = RateLimit(max=1, per=timedelta(microseconds=10))

    assert limiter.acquire("tiny", tiny) == 0.0 and limiter.acquire("short", short) == 0.0
    clock.now = 0.000_001
    assert limiter.acquire("tiny", tiny) == 0.0  # one microsecond later the window has moved on
    clock.now = 0.000_009
    assert limiter.acquire("short", short) == 1e-6  # the slot frees in the next microsecond: wait exactly that


def test_the_wait_is_until_the_oldest_acquisition_leaves_the_window() -> None:
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(clock)
    rate = RateLimit(max=2, per=timedelta(seconds=1))
    assert limiter.acquire("k", rate) == 0.0  # t = 0.0
    clock.now = 0.3
    assert limiter.acquire("k", rate) == 0.0

    clock.now = 0.5
    assert limiter.acquire("k", rate) == pytest.approx(0.5)
    clock.now = 0.999
    assert limiter.acquire("k", rate) == pytest.approx(0.001)
    clock.now = 1.0  # the t = 0.0 acquisition leaves the window (0.0, 1.0]
    assert limiter.acquire("k", rate) == 0.0
    assert limiter.acquire("k", rate) == pytest.approx(0.3), "next to leave is the one taken at 0.3"


def test_the_window_slides_and_never_holds_more_than_max() -> None:
    """A caller polling every 10 ms for 5 s: each answer is checked against the acquisitions before it."""
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(clock)
    rate = RateLimit(max=4, per=timedelta(milliseconds=250))
    taken_ms: list[int] = []
    for now_ms in range(0, 5000, 10):
        clock.now = now_ms / 1000
        in_window = [t for t in taken_ms if t > now_ms - 250]
        wait = limiter.acquire("k", rate)
        if len(in_window) < 4:
            assert wait == 0.0
            taken_ms.append(now_ms)
        else:
            assert wait == pytest.approx((in_window[0] + 250 - now_ms) / 1000)
            assert 0 < wait <= 0.25
    # Slots free every 250 ms and are retaken at once: 4 per 250 ms, exactly.
    assert len(taken_ms) == 4 * 5000 // 250


def test_calling_again_after_the_wait_succeeds() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    rate = RateLimit(max=1, per=timedelta(seconds=30))
    assert limiter.acquire("k", rate) == 0.0
    clock.now += 12.5
    wait = limiter.acquire("k", rate)
    assert wait == pytest.approx(17.5)
    clock.now += wait
    assert limiter.acquire("k", rate) == 0.0


def test_keys_are_independent_in_memory() -> None:
    limiter = MemoryRateLimiter(FakeClock())
    rate = RateLimit(max=1, per=timedelta(seconds=1))
    assert limiter.acquire("tenant-a", rate) == 0.0
    assert limiter.acquire("tenant-a", rate) > 0
    assert limiter.acquire("tenant-b", rate) == 0.0


def test_a_lowered_max_waits_until_enough_acquisitions_leave() -> None:
    clock = FakeClock(0.0)
    limiter = MemoryRateLimiter(clock)
    for t in (0.0, 0.1, 0.2, 0.3):
        clock.now = t
        assert limiter.acquire("k", RateLimit(max=4, per=timedelta(seconds=1))) == 0.0
    clock.now = 0.5
    # With max 2, three of the four must leave: the one taken at 0.2 leaves at 1.2.
    assert limiter.acquire("k", RateLimit(max=2, per=timedelta(seconds=1))) == pytest.approx(0.7)


# --- the Redis limiter ---------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_allows_exactly_max_in_a_window(conn: redis.Redis) -> None:
    limiter = RedisRateLimiter(conn)
    rate = limit("{max: 5, per: 10s}")

    assert [limiter.acquire("k", rate) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("k", rate)
    assert 9.0 < wait <= 10.0
    assert conn.zcard("forgejobs:ratelimit:k") == 5, "a refused call takes no slot"
    assert 19_000 < conn.pttl("forgejobs:ratelimit:k") <= 20_000, "idle state expires after about 2 x per"
    assert wait * 1_000_000 == pytest.approx(round(wait * 1_000_000), abs=1e-3), "whole microseconds of server time"


@pytest.mark.redis
def test_redis_idle_state_expires_after_twice_the_window(conn: redis.Redis) -> None:
    RedisRateLimiter(conn).acquire("k", limit("{max: 1, per: 1000s}"))

    # 2 x 1000 s to the millisecond, less the moments between the call and the reading (well under a second)
    assert 1_999_000 < conn.pttl("forgejobs:ratelimit:k") <= 2_000_000


@pytest.mark.redis
def test_redis_wait_is_how_long_until_a_slot_frees(conn: redis.Redis) -> None:
    limiter = RedisRateLimiter(conn)
    rate = limit("{max: 2, per: 300ms}")
    assert limiter.acquire("k", rate) == 0.0
    assert limiter.acquire("k", rate) == 0.0
    before_refusal = time.monotonic()
    wait = limiter.acquire("k", rate)
    assert 0.2 < wait <= 0.3

    # Poll until a slot frees: never before the promised wait (a loaded machine only makes it later),
    # and every refusal in between promises no more than what is left.
    while (wait_now := limiter.acquire("k", rate)) > 0:
        assert wait_now <= wait
        assert time.monotonic() < before_refusal + 5, "no slot freed"
        time.sleep(min(wait_now, 0.005))
    assert time.monotonic() - before_refusal >= wait - 0.005

    # And not later than promised: once the wait is over, a slot is free.
    assert limiter.acquire("k2", rate) == 0.0
    assert limiter.acquire("k2", rate) == 0.0
    refused_at = time.monotonic()
    wait = limiter.acquire("k2", rate)
    time.sleep(max(0.0, wait + 0.01 - (time.monotonic() - refused_at)))
    assert limiter.acquire("k2", rate) == 0.0


@pytest.mark.redis
def test_redis_keys_and_prefixes_are_independent(conn: redis.Redis) -> None:
    rate = limit("{max: 1, per: 5s}")
    limiter = RedisRateLimiter(conn)
    assert limiter.acquire("tenant-a", rate) == 0.0
    assert limiter.acquire("tenant-a", rate) > 0
    assert limiter.acquire("tenant-b", rate) == 0.0
    assert RedisRateLimiter(conn, prefix="other").acquire("tenant-a", rate) == 0.0
    assert conn.exists(ratelimit_key("forgejobs", "tenant-a"), ratelimit_key("other", "tenant-a")) == 2


@pytest.mark.redis
def test_redis_limiters_on_separate_connections_share_one_limit(redis_url: str) -> None:
    rate = limit("{max: 3, per: 5s}")
    connections = [redis.Redis.from_url(redis_url) for _ in range(3)]
    limiters = [RedisRateLimiter(connection) for connection in connections]
    try:
        assert [limiter.acquire("k", rate) for limiter in limiters] == [0.0, 0.0, 0.0]
        assert all(limiter.acquire("k", rate) > 0 for limiter in limiters)
    finally:
        for connection in connections:
            connection.close()


@pytest.mark.redis
def test_redis_a_lowered_max_waits_until_enough_acquisitions_leave(conn: redis.Redis) -> None:
    limiter = RedisRateLimiter(conn)
    assert [limiter.acquire("k", limit("{max: 4, per: 10s}")) for _ in range(4)] == [0.0] * 4
    wait = limiter.acquire("k", limit("{max: 2, per: 10s}"))
    # Three of the four must leave; the third was taken last-but-one, microseconds after the first.
    scores = [score for _, score in conn.zrange("forgejobs:ratelimit:k", 0, -1, withscores=True)]
    seconds, micros = conn.time()
    assert wait == pytest.approx((scores[2] - (seconds * 1_000_000 + micros)) / 1_000_000 + 10, abs=0.05)
    assert conn.zcard("forgejobs:ratelimit:k") == 4


# --- two processes hammering one key ---------------------------------------------------------------------------

HAMMER_LIMIT = {"max": 20, "per": "1s"}
HAMMER_SECONDS = 2.5


def _hammer(url: str, start: Barrier, results: Queue[list[tuple[float, float]]]) -> None:
    """Acquire in a tight loop for HAMMER_SECONDS; report (sent, answered) wall-clock times of each success."""
    limiter = RedisRateLimiter(redis.Redis.from_url(url))
    rate = RateLimit.model_validate(HAMMER_LIMIT)
    successes: list[tuple[float, float]] = []
    start.wait(timeout=60)
    end = time.time() + HAMMER_SECONDS
    while (sent := time.time()) < end:
        if limiter.acquire("hammered", rate) == 0.0:
            successes.append((sent, time.time()))
    results.put(successes)


def most_in_any_window(successes: list[tuple[float, float]], per: float) -> int:
    """The most successes certainly inside one window of length `per`.

    Redis decided each success at some instant between sending the call and reading the answer, so a
    success counts towards the window starting at `sent` of another only if its whole span fits inside.
    That makes the count exact (no tolerance for scheduling jitter) and never an over-count.
    """
    return max(
        sum(1 for sent, answered in successes if sent >= window_start and answered < window_start + per)
        for window_start, _ in successes
    )


@pytest.mark.redis
def test_two_processes_never_exceed_the_limit_in_any_window(redis_url: str, conn: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    results: Queue[list[tuple[float, float]]] = ctx.Queue()
    processes = [ctx.Process(target=_hammer, args=(redis_url, start, results), daemon=True) for _ in range(2)]
    for process in processes:
        process.start()
    try:
        per_process = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    successes = sorted(s for done in per_process for s in done)

    # Sliding-window log: never more than `max` in any window of `per`; the first burst reaches it exactly.
    assert most_in_any_window(successes, per=1.0) == 20
    # Hammered from cold, every slot is retaken as soon as it frees: bursts of 20 at ~0 s, ~1 s and ~2 s.
    # 60 = 20 x ceil(2.5 s / 1 s) is the hard ceiling; 40 (= 0.8 x 20/s x 2.5 s) leaves room for a slow machine.
    assert 40 <= len(successes) <= 60, f"{len(successes)} successes in {HAMMER_SECONDS}s"
    assert conn.zcard(ratelimit_key("forgejobs", "hammered")) <= 20
