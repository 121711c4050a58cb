"""The plan of a workflow, and the checks it passes before anything runs.

A `Plan` is what both forms (a `Workflow` class, a file in `specs/workflows/`) produce: steps naming a job
type, inputs bound by reference to the workflow's input or to upstream outputs, `after` edges, optional
`for_each` fan-out, a failure policy and an optional compensation per step, and a timeout. `check_plan`
refuses it, naming the key, for: an unknown job, an `after` naming no step, a cycle, a reference to a step
that is not upstream (or to no step), a field the referenced model does not have, a value whose type does
not fit the job's field, a missing required field, and a `for_each` over something that is not a list.

A reference is a dotted path, never code: `input.<field>...`, `steps.<step>.output[.<field>...]`, and in a
`for_each` step `item[.<field>...]`. A `for_each` step's output, seen downstream, is the list of its
instances' outputs (fan-in); a step whose `on_failure` is `continue` may have no output, so references to
it are typed optional and the field they fill must accept None.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import RegistryError
from ..job import Job
from .types import NoneType, field_type, fits, item_type, members, optional, show

STEP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
WORKFLOW_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
FailurePolicy = Literal["fail", "continue"]


class WorkflowError(RegistryError):
    """A workflow that cannot run as declared: every problem, each naming its file (or class) and key."""


@dataclass(frozen=True)
class Binding:
    """Where one input field's value comes from: a reference (`ref`), or a literal `value`."""

    ref: str | None = None
    value: Any = None

    def describe(self) -> str:
        return self.ref if self.ref is not None else f"the value {self.value!r}"


@dataclass(frozen=True)
class Compensation:
    """The job that undoes a completed step, with its inputs (the step's own output is upstream of it)."""

    job: str
    inputs: Mapping[str, Binding]


@dataclass(frozen=True)
class StepPlan:
    name: str
    job: str  # the job type's name
    inputs: Mapping[str, Binding]
    after: tuple[str, ...] = ()
    for_each: str | None = None
    on_failure: FailurePolicy = "fail"
    compensate: Compensation | None = None


@dataclass
class Plan:
    """A checked workflow. `steps` is in a topological order (every step after its `after`)."""

    name: str
    input_model: type[BaseModel]
    steps: dict[str, StepPlan]
    timeout: float | None = None  # seconds, for the whole run
    source: str = ""  # the file or class that declared it
    jobs: dict[str, type[Job]] = field(default_factory=dict)  # job name -> type, filled by the check

    def dependants(self, step: str) -> list[str]:
        return [s.name for s in self.steps.values() if step in s.after]

    def roots(self) -> list[str]:
        return [s.name for s in self.steps.values() if not s.after]

    def job_type(self, name: str) -> type[Job]:
        return self.jobs[name]


Resolve = Callable[[str], "type[Job] | None"]
Locate = Callable[[tuple[str, ...]], str]


def output_type(job_type: type[Job]) -> Any:
    """What `perform` is declared to return (Any when undeclared or unreadable)."""
    try:
        hints = typing.get_type_hints(job_type.perform)
    except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated is not checked
        return Any
    ret = hints.get("return", inspect.Signature.empty)
    if ret is inspect.Signature.empty:
        return Any
    return NoneType if ret is None else ret


