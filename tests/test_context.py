"""The handler's `Context` on its own, as a unit test builds it: the job logger and the job's own log, the
cancel checks without and with a cancel event, and what `ctx.progress` accepts. No Redis, no worker."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from datetime import timedelta

import pytest

from forgejobs.context import Context, JobCancelled, ProgressValue
from forgejobs.errors import RateLimited


def context(cancel: threading.Event | None = None, progress: list[ProgressValue] | None = None) -> Context[None]:
    return Context(
        job_id="job-1",
        name="fast.echo",
        queue="fast",
        attempt=2,
        max_attempts=3,
        _cancel=cancel,
        _report_progress=progress.append if progress is not None else None,
    )


def job_log(ctx: Context[None]) -> list[str]:
    """The job's own log lines without their timestamps (each line is `<timestamp> #<attempt> <text>`)."""
    return [line.split(" ", 1)[1] for line in ctx.log_lines]


# -- the job logger --------------------------------------------------------------------------------


def test_the_job_logger_prefixes_messages_and_copies_info_lines_to_the_jobs_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = context()
    with caplog.at_level(logging.INFO, logger="forgejobs.job"):
        ctx.logger.info("sent %d of %d", 3, 5)
    assert job_log(ctx) == ["#2 INFO sent 3 of 5"]
    [record] = [r for r in caplog.records if r.name == "forgejobs.job"]
    assert record.getMessage() == "[fast.echo job-1 #2] sent 3 of 5"
    assert (record.job_id, record.job_name, record.queue, record.attempt) == ("job-1", "fast.echo", "fast", 2)  # type: ignore[attr-defined]


def test_debug_lines_reach_the_jobs_log_only_when_the_logger_is_enabled_for_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = context()
    with caplog.at_level(logging.INFO, logger="forgejobs.job"):
        ctx.logger.debug("hidden")
    assert job_log(ctx) == []
    with caplog.at_level(logging.DEBUG, logger="forgejobs.job"):
        ctx.logger.debug("shown")
    assert job_log(ctx) == ["#2 DEBUG shown"]


def test_a_message_whose_arguments_do_not_fit_is_kept_in_the_jobs_log_with_its_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = context()
    with caplog.at_level(logging.ERROR, logger="forgejobs.job"):  # INFO dropped by logging, kept by the job
        ctx.logger.info("%d rows", "many")
        ctx.logger.warning("two %s %s", "one")
    assert job_log(ctx) == ["#2 INFO %d rows ('many',)", "#2 WARNING two %s %s ('one',)"]


# -- cancellation -----------------------------------------------------------------------------------


def test_raise_if_cancelled_raises_only_once_the_job_is_cancelled() -> None:
    cancel = threading.Event()
    ctx = context(cancel)
    ctx.raise_if_cancelled()  # not cancelled: returns
    assert not ctx.cancelled
    cancel.set()
    assert ctx.cancelled
    with pytest.raises(JobCancelled, match="fast.echo job-1 was cancelled"):
        ctx.raise_if_cancelled()


def test_a_context_without_a_cancel_event_is_never_cancelled() -> None:
    ctx = context()
    assert not ctx.cancelled
    ctx.raise_if_cancelled()
    assert ctx.wait_cancelled() is False  # no timeout: returns at once instead of blocking for ever
    assert ctx.wait_cancelled(0.01) is False  # waits the time out, then says it was not cancelled


def test_wait_cancelled_returns_true_when_another_thread_cancels() -> None:
    cancel = threading.Event()
    ctx = context(cancel)
    assert ctx.wait_cancelled(0.01) is False
    threading.Timer(0.05, cancel.set).start()
    assert ctx.wait_cancelled(None) is True


def test_wait_cancelled_async_says_whether_the_job_was_cancelled_before_the_timeout() -> None:
    cancel = threading.Event()
    ctx = context(cancel)

    async def scenario() -> tuple[bool, bool, bool]:
        timed_out = await ctx.wait_cancelled_async(timeout=0.05, poll=0.01)
        asyncio.get_running_loop().call_later(0.05, cancel.set)
        cancelled = await ctx.wait_cancelled_async(poll=0.01)
        already = await ctx.wait_cancelled_async(timeout=0)
        return timed_out, cancelled, already

    assert asyncio.run(scenario()) == (False, True, True)


# -- progress ---------------------------------------------------------------------------------------


def test_progress_reports_percentages_and_dicts() -> None:
    reported: list[ProgressValue] = []
    ctx = context(progress=reported)
    ctx.progress(0)
    ctx.progress(42.5)
    ctx.progress({"done": 10, "total": 50})
    assert reported == [0, 42.5, {"done": 10, "total": 50}]
    assert ctx.last_progress == {"done": 10, "total": 50}


@pytest.mark.parametrize("value", [-1, 100.5, 101])
def test_progress_refuses_a_percentage_outside_0_to_100(value: float) -> None:
    reported: list[ProgressValue] = []
    ctx = context(progress=reported)
    with pytest.raises(ValueError, match=f"progress percentage must be within 0..100, got {value}"):
        ctx.progress(value)
    assert reported == [] and ctx.last_progress is None


@pytest.mark.parametrize(("value", "kind"), [("50", "str"), (True, "bool"), ([1, 2], "list"), (None, "NoneType")])
def test_progress_refuses_what_is_neither_a_number_nor_a_dict(value: object, kind: str) -> None:
    reported: list[ProgressValue] = []
    ctx = context(progress=reported)
    with pytest.raises(TypeError, match=f"progress takes a number or a dict, not {kind}"):
        ctx.progress(value)  # type: ignore[arg-type]
    assert reported == [] and ctx.last_progress is None


def test_progress_without_a_reporter_is_only_remembered() -> None:
    ctx = context()
    ctx.progress(7)
    assert ctx.last_progress == 7


# -- the rest of what a handler calls ----------------------------------------------------------------


def test_ctx_log_appends_a_timestamped_line_and_reports_it() -> None:
    reported: list[str] = []
    ctx: Context[None] = Context(job_id="job-1", name="fast.echo", queue="fast", attempt=2, _report_log=reported.append)
    ctx.log("halfway")
    assert reported == ctx.log_lines and job_log(ctx) == ["#2 halfway"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z #2 halfway", reported[0])


def test_is_last_attempt_compares_the_attempt_with_max_attempts() -> None:
    assert not context().is_last_attempt  # attempt 2 of 3
    assert Context(job_id="j", name="n", queue="q", attempt=3, max_attempts=3).is_last_attempt


@pytest.mark.parametrize(("retry_after", "seconds"), [(30, 30.0), (timedelta(minutes=2), 120.0)])
def test_rate_limited_raises_rate_limited_with_the_delay_in_seconds(
    retry_after: float | timedelta, seconds: float
) -> None:
    with pytest.raises(RateLimited, match="rate limited by the remote") as raised:
        context().rate_limited(retry_after)
    assert raised.value.delay == seconds
