"""The watchdog that enforces timeouts for thread slots."""

from __future__ import annotations

import threading
import time

import pytest

from forgejobs.errors import JobTimeout
from forgejobs.timeouts import WATCHDOG, alarm_guard, watchdog_guard


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_job_over_its_timeout_gets_the_timeout_exception_with_a_message() -> None:
    with (
        pytest.raises(JobTimeout, match=r"ran longer than its timeout \(1s\)"),
        watchdog_guard(1),
    ):
        busy(5)


def test_a_job_within_its_timeout_is_left_alone_and_disarmed_deadlines_do_not_fire() -> None:
    for _ in range(200):
        with watchdog_guard(1):
            pass
    busy(1.3)  # any of the 200 deadlines firing late would raise here
    assert len(WATCHDOG._armed) == 0


def test_each_thread_gets_its_own_deadline() -> None:
    outcomes: dict[str, str] = {}

    def run(name: str, timeout: int, work: float) -> None:
        try:
            with watchdog_guard(timeout):
                busy(work)
            outcomes[name] = "done"
        except JobTimeout:
            outcomes[name] = "timed out"

    threads = [threading.Thread(target=run, args=("slow", 1, 3)), threading.Thread(target=run, args=("quick", 5, 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert outcomes == {"slow": "timed out", "quick": "done"}


def test_the_alarm_guard_interrupts_a_blocking_call_in_the_main_thread() -> None:
    started = time.monotonic()
    with pytest.raises(JobTimeout), alarm_guard(0.2):
        time.sleep(5)
    assert time.monotonic() - started < 4


def test_a_zero_timeout_means_no_limit() -> None:
    with watchdog_guard(0), alarm_guard(0):
        busy(0.05)
