"""`JobHandle`: what `enqueue` returns. Reads the job's state through the client's backend."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .backends.base import JobState
from .errors import JobFailed, ResultTimeout
from .status import TERMINAL, Status

if TYPE_CHECKING:
    from .client import Client
    from .job import Job


class JobHandle:
    """A reference to one enqueued job."""

    def __init__(
        self, client: Client, job_id: str, job_type: type[Job] | None = None, *, existing: bool = False
    ) -> None:
        self.client = client
        self.id = job_id
        self.job_type = job_type
        self.existing = existing
        """True when `job_id` named a job that already existed, so nothing new was enqueued."""
        self._state: JobState | None = None

    def __repr__(self) -> str:
        name = self.job_type.job_name() if self.job_type else "?"
        return f"<JobHandle {name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def refresh(self) -> JobState:
        """Read the job's current state from the backend."""
        queue = self.job_type.job_options().queue if self.job_type is not None else None
        self._state = self.client.backend.state(self.id, queue)
        return self._state

    def status(self) -> Status:
        return self.refresh().status

    def progress(self) -> Any:
        """The last value the job passed to `ctx.progress()`, or None."""
        return self.refresh().progress

    def logs(self) -> list[str]:
        """Lines the job wrote with `ctx.log()`, oldest first (the last 1000)."""
        return self.client.backend.logs(self.id)

    def result(self, timeout: float = 0) -> Any:
        """The job's result, waiting up to `timeout` seconds for it to finish.

        Validated against `perform`'s declared return type when there is one.
        Raises `JobFailed` if the job failed for good, `ResultTimeout` if it is
        still pending when the time is up.
        """
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            state = self.refresh()
            if state.status in TERMINAL:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(f"job {self.id} is still {state.status.value} after {timeout:g}s")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)
        if state.status is not Status.SUCCEEDED:
            raise JobFailed(self.id, state.error or state.status.value)
        adapter = self.job_type.result_adapter() if self.job_type else None
        return adapter.validate_python(state.result) if adapter is not None else state.result
