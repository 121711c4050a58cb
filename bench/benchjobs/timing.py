"""When bench jobs started and ended, recorded in this process by the jobs themselves.

The bench runs its workers in its own process (forgejobs' `Worker` as threads, RQ's `SimpleWorker` in the
main thread), so a job can hand its timestamps straight to the code that measures: no Redis round trip is
added to the job. Times are `time.time()` (the same clock the enqueuer reads).
"""

from __future__ import annotations

import threading
import time

SLEEP_SECONDS = 0.05
"""How long `SleepJob` and `rqfuncs.sleep50` sleep."""


class Recorder:
    """`start`/`end` times by tag; `wait` blocks until a tag's start is recorded."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}

    def start(self, tag: str) -> None:
        now = time.time()
        with self._cond:
            self.starts[tag] = now
            self._cond.notify_all()

    def end(self, tag: str) -> None:
        now = time.time()
        with self._cond:
            self.ends[tag] = now

    def wait(self, tag: str, timeout: float) -> float | None:
        """The start time of `tag`, waiting up to `timeout` seconds for it; None if it did not start."""
        with self._cond:
            self._cond.wait_for(lambda: tag in self.starts, timeout)
            return self.starts.get(tag)

    def clear(self) -> None:
        with self._cond:
            self.starts.clear()
            self.ends.clear()


RECORDER = Recorder()
