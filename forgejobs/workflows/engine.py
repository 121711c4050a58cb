"""The part of running a workflow that needs the plan: building each step's payload from the run's stored
input and outputs, turning released steps into jobs, and cancelling what a stopped run leaves behind.

Every state change goes through the store's atomic steps (`store.py`, `workflow.lua`); this module only
reads the run and enqueues. Each step instance is a job with a fixed id (`wf-<run>-<step>-<i>`), so a
release repeated by a recovery pass stores nothing twice, and each instance's outcome is recorded once (the
`d:` marker), so a repeated report releases nothing twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import PayloadError
from ..events import Event, EventKind
from ..options import EnqueueOptions
from .plan import Binding, Plan, StepPlan, WorkflowError
from .store import COMPENSATING, RUNNING, STOPPING, RunStore

if TYPE_CHECKING:
    from ..backends.base import Prepared
    from ..client import Client

log = logging.getLogger("forgejobs.workflows")

TAG = "workflow"
"""The envelope option that names a step job's run, step and instance: `<run>|<step>|<i>`."""


def run_id_for(name: str, key: str | None) -> str:
    """A run's id: fixed by (workflow, key) when a key is given, so a second start finds the first run."""
    if key is None:
        return secrets.token_hex(12)
    return hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:24]


def job_id(run_id: str, step: str, index: int) -> str:
    if step.startswith("~"):
        return f"wf-{run_id}-c{step[1:]}"
    return f"wf-{run_id}-{step}-{index}"


def parse_tag(tag: str) -> tuple[str, str, int]:
    run_id, step, index = tag.split("|")
    return run_id, step, int(index)


def _walk(value: Any, names: list[str]) -> Any:
    for name in names:
        value = value.get(name) if isinstance(value, dict) else None
    return value


def output_of(run: dict[str, str], step: str, index: int) -> Any:
    """One instance's output as stored (None when it has none: failed and continued, or not finished)."""
    raw = run.get(f"o:{step}:{index}")
    return json.loads(raw) if raw is not None and run.get(f"d:{step}:{index}") == "done" else None


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc).splitlines()[0]


class Bound:
    """A run's stored values as references read them, each parsed once (a release of a 2,000-wide fan-out
    reads the input's list once, not once per instance)."""

    def __init__(self, plan: Plan, run: dict[str, str]) -> None:
        self.plan = plan
        self.run = run
        self._input: Any = None
        self._items: dict[str, Any] = {}
        self._outputs: dict[tuple[str, int], Any] = {}

    def output(self, step: str, index: int) -> Any:
        key = (step, index)
        if key not in self._outputs:
            self._outputs[key] = output_of(self.run, step, index)
        return self._outputs[key]

    def items(self, step: StepPlan) -> Any:
        assert step.for_each is not None
        if step.name not in self._items:
            self._items[step.name] = self.resolve(step.for_each, step, 0)
        return self._items[step.name]

    def resolve(self, ref: str, step: StepPlan, index: int, *, own: bool = False) -> Any:
        """The value of a reference in one instance of `step` (`own`: a compensation reading its step's
        output)."""
        parts = ref.split(".")
        if parts[0] == "input":
            if self._input is None:
                self._input = json.loads(self.run["in"])
            return _walk(self._input, parts[1:])
        if parts[0] == "item":
            return _walk(self.items(step)[index], parts[1:])
        other = parts[1]
        if own and other == step.name:
            return _walk(self.output(other, index), parts[3:])
        if self.plan.steps[other].for_each is not None:
            count = int(self.run.get(f"n:{other}", "0"))
            return [_walk(self.output(other, i), parts[3:]) for i in range(count)]
        return _walk(self.output(other, 0), parts[3:])

    def payload(self, step: StepPlan, index: int, inputs: dict[str, Binding], *, own: bool = False) -> dict[str, Any]:
        """The payload of one instance of `step` (or of its compensation: `inputs`, `own`)."""
        return {
            name: (b.value if b.ref is None else self.resolve(b.ref, step, index, own=own))
            for name, b in inputs.items()
        }


