"""Workflows declared in YAML: `specs/workflows/*.yaml`, checked like a `Workflow` class.

    workflows:
      checkout:
        input: jobs.flows:CheckoutInput        # module:Class of a Pydantic model
        timeout: 10m
        steps:
          sync:
            job: billing.sync-subscription
            inputs: {session_id: input.session_id}
          receipt:
            job: email.receipt
            after: [sync]
            inputs: {subscription_id: steps.sync.output.subscription_id}
            on_failure: continue
          invoice:
            job: billing.invoice-org
            for_each: input.org_ids
            inputs: {org_id: item, month: {value: "2026-11"}}   # {value: ...} is a literal
            compensate: billing.void-invoice   # or {job: ..., inputs: {...}}

Every mistake is reported as `<file>:<line>: workflows.<name>.<key>: <what is wrong>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError
from ..job import Job
from ..specs import _lines, _message
from ..types import Duration
from .plan import Binding, Compensation, FailurePolicy, Plan, StepPlan, check_plan

Literal_ = dict[str, Any]


class CompensateSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str
    inputs: dict[str, str | Literal_] | None = None


class StepSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str
    inputs: dict[str, str | Literal_] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list)
    for_each: str | None = None
    on_failure: FailurePolicy = "fail"
    compensate: str | CompensateSpec | None = None


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    timeout: Duration | None = None
    description: str = ""
    steps: dict[str, StepSpec]


class WorkflowFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workflows: dict[str, WorkflowSpec] = Field(default_factory=dict)


def _binding(value: str | Literal_, path: str) -> Binding:
    if isinstance(value, dict):
        if set(value) != {"value"}:
            raise ValueError(f"{path}: a literal is written {{value: ...}}; a reference is a plain string")
        return Binding(value=value["value"])
    return Binding(ref=value)


def _import_model(target: str) -> type[BaseModel] | str:
    """The model named by `module:Class`, or a problem."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix, named
        return f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
    value = getattr(module, attr, None)
    if value is None:
        return f"{module_name} has no {attr!r}"
    if not (isinstance(value, type) and issubclass(value, BaseModel)):
        return f"{target} is not a Pydantic model class"
    return value


def _step_plan(name: str, spec: StepSpec, where: str) -> StepPlan:
    comp = None
    if spec.compensate is not None:
        if isinstance(spec.compensate, str):
            comp = Compensation(spec.compensate, {})
        else:
            given = spec.compensate.inputs or {}
            comp = Compensation(spec.compensate.job, {k: _binding(v, where) for k, v in given.items()})
    return StepPlan(
        name=name,
        job=spec.job,
        inputs={k: _binding(v, where) for k, v in spec.inputs.items()},
        after=tuple(spec.after),
        for_each=spec.for_each,
        on_failure=spec.on_failure,
        compensate=comp,
    )


def _default_compensation(plan: Plan, resolve: Callable[[str], type[Job] | None]) -> None:
    """`compensate: <job>` alone: the compensation takes the fields it shares with the step's inputs."""
    for name, step in list(plan.steps.items()):
        comp = step.compensate
        if comp is None or comp.inputs:
            continue
        job_type = resolve(comp.job)
        if job_type is not None:
            inputs = {k: v for k, v in step.inputs.items() if k in job_type.model_fields}
            plan.steps[name] = StepPlan(**{**step.__dict__, "compensate": Compensation(comp.job, inputs)})


def load_file(path: Path, resolve: Callable[[str], type[Job] | None], known: list[str]) -> tuple[list[Plan], list[str]]:
    """The checked plans of one workflow file, and every problem found in it."""
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [], [f"{path}: not valid YAML: {exc}"]
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not UTF-8 text (byte {exc.start}): save the spec as UTF-8"]
    if data is None:
        return [], []
    if not isinstance(data, dict):
        return [], [f"{path}: top level must be a mapping with a 'workflows' key, got {type(data).__name__}"]
    try:
        parsed = WorkflowFile.model_validate(data)
    except ValidationError as exc:
        return [], _message(path, exc, text).splitlines()
    lines = _lines(text)
    plans: list[Plan] = []
    problems: list[str] = []
    for name, spec in parsed.workflows.items():

        def locate(key: tuple[str, ...], name: str = name) -> str:
            full = ("workflows", name, *key)
            line = next((lines[full[:n]] for n in range(len(full), 0, -1) if full[:n] in lines), None)
            return f"{path}:{line}" if line else str(path)

        model = _import_model(spec.input)
        if isinstance(model, str):
            problems.append(f"{locate(('input',))}: workflows.{name}.input: {model}")
            continue
        try:
            steps = {s: _step_plan(s, step, f"workflows.{name}.steps.{s}") for s, step in spec.steps.items()}
        except ValueError as exc:
            problems.append(f"{locate(())}: {exc}")
            continue
        seconds = spec.timeout.total_seconds() if spec.timeout is not None else None
        plan = Plan(name=name, input_model=model, steps=steps, timeout=seconds, source=str(path))
        _default_compensation(plan, resolve)
        found = check_plan(plan, resolve, known, locate, f"workflows.{name}.")
        problems.extend(found)
        if not found:
            plans.append(plan)
    return plans, problems


def load_dir(
    directory: Path, resolve: Callable[[str], type[Job] | None], known: list[str]
) -> tuple[dict[str, Plan], list[str]]:
    """Every workflow in `directory/*.yaml` (a missing directory holds none)."""
    plans: dict[str, Plan] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    if not directory.is_dir():
        return plans, problems
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        found, wrong = load_file(path, resolve, known)
        problems.extend(wrong)
        for plan in found:
            if plan.name in sources:
                problems.append(f"{path}: workflows.{plan.name}: already declared in {sources[plan.name]}")
                continue
            sources[plan.name] = str(path)
            plans[plan.name] = plan
    return plans, problems


__all__ = ["SpecError", "load_dir", "load_file"]
