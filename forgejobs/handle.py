"""`JobHandle`: what `enqueue` returns. Reads the job's state through the client's backend.

A handle is generic in the job's result type: `WelcomeEmail.enqueue(...)` returns a
`JobHandle[EmailOutcome]` because `WelcomeEmail.perform` is annotated `-> EmailOutcome`, so
`handle.result()` is typed for a type checker with no annotation in user code (`forgejobs.job`
infers it). A bare `JobHandle` means `JobHandle[Any]`.

Every reading method has an asyncio twin (`arefresh`, `astatus`, `aprogress`, `alogs`, `aresult`)
that awaits instead of blocking; they work on any handle, whichever client made it
(`forgejobs.aio` says how each client is read).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, cast

from typing_extensions import TypeVar

from .backends.base import Backend, JobState
from .errors import JobFailed, ResultTimeout
from .status import TERMINAL, Status

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .job import Job, _Performs

R_co = TypeVar("R_co", covariant=True, default=Any)


class JobHandle(Generic[R_co]):
    """A reference to one enqueued job; `R_co` is what `perform` returns."""

    def __init__(
        self,
        client: Client | AsyncClient,
        job_id: str,
        job_type: type[_Performs[R_co]] | None = None,
        *,
        existing: bool = False,
    ) -> None:
        self.client = client
        self.id = job_id
        self.job_type: type[Job] | None = cast("type[Job] | None", job_type)
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

    @property
    def _queue(self) -> str | None:
        return self.job_type.job_options().queue if self.job_type is not None else None

    def _backend(self) -> Backend:
        """The blocking backend: the client's own, or for an `AsyncClient` its sync sibling's."""
        from .client import Client

        return self.client.backend if isinstance(self.client, Client) else self.client.sync.backend

    # -- blocking ------------------------------------------------------------------

    def refresh(self) -> JobState:
        """Read the job's current state from the backend."""
        self._state = self._backend().state(self.id, self._queue)
        return self._state

    def status(self) -> Status:
        return self.refresh().status

    def progress(self) -> Any:
        """The last value the job passed to `ctx.progress()`, or None."""
        return self.refresh().progress

    def logs(self) -> list[str]:
        """Lines the job wrote with `ctx.log()`, oldest first (the last 1000)."""
        return self._backend().logs(self.id)

    def result(self, timeout: float = 0) -> R_co:
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
                return self._outcome(state)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(f"job {self.id} is still {state.status.value} after {timeout:g}s")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)

    # -- asyncio -------------------------------------------------------------------

    async def arefresh(self) -> JobState:
        """`refresh()` for asyncio: reads through redis.asyncio (or in memory, on the fake queue)."""
        from .aio import read_state

        self._state = await read_state(self.client, self.id, self._queue)
        return self._state

    async def astatus(self) -> Status:
        return (await self.arefresh()).status

    async def aprogress(self) -> Any:
        return (await self.arefresh()).progress

    async def alogs(self) -> list[str]:
        from .aio import read_logs

        return await read_logs(self.client, self.id)

    async def aresult(self, timeout: float = 0) -> R_co:
        """`result()` for asyncio: waits with `asyncio.sleep`, so other tasks run meanwhile."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            state = await self.arefresh()
            if state.status in TERMINAL:
                return self._outcome(state)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(f"job {self.id} is still {state.status.value} after {timeout:g}s")
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)

    def _outcome(self, state: JobState) -> R_co:
        if state.status is not Status.SUCCEEDED:
            raise JobFailed(self.id, state.error or state.status.value)
        adapter = self.job_type.result_adapter() if self.job_type else None
        return cast(R_co, adapter.validate_python(state.result) if adapter is not None else state.result)
