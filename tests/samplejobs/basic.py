"""Small jobs whose side effects are lines in a file the test reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel

from forgejobs import Context, Job, RetryLater, Unrecoverable, backoff
from forgejobs.ratelimit import RateLimit


def _note(path: str, **fields: object) -> None:
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": time.time(), "pid": os.getpid(), **fields}) + "\n")
        fh.flush()


class EchoResult(BaseModel):
    text: str
    attempt: int


class Echo(Job, queue="fast", attempts=1):
    """Return the text it was given."""

    text: str

    def perform(self, ctx: Context) -> EchoResult:
        return EchoResult(text=self.text, attempt=ctx.attempt)


class Mark(Job, queue="fast", attempts=1):
    """Append a label to a file (order tests)."""

    path: str
    label: str

    def perform(self, ctx: Context) -> None:
        _note(self.path, label=self.label, job_id=ctx.job_id)


class Flaky(Job, queue="fast", attempts=4, backoff=backoff.exponential(1)):
    """Fail the first `failures` attempts, then succeed. Every attempt is noted."""

    path: str
    failures: int

    def perform(self, ctx: Context) -> int:
        _note(self.path, attempt=ctx.attempt)
        if ctx.attempt <= self.failures:
            raise RuntimeError(f"planned failure {ctx.attempt}")
        return ctx.attempt


class Doomed(Job, queue="fast", attempts=5):
    """Raise Unrecoverable on the first attempt."""

    path: str

    def perform(self, ctx: Context) -> None:
        _note(self.path, attempt=ctx.attempt)
        raise Unrecoverable("the account was deleted")


class Snooze(Job, queue="fast", attempts=1):
    """Ask to run again later once, without spending the only attempt."""

    path: str

    def perform(self, ctx: Context) -> str:
        _note(self.path, attempt=ctx.attempt)
        lines = Path(self.path).read_text().splitlines()
        if len(lines) == 1:
            raise RetryLater(1, "remote said 429")
        return "done"


class Slow(Job, queue="slow", attempts=2, backoff=backoff.fixed(0), timeout=60):
    """Note start, sleep, note finish (shutdown tests)."""

    path: str
    seconds: float

    def perform(self, ctx: Context) -> str:
        _note(self.path, event="start", attempt=ctx.attempt)
        time.sleep(self.seconds)
        _note(self.path, event="finish", attempt=ctx.attempt)
        return "slept"


class TimesOut(Job, queue="slow", attempts=2, backoff=backoff.fixed(0), timeout=1):
    """Run past its one-second timeout on the first attempt only."""

    path: str
    spin: bool = False  # run Python code (a thread slot's timeout interrupts it) rather than sleep in C

    def perform(self, ctx: Context) -> int:
        _note(self.path, event="start", attempt=ctx.attempt)
        if ctx.attempt == 1:
            end = time.monotonic() + 30
            while self.spin and time.monotonic() < end:
                pass
            time.sleep(0 if self.spin else 30)
        return ctx.attempt


class Progressing(Job, queue="fast", attempts=1):
    """Report progress, then finish."""

    def perform(self, ctx: Context) -> None:
        ctx.log("halfway")
        ctx.progress(50)
        ctx.progress({"done": 2, "total": 2})
        ctx.log("done")


class SlowFirstAttempt(Job, queue="slow", attempts=3, backoff=backoff.fixed(0), timeout=120):
    """Sleeps on its first attempt (long enough to be killed); later attempts return at once."""

    path: str

    def perform(self, ctx: Context) -> int:
        _note(self.path, event="start", attempt=ctx.attempt)
        if ctx.attempt == 1:
            time.sleep(60)
        return ctx.attempt


class LimitedMark(Job, queue="limited", attempts=1):
    """Notes when it ran; its queue allows 5 runs a second across all workers."""

    path: str
    label: str

    def perform(self, ctx: Context) -> int:
        _note(self.path, label=self.label, attempt=ctx.attempt)
        return ctx.attempt


class CallEndpoint(Job, queue="keyed", attempts=1, rate_limit=RateLimit(max=2, per=1), rate_limit_key="endpoint"):
    """At most 2 runs a second per endpoint; endpoints do not slow each other."""

    path: str
    endpoint: str

    def perform(self, ctx: Context) -> int:
        _note(self.path, endpoint=self.endpoint, attempt=ctx.attempt)
        return ctx.attempt