class _Checker:
    def __init__(self, plan: Plan, resolve: Resolve, known: Iterable[str], locate: Locate, label: str) -> None:
        self.plan = plan
        self.resolve = resolve
        self.known = sorted(known)
        self.locate = locate
        self.label = label
        self.problems: list[str] = []
        self.ancestors: dict[str, set[str]] = {}

    def problem(self, path: tuple[str, ...], message: str) -> None:
        self.problems.append(f"{self.locate(path)}: {self.label}{'.'.join(path)}: {message}")

    def run(self) -> list[str]:
        plan = self.plan
        if not (isinstance(plan.input_model, type) and issubclass(plan.input_model, BaseModel)):
            self.problem(("input",), f"must be a Pydantic model class, got {plan.input_model!r}")
            plan.input_model = BaseModel
        if not plan.steps:
            self.problem(("steps",), "a workflow needs at least one step")
        for step in plan.steps.values():
            self._job(step.job, ("steps", step.name, "job"))
            if step.compensate is not None:
                self._job(step.compensate.job, ("steps", step.name, "compensate", "job"))
            for other in step.after:
                if other not in plan.steps:
                    self._no_step(other, ("steps", step.name, "after"))
        if not self._cycles():
            for step in plan.steps.values():
                self._step(step)
        return self.problems

    def _job(self, name: str, path: tuple[str, ...]) -> None:
        job_type = self.resolve(name)
        if job_type is None:
            close = difflib.get_close_matches(name, self.known, n=1)
            self.problem(path, f"no job named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            self.plan.jobs[name] = job_type

    def _no_step(self, name: str, path: tuple[str, ...]) -> None:
        close = difflib.get_close_matches(name, list(self.plan.steps), n=1)
        self.problem(path, f"no step named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def _cycles(self) -> bool:
        """Report each cycle of `after` edges once; compute every step's upstream set. True if any cycle."""
        steps = self.plan.steps
        state: dict[str, int] = {}  # 1 on the path, 2 finished
        found = False

        def visit(name: str, path: list[str]) -> set[str]:
            nonlocal found
            if state.get(name) == 2:
                return self.ancestors[name]
            if state.get(name) == 1:
                cycle = path[path.index(name) :] + [name]
                found = True
                self.problem(("steps", cycle[0], "after"), f"cycle: {' -> '.join(reversed(cycle))}")
                return set()
            state[name] = 1
            upstream: set[str] = set()
            for other in steps[name].after:
                if other in steps:
                    upstream |= {other} | visit(other, [*path, name])
            state[name] = 2
            self.ancestors[name] = upstream
            return upstream

        for name in steps:
            visit(name, [])
        if not found:
            order: list[str] = []
            for name in sorted(steps, key=lambda n: (len(self.ancestors[n]), list(steps).index(n))):
                order.append(name)
            self.plan.steps = {n: steps[n] for n in order}
        return found

    # -- references -------------------------------------------------------------------------

    def ref_type(self, ref: str, step: StepPlan, path: tuple[str, ...], *, compensating: bool = False) -> Any:
        """The type a reference yields in `step`; reports a problem and returns Any when it cannot."""
        parts = ref.split(".")
        if parts[0] == "input":
            return self._walk(self.plan.input_model, parts[1:], "input", path)
        if parts[0] == "item":
            if step.for_each is None:
                self.problem(path, f"{ref}: 'item' is only defined in a step with for_each")
                return Any
            source = self.ref_type(step.for_each, step, path)
            return self._walk(item_type(source) or Any, parts[1:], "item", path)
        if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output":
            other = parts[1]
            if other not in self.plan.steps:
                self._no_step(other, path)
                return Any
            own = compensating and other == step.name
            if not own and other not in self.ancestors.get(step.name, set()):
                self.problem(path, f"{ref}: step {other!r} is not upstream of {step.name!r} (add it to after)")
                return Any
            producer = self.plan.steps[other]
            job_type = self.plan.jobs.get(producer.job)
            base = output_type(job_type) if job_type is not None else Any
            walked = self._walk(base, parts[3:], f"steps.{other}.output", path)
            if producer.on_failure == "continue" and not own:
                walked = optional(walked)
            if producer.for_each is not None and not own:
                return list[walked]  # type: ignore[valid-type]
            return walked
        self.problem(
            path,
            f"{ref!r} is not a reference: write input.<field>, steps.<step>.output[.<field>] or item[.<field>]",
        )
        return Any

    def _walk(self, tp: Any, names: list[str], shown: str, path: tuple[str, ...]) -> Any:
        for name in names:
            tp, problem = field_type(tp, name)
            if problem:
                self.problem(path, f"{shown}.{name}: {problem}")
                return Any
            shown = f"{shown}.{name}"
        return tp

    # -- one step ---------------------------------------------------------------------------

    def _step(self, step: StepPlan) -> None:
        base = ("steps", step.name)
        if step.for_each is not None:
            source = self.ref_type(step.for_each, step, (*base, "for_each"))
            if item_type(source) is None:
                self.problem((*base, "for_each"), f"{step.for_each} is {show(source)}, not a list")
        job_type = self.plan.jobs.get(step.job)
        if job_type is not None:
            self._inputs(step, job_type, step.inputs, (*base, "inputs"), compensating=False)
        comp = step.compensate
        if comp is not None and comp.job in self.plan.jobs:
            self._inputs(
                step, self.plan.jobs[comp.job], comp.inputs, (*base, "compensate", "inputs"), compensating=True
            )

    def _inputs(
        self,
        step: StepPlan,
        job_type: type[Job],
        inputs: Mapping[str, Binding],
        path: tuple[str, ...],
        *,
        compensating: bool,
    ) -> None:
        fields = job_type.model_fields
        missing = [n for n, f in fields.items() if f.is_required() and n not in inputs]
        if missing:
            self.problem(path, f"{job_type.job_name()} needs {', '.join(missing)}, which no input gives")
        for name, binding in inputs.items():
            here = (*path, name)
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(here, f"{job_type.job_name()} has no field {name!r}{hint}")
                continue
            wanted = fields[name].annotation
            if binding.ref is None:
                try:
                    TypeAdapter(wanted if wanted is not None else Any).validate_python(binding.value)
                except ValidationError as exc:
                    self.problem(here, f"{binding.value!r} does not fit {show(wanted)}: {exc.errors()[0]['msg']}")
                continue
            got = self.ref_type(binding.ref, step, here, compensating=compensating)
            if fits(got, wanted):
                continue
            if fits(_without_none(got), wanted):
                self.problem(
                    here,
                    f"{binding.ref} may be missing (its step has on_failure: continue), "
                    f"so {job_type.job_name()}.{name} must accept None (it is {show(wanted)})",
                )
            else:
                self.problem(
                    here,
                    f"{binding.ref} is {show(got)}, which does not fit {job_type.job_name()}.{name}: {show(wanted)}",
                )


def _without_none(tp: Any) -> Any:
    """`tp` as it would be if no step it comes from could be missing (a list's items too)."""
    if typing.get_origin(tp) is list and typing.get_args(tp):
        return list[_without_none(typing.get_args(tp)[0])]  # type: ignore[misc]
    kept = [m for m in members(tp) if m is not NoneType]
    if not kept:
        return NoneType
    return kept[0] if len(kept) == 1 else typing.Union[tuple(kept)]  # noqa: UP007


def check_plan(plan: Plan, resolve: Resolve, known: Iterable[str], locate: Locate, label: str = "") -> list[str]:
    """Every problem of `plan`, one line each: `<where>: <label><key>: <what is wrong>`. Fills `plan.jobs`."""
    problems: list[str] = []
    if not WORKFLOW_NAME.match(plan.name):
        problems.append(
            f"{locate(())}: {label.rstrip('.')}: workflow names are lower-case letters, digits, '.', '_', '-'"
        )
    for name in plan.steps:
        if not STEP_NAME.match(name):
            problems.append(
                f"{locate(('steps', name))}: {label}steps.{name}: step names are lower-case letters, digits and '_'"
            )
    if problems:
        return problems
    return _Checker(plan, resolve, known, locate, label).run()
