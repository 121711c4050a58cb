"""Raw-RQ counterparts of the `benchjobs` job types: workers import them as `benchjobs.rqfuncs.<name>`."""

from __future__ import annotations

import time

from .timing import RECORDER, SLEEP_SECONDS


def noop(n: int) -> None:
    return None


def stamp(tag: str) -> None:
    RECORDER.start(tag)


def sleep50(n: int) -> None:
    tag = f"s{n}"
    RECORDER.start(tag)
    time.sleep(SLEEP_SECONDS)
    RECORDER.end(tag)


def welcome_email(user_id: str) -> None:
    return None
