"""The watchdog that enforces timeouts for thread slots."""

from __future__ import annotations

import threading
import time

import pytest
from rq.timeouts import JobTimeoutException

from forgejobs.timeouts import WATCHDOG, WatchdogDeathPenalty


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_job_over_its_timeout_gets_the_timeout_exception_with_a_message() -> None:
    with (
        pytest.raises(JobTimeoutException, match=r"exceeded maximum timeout value \(1 seconds\)"),
        WatchdogDeathPenalty(1, JobTimeoutException),
    ):
        busy(5)


def test_a_job_within_its_timeout_is_left_alone_and_disarmed_deadlines_do_not_fire() -> None:
    for _ in range(200):
        with WatchdogDeathPenalty(1, JobTimeoutException):
            pass
    busy(1.3)  # any of the 200 deadlines firing late would raise here
    assert len(WATCHDOG._armed) == 0


def test_each_thread_gets_its_own_deadline() -> None:
    outcomes: dict[str, str] = {}

    def run(name: str, timeout: int, work: float) -> None:
        try:
            with WatchdogDeathPenalty(timeout, JobTimeoutException):
                busy(work)
            outcomes[name] = "done"
        except JobTimeoutException:
            outcomes[name] = "timed out"

    threads = [threading.Thread(target=run, args=("slow", 1, 3)), threading.Thread(target=run, args=("quick", 5, 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert outcomes == {"slow": "timed out", "quick": "done"}
