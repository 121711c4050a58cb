"""The test kit: a fake queue that needs no Redis, and a pytest plugin.

    def test_signup_sends_welcome(fake_queue):
        signup(email="a@b.c")
        fake_queue.assert_enqueued(WelcomeEmail, email="a@b.c", queue="email")
        fake_queue.drain()

Every enqueue made while the fixture is active goes to an in-memory backend
through the same client as production: validation, JSON round trip and the
size guard all apply. Jobs run through the same execution code as a worker
(`forgejobs.execution`), on a fake clock: backoff, delays and timeouts are
honoured without sleeping, and results are stored as the JSON a worker stores.

Two modes: `manual` (enqueues are kept until `drain()` / `perform_one()`) and
`inline` (an enqueue runs the job at once, retries included). Choose per test
with `@pytest.mark.forgejobs(mode="inline")`, per block with
`with fake_queue.inline(): ...`, or by setting `fake_queue.mode`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, cast

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .backends.base import Prepared
from .backends.fake import FakeBackend, FakeClock, StoredJob
from .client import Client, set_client
from .context import Context
from .deadletter import DeadLetter
from .envelope import decode
from .errors import ForgeJobsError, UnknownJob
from .execution import (
    Aborted,
    DeadLettered,
    Outcome,
    Retry,
    Runtime,
    Succeeded,
    call_perform,
    execute,
    result_json,
    to_json_value,
)
from .handle import JobHandle
from .job import Job
from .options import JobOptions
from .ratelimit import MemoryRateLimiter
from .registry import Registry, ScheduledJob, discover
from .schedule import Schedule
from .scheduling import MemoryRepeatStore, Repeater
from .settings import Settings
from .specs import load_specs
from .status import Status

J = TypeVar("J", bound=Job)

Mode = Literal["manual", "inline"]
MODES: tuple[Mode, ...] = ("manual", "inline")

DEFAULT_DELTA = timedelta(seconds=1)
"""The tolerance of `delay=` and `scheduled_at=` in the assertions when no `delta` is given."""

MAX_INLINE_DEPTH = 25
"""Inline jobs that enqueue jobs run nested in the enqueue call; deeper than this is taken as a loop."""


class PerformError(ForgeJobsError, AssertionError):
    """`FakeQueue.perform` found a payload or a return value that would fail in production.

    The message names the job and the field; `__cause__` is the underlying error.
    """


class DrainLimitReached(AssertionError):
    """`drain(max_jobs=N)` ran N jobs and jobs in its scope were still pending."""


def make_context(
    job: type[Job] | Job,
    *,
    attempt: int = 1,
    resources: Any = None,
    job_id: str = "test-job",
    options: JobOptions | None = None,
) -> Context[Any]:
    """A Context for calling `perform` directly in a unit test (class options unless `options` is given)."""
    job_type = job if isinstance(job, type) else type(job)
    options = options or job_type.job_options()
    return Context(
        job_id=job_id,
        name=job_type.job_name(),
        queue=options.queue or "default",
        attempt=attempt,
        max_attempts=options.attempts,
        timeout=options.timeout,
        resources=resources,
    )


@dataclass(frozen=True)
class DrainResult:
    succeeded: int = 0
    failed: int = 0  # dead-lettered
    retried: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class Enqueued(Generic[J]):
    """One enqueue as the fake queue saw it: the typed job (decoded from the stored JSON) and its options."""

    job: J
    job_id: str
    name: str
    queue: str
    priority: int
    enqueued_at: datetime
    scheduled_at: datetime | None
    """When it may start; None when it was due at once."""
    scheduled_for: datetime | None
    """The repeat tick it was fired for (`tick()`, a scheduler), else None."""
    status: Status
    """Its status now (a job that has run is still listed)."""

    @property
    def delay(self) -> timedelta:
        """How long after its enqueue it was due (zero for a job due at once)."""
        return self.scheduled_at - self.enqueued_at if self.scheduled_at is not None else timedelta(0)

    def describe(self) -> str:
        due = "due at once" if self.scheduled_at is None else f"due {self.scheduled_at.isoformat()} (+{self.delay})"
        payload = self.job.model_dump(mode="json")
        return (
            f"{self.name} id={self.job_id} queue={self.queue} priority={self.priority} {due} "
            f"[{self.status.value}] {payload}"
        )


@dataclass(frozen=True)
class Expect:
    """What an assertion asks of an enqueue besides its payload: `assert_enqueued(Job, options=Expect(...))`.

    Enqueue options live apart from payload fields here as in `with_options`, so
    a payload field may be called `queue` or `delay`. Unset (None) means "any".
    `delay` (after its enqueue) and `scheduled_at` (a moment) match within
    `delta`, 1 s by default; a job due at once has a delay of zero.
    `scheduled_within` matches a job due no later than that after the fake
    clock's now. Durations may be given as seconds.
    """

    queue: str | None = None
    priority: int | None = None
    job_id: str | None = None
    delay: timedelta | float | None = None
    scheduled_at: datetime | None = None
    scheduled_within: timedelta | float | None = None
    delta: timedelta | float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if self.delay is not None and self.scheduled_at is not None:
            raise TypeError("Expect: give delay or scheduled_at, not both")
        if self.scheduled_at is not None and self.scheduled_at.tzinfo is None:
            raise TypeError("Expect: scheduled_at needs a timezone-aware datetime")
        for key in ("delay", "scheduled_within", "delta"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, timedelta):
                object.__setattr__(self, key, timedelta(seconds=value))

    def matches(self, entry: Enqueued[Any], now: datetime) -> bool:
        """True when `entry` has every option this asks for (`now`: the clock `scheduled_within` counts from)."""
        due = entry.scheduled_at or entry.enqueued_at
        delta = cast(timedelta, self.delta)
        return (
            (self.queue is None or entry.queue == self.queue)
            and (self.priority is None or entry.priority == self.priority)
            and (self.job_id is None or entry.job_id == self.job_id)
            and (self.delay is None or abs(entry.delay - cast(timedelta, self.delay)) <= delta)
            and (self.scheduled_at is None or abs(due - self.scheduled_at) <= delta)
            and (self.scheduled_within is None or due <= now + cast(timedelta, self.scheduled_within))
        )

    def describe(self) -> str:
        keys = ("queue", "priority", "job_id")
        parts = [f"{key}={getattr(self, key)!r}" for key in keys if getattr(self, key) is not None]
        if self.delay is not None:
            parts.append(f"delay={self.delay} ±{self.delta}")
        if self.scheduled_at is not None:
            parts.append(f"scheduled_at={self.scheduled_at.isoformat()} ±{self.delta}")
        if self.scheduled_within is not None:
            parts.append(f"scheduled_within={self.scheduled_within}")
        return ", ".join(parts)


def _expect(options: Expect | Mapping[str, Any] | None) -> Expect:
    if options is None:
        return Expect()
    if isinstance(options, Expect):
        return options
    known = set(Expect.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"options: unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return Expect(**options)


def _field_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(whole value)'}: {e['msg']}" for e in exc.errors())


class FakeQueue:
    """Captures enqueues in memory; runs them on a fake clock, on demand (`manual`) or at once (`inline`)."""

    def __init__(
        self,
        registry: Registry | None = None,
        resources: Any = None,
        *,
        mode: Mode = "manual",
        start: datetime | None = None,
        raise_on_failure: bool = True,
    ) -> None:
        self.clock = FakeClock(start)
        self.backend = FakeBackend(self.clock)
        self.registry = registry if registry is not None else Registry(strict=False)
        self.client = Client(self.backend, self.registry)
        self.resources = resources
        self.mode = mode
        self.raise_on_failure = raise_on_failure
        """Inline mode: whether a job that is dead-lettered raises its exception from the enqueue."""
        self._previous: Client | None = None
        self._repeats = MemoryRepeatStore()
        self._local = threading.local()
        self.backend.on_enqueue = self._enqueued

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in MODES:
            raise ValueError(f"fake queue mode must be one of {', '.join(MODES)}, not {value!r}")
        self._mode = value

    # -- installation -----------------------------------------------------------

    def install(self) -> FakeQueue:
        self._previous = set_client(self.client)
        return self

    def uninstall(self) -> None:
        set_client(self._previous)

    def __enter__(self) -> FakeQueue:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    @contextmanager
    def inline(self) -> Iterator[FakeQueue]:
        """Inside the block, an enqueue runs its job at once; the previous mode is back afterwards."""
        with self._switch("inline"):
            yield self

    @contextmanager
    def manual(self) -> Iterator[FakeQueue]:
        """Inside the block, enqueues are only captured; the previous mode is back afterwards."""
        with self._switch("manual"):
            yield self

    @contextmanager
    def _switch(self, mode: Mode) -> Iterator[None]:
        previous, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = previous

    # -- inspection ---------------------------------------------------------------

    def all_enqueued(self, *, queue: str | None = None, job: type[J] | None = None) -> list[Enqueued[Any]]:
        """Every enqueue so far, oldest first, with its options; only one queue's or one job type's if asked.

        Jobs that have run are still listed (see `Enqueued.status`); `clear()` forgets them.
        """
        with self.backend.changed:
            log = list(self.backend.log)
        name = job.job_name() if job is not None else None
        return [
            self._entry(p, job) for p in log if (queue is None or p.queue == queue) and (name is None or p.name == name)
        ]

    def _entry(self, prepared: Prepared, job_type: type[Job] | None) -> Enqueued[Any]:
        envelope = decode(prepared.envelope)
        job_type = job_type or self.registry.resolve(prepared.name).job_type
        stored = self.backend.jobs.get(prepared.job_id)
        return Enqueued(
            job=job_type.model_validate(envelope.payload),
            job_id=prepared.job_id,
            name=prepared.name,
            queue=prepared.queue,
            priority=prepared.priority,
            enqueued_at=envelope.enqueued_at,
            scheduled_at=prepared.due_at,
            scheduled_for=envelope.scheduled_for(),
            status=stored.status if stored is not None else Status.UNKNOWN,
        )

    def enqueued(self, job_type: type[J]) -> list[J]:
        """Typed instances of every `job_type` enqueued so far, decoded from their stored JSON."""
        return [entry.job for entry in self.all_enqueued(job=job_type)]

    def _describe_all(self) -> str:
        entries = self.all_enqueued()
        if not entries:
            return "nothing was enqueued"
        return "enqueued:\n" + "\n".join(f"  {e.describe()}" for e in entries)

    def _matches(self, job_type: type[J], fields: dict[str, Any], criteria: Expect) -> list[Enqueued[J]]:
        unknown = set(fields) - set(job_type.model_fields)
        if unknown:
            raise AssertionError(f"{job_type.__qualname__} has no field(s) {', '.join(sorted(unknown))}")
        now = self.clock.now()
        found = []
        for entry in self.all_enqueued(job=job_type):
            data = entry.job.model_dump(mode="json")
            if criteria.matches(entry, now) and all(
                getattr(entry.job, k, object()) == v or data.get(k, object()) == v for k, v in fields.items()
            ):
                found.append(entry)
        return found

    def _expectation(self, job_type: type[Job], fields: dict[str, Any], criteria: Expect) -> str:
        text = f"{job_type.job_name()} with {fields}"
        options = criteria.describe()
        return f"{text} and {options}" if options else text

    def assert_enqueued(
        self,
        job_type: type[J],
        where: Mapping[str, Any] | None = None,
        /,
        count: int | None = None,
        *,
        options: Expect | Mapping[str, Any] | None = None,
        timeout: float = 0,
        **fields: Any,
    ) -> list[J]:
        """Assert a `job_type` with these field values (others ignored) was enqueued; return the matches.

        `options=Expect(queue=..., priority=..., job_id=..., delay=..., scheduled_at=...,
        scheduled_within=..., delta=...)` (or a dict of those) also checks how it was
        enqueued; `count=N` asks for exactly N matches. `timeout` waits up to that
        many seconds for a match, waking at each enqueue, for code that enqueues
        from another thread. A payload field called `count`, `options` or `timeout`
        goes in `where`: `assert_enqueued(Report, {"count": 3})`. On failure the
        message lists every enqueue with its options.
        """
        fields = {**(where or {}), **fields}
        criteria = _expect(options)

        def satisfied() -> list[Enqueued[J]] | None:
            found = self._matches(job_type, fields, criteria)
            return found if found and (count is None or len(found) == count) else None

        found = self._wait(satisfied, timeout)
        if found is None:
            found = self._matches(job_type, fields, criteria)
            want = f"{count} × " if count is not None else ""
            waited = f" after waiting {timeout:g}s" if timeout else ""
            raise AssertionError(
                f"expected {want}{self._expectation(job_type, fields, criteria)}, found {len(found)}{waited}; "
                f"{self._describe_all()}"
            )
        return [entry.job for entry in found]

    def _wait(self, check: Callable[[], list[Enqueued[J]] | None], timeout: float) -> list[Enqueued[J]] | None:
        """`check()` until it returns a list, waking on each enqueue, for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.backend.changed:
            while True:
                found = check()
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self.backend.changed.wait(remaining)

    async def aassert_enqueued(
        self, job_type: type[J], where: Mapping[str, Any] | None = None, /, *, timeout: float = 1.0, **keywords: Any
    ) -> list[J]:
        """`assert_enqueued` for async tests: waits up to `timeout` seconds without blocking the event loop,
        so a task on the same loop can make the enqueue. Takes the same keywords."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def woken() -> None:
            loop.call_soon_threadsafe(wake.set)

        stop = self.backend.listen(woken)
        deadline = loop.time() + timeout
        try:
            while True:
                wake.clear()
                try:
                    return self.assert_enqueued(job_type, where, **keywords)
                except AssertionError:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining)
        finally:
            stop()

    def refute_enqueued(
        self,
        job_type: type[Job],
        where: Mapping[str, Any] | None = None,
        /,
        *,
        options: Expect | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Assert no `job_type` with these field values (and `options`, as for `assert_enqueued`) was enqueued."""
        fields = {**(where or {}), **fields}
        criteria = _expect(options)
        found = self._matches(job_type, fields, criteria)
        if found:
            raise AssertionError(
                f"expected no {self._expectation(job_type, fields, criteria)}, found {len(found)}; "
                f"{self._describe_all()}"
            )

    def dead_letters(self) -> list[DeadLetter]:
        return self.backend.dead_letters.recent(limit=10_000)

    def clear(self, job: type[Job] | None = None, *, queue: str | None = None) -> int:
        """Forget the enqueued jobs, run or not: all of them, or one job type's, or one queue's.
        Dead letters and the clock are kept. Returns how many jobs were forgotten."""
        name = job.job_name() if job is not None else None
        return self.backend.remove(lambda p: (name is None or p.name == name) and (queue is None or p.queue == queue))

    # -- running ------------------------------------------------------------------

    def perform(
        self,
        job: Job | type[Job],
        payload: Mapping[str, Any] | None = None,
        /,
        *,
        attempt: int = 1,
        job_id: str = "test-job",
        **fields: Any,
    ) -> Any:
        """Run one handler now, as a worker would see it, and return its result as `handle.result()` would.

        `perform(WelcomeEmail, {"user_id": "u1"})` (or `perform(WelcomeEmail, user_id="u1")`, or
        `perform(WelcomeEmail(user_id="u1"))`): the payload goes through the JSON round trip of an
        enqueue; the return value through the one of a stored result, then is validated against
        `perform`'s return annotation. Either failing raises `PerformError` naming the job and the
        field. The job's timeout applies on the fake clock. Handler exceptions propagate; nothing
        is enqueued, retried or dead-lettered.
        """
        job_type = job if isinstance(job, type) else type(job)
        name = job_type.job_name()
        if isinstance(job, type):
            instance = self._validate(job_type, {**(payload or {}), **fields})
        elif payload is not None or fields:
            raise TypeError("pass a job instance, or a job class with its payload, not both")
        else:
            instance = job
        instance = self._round_trip(instance)
        options = self.registry.ensure(job_type)
        ctx = make_context(instance, attempt=attempt, resources=self.resources, options=options, job_id=job_id)
        ctx.enqueued_at = self.clock.now()
        with self.clock.timeout_guard(options.timeout.total_seconds()):
            value = call_perform(instance, ctx)
        try:
            stored = json.loads(result_json(to_json_value(value)))
        except (TypeError, ValueError) as exc:
            raise PerformError(
                f"{name}: perform returned {type(value).__name__}, which is not JSON-serialisable: {exc} "
                "(a worker would dead-letter the job as bad-result)"
            ) from exc
        adapter = job_type.result_adapter()
        if adapter is None:
            return stored
        try:
            return adapter.validate_python(stored)
        except ValidationError as exc:
            declared = typing.get_type_hints(job_type.perform).get("return")
            shown = getattr(declared, "__name__", None) or repr(declared)
            raise PerformError(
                f"{name}: perform's result does not match its return annotation ({shown}): {_field_errors(exc)}"
            ) from exc

    @staticmethod
    def _validate(job_type: type[J], data: Mapping[str, Any]) -> J:
        try:
            return job_type.model_validate(data)
        except ValidationError as exc:
            raise PerformError(f"{job_type.job_name()}: invalid payload: {_field_errors(exc)}") from exc

    @staticmethod
    def _round_trip(instance: J) -> J:
        """The job as a worker decodes it: serialised as the client does it, then validated from JSON."""
        job_type = type(instance)
        name = job_type.job_name()
        try:
            text = instance.__pydantic_serializer__.to_json(instance, by_alias=True, exclude_computed_fields=True)
        except PydanticSerializationError as exc:
            raise PerformError(f"{name}: the payload cannot be written as JSON: {exc}") from exc
        try:
            return job_type.model_validate_json(text)
        except ValidationError as exc:
            raise PerformError(
                f"{name}: the payload does not survive the JSON round trip of an enqueue: {_field_errors(exc)}"
            ) from exc

    def _runtime(self) -> Runtime:
        def progress(job_id: str, value: Any) -> None:
            stored = self.backend.jobs.get(job_id)
            if stored is not None:
                stored.progress = value

        def log(job_id: str, line: str) -> None:
            stored = self.backend.jobs.get(job_id)
            if stored is not None:
                stored.log.append(line)

        limiter = MemoryRateLimiter(clock=lambda: self.clock.now().timestamp())
        return Runtime(
            self.registry,
            self.backend.dead_letters,
            self.resources,
            progress,
            limiter=limiter,
            report_log=log,
            guard=self.clock.timeout_guard,
        )

    def drain(
        self,
        *,
        queue: str | Iterable[str] | None = None,
        recursive: bool = True,
        until: datetime | timedelta | None = None,
        with_scheduled: bool = True,
        max_jobs: int = 10_000,
        raise_on_failure: bool = True,
    ) -> DrainResult:
        """Run pending jobs, and by default the jobs they enqueue, until none is left in scope.

        Scope: `queue` (a name or several); `recursive=False` runs only the jobs
        pending when `drain` was called (their retries included); `until` (a
        moment, or a time from now) runs only jobs due by then, and
        `with_scheduled=False` only jobs due now. Retries wait out their backoff
        on the fake clock; delayed jobs run when the clock reaches them. Once a
        job's attempts are spent (or it raises Unrecoverable) its exception is
        raised here, unless `raise_on_failure=False`: then it is dead-lettered
        and counted. More than `max_jobs` runs raise `DrainLimitReached`.
        """
        where = self._scope(queue, recursive, until, with_scheduled)
        runtime = self._runtime()
        succeeded = failed = retried = runs = 0
        while True:
            stored = self.backend.next_job(where)
            if stored is None:
                return DrainResult(succeeded, failed, retried)
            if runs >= max_jobs:
                left = [j for j in self.backend.pending() if where(j)]
                names = ", ".join(sorted({j.prepared.name for j in left}))
                raise DrainLimitReached(
                    f"drain stopped after {max_jobs} jobs (max_jobs) with {len(left)} still pending ({names}): "
                    "raise max_jobs, or check whether jobs keep enqueueing each other"
                )
            runs += 1
            outcome = self._run(stored, runtime)
            if isinstance(outcome, Succeeded):
                succeeded += 1
            elif isinstance(outcome, Retry):
                retried += 1
            elif isinstance(outcome, DeadLettered):
                failed += 1
                if raise_on_failure:
                    self._raise(stored, outcome)

    def _scope(
        self,
        queue: str | Iterable[str] | None,
        recursive: bool,
        until: datetime | timedelta | None,
        with_scheduled: bool,
    ) -> Callable[[StoredJob], bool]:
        queues = None if queue is None else {queue} if isinstance(queue, str) else set(queue)
        if not with_scheduled:
            if until is not None:
                raise ValueError("give until= or with_scheduled=False, not both")
            until = self.clock.now()
        limit = self.clock.now() + until if isinstance(until, timedelta) else until
        snapshot = None if recursive else {j.prepared.job_id for j in self.backend.pending()}

        def where(job: StoredJob) -> bool:
            return (
                (queues is None or job.prepared.queue in queues)
                and (snapshot is None or job.prepared.job_id in snapshot)
                and (limit is None or job.due_at is None or job.due_at <= limit)
            )

        return where

    def perform_one(self, queue: str | None = None, *, raise_on_failure: bool = True) -> JobHandle:
        """Run one attempt of the job a worker would take next (of `queue`, if given) and return its handle.

        The clock moves to the job's due time if that is later. A failed attempt that will be retried
        leaves the job scheduled; a dead-lettered one raises its exception unless `raise_on_failure=False`.
        """
        stored = self.backend.next_job(None if queue is None else lambda j: j.prepared.queue == queue)
        if stored is None:
            where = f" on queue {queue!r}" if queue is not None else ""
            raise AssertionError(f"perform_one: no job is pending{where}; {self._describe_all()}")
        outcome = self._run(stored, self._runtime())
        if isinstance(outcome, DeadLettered) and raise_on_failure:
            self._raise(stored, outcome)
        job_type = self.registry.resolve(stored.prepared.name).job_type
        return JobHandle(self.client, stored.prepared.job_id, job_type)

    @staticmethod
    def _raise(stored: StoredJob, outcome: DeadLettered) -> typing.NoReturn:
        if outcome.exception is not None:
            raise outcome.exception
        raise AssertionError(f"job {stored.prepared.job_id} dead-lettered: {outcome.record.error}")

    def _run(self, stored: StoredJob, runtime: Runtime) -> Outcome:
        """One attempt, through the worker's execution code, applied to the stored job as a worker would."""
        if stored.due_at is not None:
            self.clock.move_to(stored.due_at)
        stored.status = Status.RUNNING
        stored.attempts_run += 1
        outcome = execute(stored.envelope, runtime, job_id=stored.prepared.job_id, queue=stored.prepared.queue)
        if isinstance(outcome, Succeeded):
            # Stored as the worker stores it: JSON text, read back by handle.result().
            stored.status, stored.result = Status.SUCCEEDED, json.loads(result_json(outcome.value))
        elif isinstance(outcome, (Retry, Aborted)):
            delay = outcome.delay if isinstance(outcome, Retry) else 0.0
            stored.envelope = outcome.envelope.encode()
            stored.due_at = self.clock.now() + timedelta(seconds=delay)
            stored.status = Status.SCHEDULED if delay else Status.QUEUED
            stored.history.append(outcome.error if isinstance(outcome, Retry) else "aborted")
        else:
            stored.status, stored.error = Status.FAILED, outcome.record.error
        if '"workflow":' in stored.envelope:  # a workflow's step: its run releases what waits on it
            from .workflows.fake import report

            report(self.client, stored, outcome)
        return outcome

    # -- inline mode -----------------------------------------------------------------

    def _enqueued(self, jobs: list[StoredJob]) -> None:
        if self.mode != "inline":
            return
        for stored in jobs:
            if stored.status is Status.QUEUED:  # due now; a delayed job waits for drain()
                self._run_inline(stored)

    def _run_inline(self, stored: StoredJob) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth >= MAX_INLINE_DEPTH:
            raise AssertionError(
                f"inline jobs nested {MAX_INLINE_DEPTH} deep ({stored.prepared.name} enqueued from a job run "
                "inline): do jobs keep enqueueing each other?"
            )
        self._local.depth = depth + 1
        try:
            runtime = self._runtime()
            while stored.status in (Status.QUEUED, Status.SCHEDULED):
                outcome = self._run(stored, runtime)
                if isinstance(outcome, DeadLettered) and self.raise_on_failure:
                    self._raise(stored, outcome)
        finally:
            self._local.depth = depth

    # -- repeats -------------------------------------------------------------------------

    def tick(self, schedule: str | type[Job], at: datetime | None = None) -> JobHandle | None:
        """Fire one tick of a repeat, as the scheduler would at that moment, on the fake clock.

        `schedule` is a schedule's name (`"usage.aggregate-daily-usage"`, from
        `specs/schedules.yaml` or a job class's own schedule) or a job class
        declared with `schedule=`/`every=`. `at` must be one of its ticks
        (default: the next one); the clock moves there if it is behind. The job
        is enqueued under the tick's id with `ctx.scheduled_for == at` (and runs
        at once in inline mode). Returns None when the scheduler would not fire
        it: the tick was fired already, or the previous run is still pending
        and the schedule's `overlap` is "skip".
        """
        scheduled = self._scheduled(schedule)
        if not scheduled.schedule.enabled:
            raise ValueError(f"schedule {scheduled.name!r} is disabled: a scheduler never fires it")
        if at is None:
            at = scheduled.schedule.next_after(self.clock.now())
        elif at.tzinfo is None:
            raise ValueError("tick(at=...) needs a timezone-aware datetime")
        elif scheduled.schedule.next_after(at - timedelta(microseconds=1)) != at:
            following = scheduled.schedule.next_after(at)
            raise ValueError(
                f"schedule {scheduled.name!r} ({scheduled.schedule.describe()}) has no tick at {at.isoformat()}; "
                f"its next tick after that is {following.isoformat()}"
            )
        self.clock.move_to(at)
        return Repeater(self.client, self._repeats).fire(scheduled, at, self.clock.now())

    def _scheduled(self, schedule: str | type[Job]) -> ScheduledJob:
        if isinstance(schedule, type):
            options = self.registry.ensure(schedule)
            if options.schedule is None:
                raise ValueError(f"{schedule.__qualname__} declares no schedule (schedule= or every=)")
            found = self.registry.schedules.get(schedule.job_name())
            if found is not None:
                return found
            source = f"class {schedule.__module__}.{schedule.__qualname__}"
            return ScheduledJob(schedule.job_name(), schedule, {}, options.schedule, source)
        found = self.registry.schedules.get(schedule)
        if found is not None:
            return found
        spec = self.registry.specs.schedules.get(schedule)
        if spec is None:
            known = sorted({*self.registry.schedules, *self.registry.specs.schedules}) or ["none"]
            raise ValueError(f"no schedule named {schedule!r} (known: {', '.join(known)})")
        job_type = self._job_type_named(spec.job)
        when = Schedule.model_validate(spec.model_dump(exclude={"job", "payload"}))
        where = self.registry.specs.sources.get(f"schedules.{schedule}", "specs")
        return ScheduledJob(schedule, job_type, dict(spec.payload), when, where)

    def _job_type_named(self, name: str) -> type[Job]:
        """The job type registered as `name`; a lenient registry looks for it in the project's job package."""
        try:
            return self.registry.resolve(name).job_type
        except UnknownJob:
            if self.registry.strict:
                raise
        package = Settings().jobs
        for job_type in discover(package):
            if job_type.job_name() == name:
                self.registry.ensure(job_type)
                return job_type
        raise UnknownJob(f"no job type named {name!r}, neither registered nor in the job package {package!r}")