class Engine:
    """Runs workflows through one client (its registry's plans, its backend's queues) and one store."""

    def __init__(
        self,
        client: Client,
        store: RunStore,
        cancel_job: Callable[[str], bool],
        now: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        events: Callable[[Event], None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.cancel_job = cancel_job
        self.now = now
        self.events = events

    def emit(self, kind: EventKind, run_id: str, name: str, **data: Any) -> None:
        """A workflow event, written after the change it reports (a crash in between loses the event, never
        the change)."""
        if self.events is None:
            return
        try:
            self.events(Event(kind=kind, job_id=run_id, name=name, queue="workflows", data=data))
        except Exception as exc:  # noqa: BLE001 - an event is information: the run goes on without it
            log.warning("workflow %s: event %s not written: %s", run_id, kind.value, exc)

    def plan(self, name: str) -> Plan:
        plans: dict[str, Plan] = self.client.registry.workflows
        if name not in plans:
            from .define import defined

            cls = defined().get(name)
            if cls is not None:  # a class defined after the registry was built (e.g. inside a test)
                found: Plan = cls.plan
                return found
            raise WorkflowError(f"no workflow named {name!r} (known: {', '.join(sorted(plans)) or 'none'})")
        return plans[name]

    # -- starting --------------------------------------------------------------------------

    def start(self, plan: Plan, data: dict[str, Any], key: str | None) -> tuple[str, bool]:
        """Validate the input and store the run (unless its key's run exists); release its first steps.

        Refused inside a transaction that holds enqueues until its commit (`forgejobs.sqlalchemy`,
        `forgejobs.django`): the run would be stored at once, and outlive a rollback. Start it after the commit."""
        from ..client import enqueue_hook

        if enqueue_hook.get() is not None:
            raise WorkflowError(
                f"workflow {plan.name!r}: not started inside a transaction whose enqueues wait for its commit "
                "(the run would be stored now and survive a rollback); start it after the commit"
            )
        model = plan.input_model.model_validate(data)
        run_id = run_id_for(plan.name, key)
        now = self.now()
        fields = {
            "wf": plan.name,
            "st": RUNNING,
            "in": model.model_dump_json(),
            "key": key or "",
            "t0": str(now),
            "dl": str(now + round(plan.timeout * 1000)) if plan.timeout else "0",
            "sl": str(len(plan.steps)),
            "steps": " ".join(plan.steps),
        }
        for step in plan.steps.values():
            fields[f"deps:{step.name}"] = " ".join(plan.dependants(step.name))
            fields[f"p:{step.name}"] = str(len(step.after))
            fields[f"f:{step.name}"] = step.on_failure
            fields[f"ss:{step.name}"] = "ready" if not step.after else "waiting"
            if step.compensate is not None:
                fields[f"cp:{step.name}"] = "1"
        roots = plan.roots()
        created = self.store.create(run_id, fields, roots, now)
        if created:
            self.emit(EventKind.WORKFLOW_STARTED, run_id, plan.name, key=key)
            for step_name in roots:
                self.emit(EventKind.STEP_RELEASED, run_id, plan.name, step=step_name)
            for step_name in roots:
                self.release(run_id, step_name)
        return run_id, created

    # -- releasing ------------------------------------------------------------------------

    def release(self, run_id: str, step_name: str) -> None:
        """Enqueue the jobs of a released step (again: a no-op for what is already stored)."""
        run = self.store.read(run_id)
        if run is None:
            return
        if run["st"] != (COMPENSATING if step_name.startswith("~") else RUNNING):
            self.store.enqueued(run_id, step_name)
            return
        plan = self.plan(run["wf"])
        if step_name.startswith("~"):
            self._release_compensation(plan, run, run_id, step_name)
            return
        step = plan.steps[step_name]
        count = 1
        if step.for_each is not None:
            items = Bound(plan, run).items(step)
            count = len(items) if isinstance(items, list) else 0
        released = self.store.expand(run_id, step_name, count, self.now())
        self._announce(run_id, run["wf"], "ok" if not released else self._status(run_id), released)
        run = self.store.read(run_id) or run
        todo = [i for i in range(count) if f"d:{step_name}:{i}" not in run]
        if todo:
            bound = Bound(plan, run)
            items = [(i, bound.payload(step, i, dict(step.inputs))) for i in todo]
            try:
                self._enqueue(plan.job_type(step.job), run_id, step_name, items)
            except (ValidationError, PayloadError) as exc:
                # the data does not fit although the types did (an Any output, a value out of a field's
                # range): the step cannot start, so the run fails, naming it; nothing of the step was stored
                self.store.enqueued(run_id, step_name)
                self.stop(run_id, "failed", f"step {step_name}: its input does not validate: {_first_line(exc)}")
                return
        self.store.enqueued(run_id, step_name)
        for other in released:
            self.release(run_id, other)

    def _release_compensation(self, plan: Plan, run: dict[str, str], run_id: str, pseudo: str) -> None:
        k = int(pseudo[1:])
        target, _, index_text = run[f"c:{k}"].rpartition(":")
        step = plan.steps[target]
        assert step.compensate is not None
        self.store.expand(run_id, pseudo, 1, self.now())
        if f"d:{pseudo}:0" not in run:
            data = Bound(plan, run).payload(step, int(index_text), dict(step.compensate.inputs), own=True)
            self._enqueue(plan.job_type(step.compensate.job), run_id, pseudo, [(0, data)])
        self.store.enqueued(run_id, pseudo)

    def _enqueue(self, job_type: Any, run_id: str, step: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        client = self.client
        options = client.registry.ensure(job_type)
        now = client.backend.now()
        prepared: list[Prepared] = []
        for index, data in items:
            one = client.prepare(job_type, options, data, EnqueueOptions(job_id=job_id(run_id, step, index)), now)
            envelope = json.loads(one.envelope)
            envelope.setdefault("options", {})[TAG] = f"{run_id}|{step}|{index}"
            prepared.append(dataclasses.replace(one, envelope=json.dumps(envelope, separators=(",", ":"))))
        client.backend.enqueue(prepared)

    # -- outcomes -------------------------------------------------------------------------

    def finished(self, tag: str, mode: str, output: str = "", error: str = "") -> str:
        """Record a step job's final outcome (done, failed, cancelled) and act on what it changed."""
        run_id, step, index = parse_tag(tag)
        verdict, released = self.store.finish(run_id, step, index, mode, output, error, self.now())
        self._after(run_id, verdict, released)
        return verdict

    def stop(self, run_id: str, status: str, reason: str) -> bool:
        """End a running run (cancelled, timed_out): outstanding jobs are cancelled, compensations start."""
        verdict, released = self.store.stop(run_id, status, reason, self.now())
        if verdict == "not running":
            return False
        self._after(run_id, verdict, released)
        return True

    def _status(self, run_id: str) -> str:
        return (self.store.fields(run_id, "st") or {}).get("st", "?")

    def _announce(self, run_id: str, name: str, verdict: str, released: list[str]) -> None:
        for step in released:
            if not step.startswith("~"):
                self.emit(EventKind.STEP_RELEASED, run_id, name, step=step)
        if verdict == "succeeded":
            self.emit(EventKind.WORKFLOW_COMPLETED, run_id, name)
        elif verdict in ("failed", "timed_out"):
            self.emit(EventKind.WORKFLOW_FAILED, run_id, name, status=verdict, error=self._error(run_id))
        elif verdict == "cancelled":
            self.emit(EventKind.WORKFLOW_CANCELLED, run_id, name, error=self._error(run_id))

    def _error(self, run_id: str) -> str:
        return (self.store.fields(run_id, "err") or {}).get("err", "")

    def _after(self, run_id: str, verdict: str, released: list[str]) -> None:
        if self.events is not None and (released or verdict not in ("ok", "dup", "ignored")):
            self._announce(run_id, (self.store.fields(run_id, "wf") or {}).get("wf", "?"), verdict, released)
        if verdict in (STOPPING, "failed", "cancelled", "timed_out", COMPENSATING):
            self.cancel_outstanding(run_id)
        for other in released:
            self.release(run_id, other)

    def cancel_outstanding(self, run_id: str) -> None:
        """Cancel the step jobs of a stopped run that have not reported. A job taken off its queue before it
        ran is recorded as cancelled here; a running one reports when it ends."""
        run = self.store.read(run_id) or {}
        for step in run.get("steps", "").split():
            for i in range(int(run.get(f"n:{step}", "0"))):
                if f"d:{step}:{i}" in run:
                    continue
                try:
                    before_it_ran = self.cancel_job(job_id(run_id, step, i))
                except Exception as exc:  # noqa: BLE001 - it finished meanwhile: its report is on its way
                    log.debug("workflow %s: %s not cancelled: %s", run_id, job_id(run_id, step, i), exc)
                    continue
                if before_it_ran:
                    self.finished(f"{run_id}|{step}|{i}", "cancelled", error="cancelled before it ran")

    def check_deadline(self, run_id: str, run: dict[str, str] | None = None) -> bool:
        """Stop a running run whose timeout has passed; True if it did."""
        run = run if run is not None else self.store.fields(run_id, "st", "dl", "t0")
        if run is None or run.get("st") != RUNNING:
            return False
        deadline = int(run.get("dl", "0") or 0)
        if deadline and self.now() > deadline:
            seconds = (deadline - int(run["t0"])) / 1000
            return self.stop(run_id, "timed_out", f"the workflow's timeout ({seconds:g}s) passed")
        return False
