"""The test kit: a fake queue that needs no Redis, and a pytest plugin.

    def test_signup_sends_welcome(fake_queue):
        signup(email="a@b.c")
        fake_queue.assert_enqueued(WelcomeEmail, email="a@b.c")
        fake_queue.drain()

Every enqueue made while the fixture is active goes to an in-memory backend
through the same client as production: validation, JSON round trip and the
size guard all apply. `drain()` runs jobs through the same execution code as
a worker, on a fake clock: backoff and delays are honoured without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from .backends.fake import FakeBackend, FakeClock, StoredJob
from .client import Client, set_client
from .context import Context
from .deadletter import DeadLetter
from .envelope import decode
from .execution import Aborted, DeadLettered, Retry, Runtime, Succeeded, call_perform, execute
from .job import Job
from .options import JobOptions
from .ratelimit import MemoryRateLimiter
from .registry import Registry
from .settings import Settings
from .specs import load_specs
from .status import Status

J = TypeVar("J", bound=Job)


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


class FakeQueue:
    """Captures enqueues in memory; runs them on demand on a fake clock."""

    def __init__(self, registry: Registry | None = None, resources: Any = None) -> None:
        self.clock = FakeClock()
        self.backend = FakeBackend(self.clock)
        self.registry = registry if registry is not None else Registry(strict=False)
        self.client = Client(self.backend, self.registry)
        self.resources = resources
        self._previous: Client | None = None

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

    # -- inspection ---------------------------------------------------------------

    def enqueued(self, job_type: type[J]) -> list[J]:
        """Typed instances of every `job_type` enqueued so far, decoded from their stored JSON."""
        name = job_type.job_name()
        return [job_type.model_validate(decode(p.envelope).payload) for p in self.backend.log if p.name == name]

    def _describe_all(self) -> str:
        if not self.backend.log:
            return "nothing was enqueued"
        lines = [f"  {p.name} {decode(p.envelope).payload}" for p in self.backend.log]
        return "enqueued:\n" + "\n".join(lines)

    def _matches(self, job_type: type[Job], fields: dict[str, Any]) -> list[Job]:
        unknown = set(fields) - set(job_type.model_fields)
        if unknown:
            raise AssertionError(f"{job_type.__qualname__} has no field(s) {', '.join(sorted(unknown))}")
        found = []
        for job in self.enqueued(job_type):
            data = job.model_dump(mode="json")
            if all(getattr(job, k, object()) == v or data.get(k, object()) == v for k, v in fields.items()):
                found.append(job)
        return found

    def assert_enqueued(
        self, job_type: type[J], where: Mapping[str, Any] | None = None, /, count: int | None = None, **fields: Any
    ) -> list[J]:
        """Assert a `job_type` with these field values (others ignored) was enqueued; return the matches.

        `count=N` asks for exactly N matches. A payload field whose name clashes
        with this method's own arguments (`count`) goes in `where`:
        `assert_enqueued(Report, {"count": 3})`.
        """
        fields = {**(where or {}), **fields}
        found = self._matches(job_type, fields)
        if not found or (count is not None and len(found) != count):
            want = f"{count} × " if count is not None else ""
            raise AssertionError(
                f"expected {want}{job_type.job_name()} with {fields}, found {len(found)}; {self._describe_all()}"
            )
        return found  # type: ignore[return-value]

    def refute_enqueued(self, job_type: type[Job], where: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Assert no `job_type` with these field values was enqueued."""
        fields = {**(where or {}), **fields}
        found = self._matches(job_type, fields)
        if found:
            raise AssertionError(f"expected no {job_type.job_name()} with {fields}; {self._describe_all()}")

    def dead_letters(self) -> list[DeadLetter]:
        return self.backend.dead_letters.recent(limit=10_000)

    def clear(self) -> None:
        """Forget everything enqueued so far."""
        self.backend.log.clear()
        self.backend.jobs.clear()

    # -- running ------------------------------------------------------------------

    def perform(self, job: Job, *, attempt: int = 1) -> Any:
        """Run one handler now with a test Context and return its result. Exceptions propagate."""
        options = self.registry.ensure(type(job))
        ctx = make_context(job, attempt=attempt, resources=self.resources, options=options)
        return call_perform(job, ctx)

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
            self.registry, self.backend.dead_letters, self.resources, progress, limiter=limiter, report_log=log
        )

    def drain(self, *, raise_on_failure: bool = True, max_jobs: int = 10_000) -> DrainResult:
        """Run every enqueued job, and the jobs they enqueue, until none is pending.

        Retries wait out their backoff on the fake clock (no sleeping); delayed
        jobs run when the clock reaches them. Once a job's attempts are spent
        (or it raises Unrecoverable) its exception is raised here, unless
        `raise_on_failure=False`, in which case it is dead-lettered and counted.
        """
        runtime = self._runtime()
        succeeded = failed = retried = 0
        for _ in range(max_jobs):
            stored = self.backend.next_job()
            if stored is None:
                return DrainResult(succeeded, failed, retried)
            if stored.due_at is not None:
                self.clock.move_to(stored.due_at)
            outcome = self._run(stored, runtime)
            if isinstance(outcome, Succeeded):
                succeeded += 1
            elif isinstance(outcome, Retry):
                retried += 1
            elif isinstance(outcome, DeadLettered):
                failed += 1
                if raise_on_failure:
                    if outcome.exception is not None:
                        raise outcome.exception
                    raise AssertionError(f"job {stored.prepared.job_id} dead-lettered: {outcome.record.error}")
        raise AssertionError(f"drain stopped after {max_jobs} jobs: do jobs keep enqueueing each other?")

    def _run(self, stored: StoredJob, runtime: Runtime) -> Any:
        stored.status = Status.RUNNING
        stored.attempts_run += 1
        outcome = execute(stored.envelope, runtime, job_id=stored.prepared.job_id, queue=stored.prepared.queue)
        if isinstance(outcome, Succeeded):
            stored.status, stored.result = Status.SUCCEEDED, outcome.value
        elif isinstance(outcome, (Retry, Aborted)):
            delay = outcome.delay if isinstance(outcome, Retry) else 0.0
            stored.envelope = outcome.envelope.encode()
            stored.due_at = self.clock.now() + timedelta(seconds=delay)
            stored.status = Status.SCHEDULED if delay else Status.QUEUED
            stored.history.append(outcome.error if isinstance(outcome, Retry) else "aborted")
        else:
            stored.status, stored.error = Status.FAILED, outcome.record.error
        return outcome


def project_registry(settings: Settings | None = None) -> Registry:
    """A lenient registry carrying the project's spec overrides (if its specs directory is found).

    Jobs are added as tests enqueue them, on any queue; attempts, backoff and
    the rest come out as they would in a worker.
    """
    settings = settings or Settings()
    specs = load_specs(settings.specs) if settings.specs.is_dir() else None
    return Registry(specs=specs, strict=False)


@pytest.fixture
def fake_queue() -> Iterator[FakeQueue]:
    """A FakeQueue installed as the current client for the duration of the test.

    It applies the overrides in the project's `specs/` (FORGEJOBS_SPECS) when that directory exists.
    """
    with FakeQueue(registry=project_registry()) as queue:
        yield queue
