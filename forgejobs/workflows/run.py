"""Starting a workflow and watching it: `start(...)` and the `WorkflowRun` handle it returns.

The run goes where the current client's jobs go: on Redis (`RedisStore`, released by the workers), or on
the fake queue (`MemoryStore`, released by `fake_queue.drain()` as it runs each step).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ForgeJobsError
from .engine import Engine, job_id, output_of
from .plan import Plan
from .store import COMPENSATING, RUNNING, STOPPING, TERMINAL, MemoryStore, RunStore

if TYPE_CHECKING:
    from ..client import Client

_memory: weakref.WeakKeyDictionary[Any, MemoryStore] = weakref.WeakKeyDictionary()


def store_for(client: Client) -> RunStore:
    from ..backends.fake import FakeBackend

    backend = client.backend
    if isinstance(backend, FakeBackend):
        if backend not in _memory:
            _memory[backend] = MemoryStore()
        return _memory[backend]
    from .redisstore import RedisStore

    return RedisStore.for_backend(backend)


def engine_for(client: Client) -> Engine:
    """The engine of `client`'s backend: the fake queue's in-memory runs, or Redis."""
    from ..backends.fake import FakeBackend

    backend = client.backend
    store = store_for(client)
    if isinstance(backend, FakeBackend):
        fake = backend

        def cancel_fake(job: str) -> bool:
            from ..status import Status

            stored = fake.jobs.get(job)
            if stored is None or stored.status in (Status.QUEUED, Status.SCHEDULED):
                if stored is not None:
                    stored.status = Status.CANCELLED
                return True
            return False

        return Engine(client, store, cancel_fake, now=lambda: int(fake.now().timestamp() * 1000))
    from ..errors import NoSuchJob
    from ..runtime.cancel import cancel

    def cancel_redis(job: str) -> bool:
        try:
            return cancel(backend, client.registry, job).outcome == "cancelled"
        except NoSuchJob:
            return True  # never stored (its release was cut short): it will not come

    stream = getattr(backend, "events", None)
    return Engine(client, store, cancel_redis, events=stream.append if stream is not None else None)


def start(plan: Plan, data: dict[str, Any], *, key: str | None = None, client: Client | None = None) -> WorkflowRun:
    """Start `plan` with `data` as its input (validated by the plan's input model)."""
    from ..client import current_client

    client = client or current_client()
    engine = engine_for(client)
    run_id, created = engine.start(plan, data, key)
    return WorkflowRun(engine, run_id, existing=not created)


def start_workflow(name: str, *, key: str | None = None, client: Client | None = None, **fields: Any) -> WorkflowRun:
    """Start the workflow named `name` (a YAML one, or a `Workflow` class by its name) with `fields` as input."""
    from ..client import current_client

    client = client or current_client()
    return start(engine_for(client).plan(name), fields, key=key, client=client)


def run(run_id: str, client: Client | None = None) -> WorkflowRun:
    """The handle of an existing run (`NoSuchRun` if unknown)."""
    from ..client import current_client

    handle = WorkflowRun(engine_for(client or current_client()), run_id)
    handle.refresh()
    return handle


class NoSuchRun(ForgeJobsError, LookupError):
    """No workflow run with that id (never started, or expired)."""


@dataclass
class StepState:
    """One step of a run: its status, how many instances it fanned out to and how many reported."""

    name: str
    job: str
    status: str  # waiting, ready, running, done, failed, cancelled (never started: the run ended first)
    instances: int | None  # None until it was released
    finished: int  # instances that reported an outcome (done, failed or cancelled)
    failed: int
    after: tuple[str, ...]
    job_ids: list[str] = field(default_factory=list)


class WorkflowRun:
    """A handle on one run: `status()`, `steps()`, `outputs()`, `wait()`, `cancel()`."""

    def __init__(self, engine: Engine, run_id: str, *, existing: bool = False) -> None:
        self.engine = engine
        self.id = run_id
        self.existing = existing
        """True when `start` found a run already started under the same key."""
        self._data: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"WorkflowRun({self.id!r}, {self._data.get('wf', '?')}, {self._data.get('st', '?')})"

    def refresh(self) -> dict[str, str]:
        data = self.engine.store.read(self.id)
        if data is None:
            raise NoSuchRun(f"no workflow run {self.id!r}")
        self._data = data
        return data

    @property
    def name(self) -> str:
        return (self._data or self.refresh())["wf"]

    @property
    def plan(self) -> Plan:
        return self.engine.plan(self.name)

    def _field(self, name: str) -> str | None:
        found = self.engine.store.fields(self.id, name, "wf")
        if found is None:
            raise NoSuchRun(f"no workflow run {self.id!r}")
        return found.get(name)

    def status(self) -> str:
        """running, stopping (ended, waiting for running steps to report), compensating, then succeeded,
        failed, cancelled or timed_out."""
        return self._field("st") or "?"

    def error(self) -> str | None:
        """Why the run stopped: the step, instance and error that failed it, "cancelled", or the timeout."""
        return self._field("err") or None

    def input(self) -> dict[str, Any]:
        import json

        value = json.loads(self.refresh()["in"])
        assert isinstance(value, dict)
        return value

    def steps(self) -> dict[str, StepState]:
        data = self.refresh()
        ended = data["st"] not in (RUNNING, STOPPING, COMPENSATING)
        states: dict[str, StepState] = {}
        for step in self.plan.steps.values():
            count = data.get(f"n:{step.name}")
            n = int(count) if count is not None else None
            marks = [data.get(f"d:{step.name}:{i}") for i in range(n or 0)]
            finished = sum(1 for m in marks if m)
            failed = sum(1 for m in marks if m == "failed")
            status = data.get(f"ss:{step.name}", "waiting")
            if status == "running" and failed and step.on_failure != "continue":
                status = "failed"
            elif ended and status != "done":
                status = "failed" if failed else "cancelled"
            ids = [job_id(self.id, step.name, i) for i in range(n or 0)]
            states[step.name] = StepState(step.name, step.job, status, n, finished, failed, step.after, ids)
        return states

    def output(self, step: str) -> Any:
        """A finished step's output: the job's result as JSON data (a list for a `for_each` step; None for
        an instance that failed under `on_failure: continue`)."""
        data = self.refresh()
        plan_step = self.plan.steps[step]
        if plan_step.for_each is not None:
            return [output_of(data, step, i) for i in range(int(data.get(f"n:{step}", "0")))]
        return output_of(data, step, 0)

    def outputs(self) -> dict[str, Any]:
        """Every step's output so far (steps that have not finished are left out)."""
        return {name: self.output(name) for name, state in self.steps().items() if state.status == "done"}

    def errors(self, step: str) -> dict[int, str]:
        """The errors of a step's instances that failed or were cancelled, by instance index."""
        data = self.refresh()
        count = int(data.get(f"n:{step}", "0") or 0)
        return {i: data[f"e:{step}:{i}"] for i in range(count) if f"e:{step}:{i}" in data}

    def compensations(self) -> list[tuple[str, str]]:
        """The compensations run (or to run), in order: (step:instance, outcome or "pending")."""
        data = self.refresh()
        return [(data[f"c:{k}"], data.get(f"d:~{k}:0", "pending")) for k in range(int(data.get("nc", "0")))]

    def done(self) -> bool:
        return self.status() in TERMINAL

    def wait(self, timeout: float = 60.0, poll: float = 0.05) -> str:
        """Poll until the run has ended; returns its status (raises TimeoutError after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflow run {self.id} still {status} after {timeout}s")
            time.sleep(poll)

    def cancel(self) -> bool:
        """Cancel the run: steps not started never start, running step jobs are asked to stop, and the
        compensations of completed steps run. False if the run had already ended."""
        return self.engine.stop(self.id, "cancelled", "cancelled")