def project_registry(settings: Settings | None = None) -> Registry:
    """A lenient registry carrying the project's spec overrides (if its specs directory is found).

    Jobs are added as tests enqueue them, on any queue; attempts, backoff and
    the rest come out as they would in a worker.
    """
    settings = settings or Settings()
    specs = load_specs(settings.specs) if settings.specs.is_dir() else None
    return Registry(specs=specs, strict=False)


# -- the pytest plugin --------------------------------------------------------------------

MARKER = "forgejobs"
_MARKER_OPTIONS = {"mode", "start", "raise_on_failure"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(mode='manual'|'inline', start=datetime, raise_on_failure=True): "
        "how the fake_queue fixture is set up for this test",
    )


def _fixture_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keywords only, e.g. mode='inline'")
        options.update(marker.kwargs)
    param = getattr(request, "param", None)  # @pytest.mark.parametrize("fake_queue", [...], indirect=True)
    if isinstance(param, str):
        options["mode"] = param
    elif isinstance(param, Mapping):
        options.update(param)
    unknown = set(options) - _MARKER_OPTIONS
    if unknown:
        raise pytest.UsageError(
            f"fake_queue options: unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(_MARKER_OPTIONS))}"
        )
    if "mode" in options and options["mode"] not in MODES:
        raise pytest.UsageError(f"fake_queue mode must be one of {', '.join(MODES)}, not {options['mode']!r}")
    return options


@pytest.fixture
def fake_queue(request: pytest.FixtureRequest) -> Iterator[FakeQueue]:
    """A FakeQueue installed as the current client for the duration of the test.

    It applies the overrides in the project's `specs/` (FORGEJOBS_SPECS) when
    that directory exists. `@pytest.mark.forgejobs(mode="inline")` (or an
    indirect parametrisation of `fake_queue` with a mode or a dict of options)
    sets it up differently for one test.
    """
    options = _fixture_options(request)
    with FakeQueue(registry=project_registry(), **cast(Any, options)) as queue:
        yield queue
