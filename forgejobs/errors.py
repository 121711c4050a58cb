"""Every exception forgejobs raises, under one root.

Two families live here: errors (something is wrong: a spec, a payload, the
registry, the backend) and control-flow outcomes a handler raises on purpose
(`Unrecoverable`, `RetryLater`). Execution classifies the second family; it
never lets either crash a worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class ForgeJobsError(Exception):
    """Root of every forgejobs error."""


class SpecError(ForgeJobsError):
    """A YAML spec is malformed or contradicts the code. Names file and key."""


class OptionsError(ForgeJobsError):
    """A job class declares an unknown or invalid option. Names the class."""


class RegistryError(ForgeJobsError):
    """The registry refused the set of jobs and specs it was given."""


class UnknownJob(RegistryError):
    """No job type is registered under a name."""


class PayloadError(ForgeJobsError):
    """A payload cannot be enqueued."""


class PayloadTooLarge(PayloadError):
    """The serialised payload is over the job's `max_payload_bytes`."""

    def __init__(self, job_name: str, size: int, limit: int, largest: list[tuple[str, int]]) -> None:
        self.job_name = job_name
        self.size = size
        self.limit = limit
        self.largest = largest
        fields = ", ".join(f"{name} ({n} bytes)" for name, n in largest)
        super().__init__(
            f"{job_name}: payload is {size} bytes, over the limit of {limit} bytes; "
            f"largest fields: {fields}. Enqueue a reference (an id) instead of the data."
        )


class BackendError(ForgeJobsError):
    """The queue backend (Redis) failed or holds something unexpected."""


class BackendUnavailable(BackendError):
    """Redis could not be reached within the time allowed (`FORGEJOBS_ENQUEUE_TIMEOUT` for an enqueue).
    The message names the server, never its password."""


class JobFailed(ForgeJobsError):
    """`handle.result()` was asked for the result of a job that failed for good."""

    def __init__(self, job_id: str, error: str | None) -> None:
        self.job_id = job_id
        self.error = error
        super().__init__(f"job {job_id} failed: {error or 'no error recorded'}")


class ResultTimeout(ForgeJobsError, TimeoutError):
    """`handle.result(timeout=...)` gave up before the job finished."""


class JobTimeout(ForgeJobsError, TimeoutError):
    """Raised inside a handler that ran past its `timeout`. The attempt counts as failed (and is retried)."""


class JobStalled(ForgeJobsError):
    """The worker running the job stopped mid-job (killed, crashed or lost). Never raised in a handler:
    it is the error a `backoff.custom(fn)` taking `(attempt, error)` sees for a stalled attempt."""


class NoSuchJob(ForgeJobsError, LookupError):
    """No job, or no dead letter, with that id."""


# -- control flow ---------------------------------------------------------


class Unrecoverable(ForgeJobsError):
    """Raise from `perform` to skip the remaining attempts: the job is dead-lettered now."""


class RetryLater(ForgeJobsError):
    """Raise from `perform` to run the job again after `delay`, ignoring backoff.

    It does not use up an attempt: the same attempt number runs again. Raised
    `from` the error that prompted it (`raise RetryLater(60) from exc`), the
    attempt's recorded error names that cause too.
    """

    def __init__(self, delay: timedelta | float, reason: str = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"RetryLater delay must be >= 0, got {seconds}")
        self.delay = seconds
        self.reason = reason
        super().__init__(reason or f"retry in {seconds:g}s")


def describe(exc: BaseException) -> str:
    """One line naming an exception's type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_with_cause(exc: BaseException) -> str:
    """`describe(exc)`, followed by the exception it was raised `from`, if any: `RetryLater: retry in 60s
    (from HTTPStatusError: 429 Too Many Requests)`. An implicit context (raised in an `except` block
    without `from`) is left out."""
    cause = exc.__cause__
    return f"{describe(exc)} (from {describe(cause)})" if cause is not None else describe(exc)


def error_fields(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


class RateLimited(RetryLater):
    """Raised by `ctx.rate_limited(retry_after)`: a remote said "too many requests". Waits without an attempt."""
