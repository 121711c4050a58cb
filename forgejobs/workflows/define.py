"""Workflows declared in Python: a `Workflow` subclass whose class attributes are `Step`s.

    class Checkout(Workflow, input=CheckoutInput, timeout=timedelta(minutes=10)):
        sync = Step(SyncSubscription, {"session_id": "input.session_id"})
        receipt = Step(ReceiptEmail, {"subscription_id": "steps.sync.output.subscription_id"})
        audit = Step(AuditEvent, {"org_id": "input.org_id"})
        flow = chain(sync, group(receipt, audit))

The class is checked when it is defined (the same checks `forgejobs check` runs on a YAML workflow), and a
mistake raises `WorkflowError` naming the class's file and line and the key. `chain(a, b, ...)` puts each
element after the one before it; `group(a, b, ...)` runs its members side by side (a group after a step
waits for that step; a step after a group waits for all of its members).
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from ..job import Job
from .plan import Binding, Compensation, FailurePolicy, Plan, StepPlan, WorkflowError, check_plan

if TYPE_CHECKING:
    from .run import WorkflowRun


class Value:
    """A literal input (a plain string in `inputs` is a reference): `Step(Notify, {"kind": Value("welcome")})`."""

    def __init__(self, value: Any) -> None:
        self.value = value


def binding(value: Any) -> Binding:
    return Binding(value=value.value) if isinstance(value, Value) else Binding(ref=str(value))


class Step:
    """One step of a Python workflow: a job class and where each of its fields comes from."""

    def __init__(
        self,
        job: type[Job],
        inputs: Mapping[str, str | Value] | None = None,
        *,
        after: Sequence[Step | str] = (),
        for_each: str | None = None,
        on_failure: FailurePolicy = "fail",
        compensate: type[Job] | None = None,
        compensate_inputs: Mapping[str, str | Value] | None = None,
    ) -> None:
        self.job = job
        self.inputs = dict(inputs or {})
        self.after: list[Step | str] = list(after)
        self.for_each = for_each
        self.on_failure = on_failure
        self.compensate = compensate
        self.compensate_inputs = compensate_inputs
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _plan(self) -> StepPlan:
        comp = None
        if self.compensate is not None:
            given = self.compensate_inputs
            if given is None:  # by default, the compensation takes the fields it shares with the step's inputs
                given = {k: v for k, v in self.inputs.items() if k in self.compensate.model_fields}
            comp = Compensation(self.compensate.job_name(), {k: binding(v) for k, v in given.items()})
        return StepPlan(
            name=self.name,
            job=self.job.job_name(),
            inputs={k: binding(v) for k, v in self.inputs.items()},
            after=tuple(dict.fromkeys(a.name if isinstance(a, Step) else a for a in self.after)),
            for_each=self.for_each,
            on_failure=self.on_failure,
            compensate=comp,
        )


class Flow:
    """`chain(...)` or `group(...)`: only adds `after` edges between the steps it names."""

    def __init__(self, kind: str, parts: Sequence[Step | Flow]) -> None:
        self.kind = kind
        self.parts = list(parts)

    def heads(self) -> list[Step]:
        """The steps that start this flow."""
        if self.kind == "group":
            return [s for p in self.parts for s in _heads(p)]
        return _heads(self.parts[0]) if self.parts else []

    def tails(self) -> list[Step]:
        """The steps that end it: what comes after it waits for these."""
        if self.kind == "group":
            return [s for p in self.parts for s in _tails(p)]
        return _tails(self.parts[-1]) if self.parts else []

    def link(self) -> None:
        for part in self.parts:
            if isinstance(part, Flow):
                part.link()
        if self.kind == "chain":
            for before, then in zip(self.parts, self.parts[1:], strict=False):
                for step in _heads(then):
                    step.after.extend(_tails(before))


def _heads(part: Step | Flow) -> list[Step]:
    return [part] if isinstance(part, Step) else part.heads()


def _tails(part: Step | Flow) -> list[Step]:
    return [part] if isinstance(part, Step) else part.tails()


def chain(*parts: Step | Flow) -> Flow:
    """Each part after the one before it."""
    return Flow("chain", parts)


def group(*parts: Step | Flow) -> Flow:
    """The parts side by side."""
    return Flow("group", parts)


_lock = threading.Lock()
_defined: dict[str, type[Workflow]] = {}


def defined() -> dict[str, type[Workflow]]:
    """Workflow classes defined so far in this process, by workflow name."""
    with _lock:
        return dict(_defined)


def _default_name(cls_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", cls_name).lower()


def class_source(cls: type) -> str:
    try:
        from ..registry import _shown

        filename = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
        return f"{_shown(filename) if filename else cls.__module__}:{line}"
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


class Workflow:
    """Base class of Python workflows. Class keywords: `input` (a Pydantic model, required), `name`
    (default: the class name in snake case), `timeout` (a timedelta or seconds, for the whole run)."""

    plan: ClassVar[Plan]

    def __init_subclass__(
        cls,
        *,
        input: type[BaseModel] | None = None,  # noqa: A002 - the workflow's input, as the YAML form calls it
        name: str | None = None,
        timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        where = class_source(cls)
        if input is None:
            raise WorkflowError(f"{where}: {cls.__qualname__}: needs input=<a Pydantic model> in its class keywords")
        steps = [v for v in vars(cls).values() if isinstance(v, Step)]
        for flow in (v for v in vars(cls).values() if isinstance(v, Flow)):
            flow.link()
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        plan = Plan(
            name=name or _default_name(cls.__name__),
            input_model=input,
            steps={s.name: s._plan() for s in steps},
            timeout=seconds,
            source=f"class {cls.__module__}.{cls.__qualname__}",
        )
        jobs = {s.job.job_name(): s.job for s in steps} | {
            s.compensate.job_name(): s.compensate for s in steps if s.compensate is not None
        }
        problems = check_plan(plan, jobs.get, jobs, lambda path: where, f"{cls.__qualname__}.")
        if problems:
            raise WorkflowError("\n".join(problems))
        with _lock:
            existing = _defined.get(plan.name)
            if existing is not None and (existing.__module__, existing.__qualname__) != (
                cls.__module__,
                cls.__qualname__,
            ):
                raise WorkflowError(
                    f"{where}: workflow name {plan.name!r} is used by both {existing.__module__}."
                    f"{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}"
                )
            _defined[plan.name] = cls
        cls.plan = plan

    @classmethod
    def start(cls, *, key: str | None = None, **fields: Any) -> WorkflowRun:
        """Validate `fields` as the input and start a run (through the current client); with `key`, a run
        already started under that key is returned instead of a new one."""
        from .run import start

        return start(cls.plan, fields, key=key)
