"""Workflows: typed DAGs of jobs, declared in Python (`Workflow`) or in `specs/workflows/*.yaml`.

Both forms produce one checked `Plan` (see `plan.py` for the checks). A run's steps are ordinary jobs; the
runtime releases each step once everything it waits for has finished (docs/workflows.md,
docs/decisions/0009-workflows.md).
"""

from __future__ import annotations

from .define import Step, Value, Workflow, chain, group
from .plan import Binding, Compensation, Plan, StepPlan, WorkflowError
from .run import NoSuchRun, StepState, WorkflowRun, start_workflow
from .run import run as workflow_run

__all__ = [
    "Binding",
    "Compensation",
    "NoSuchRun",
    "Plan",
    "Step",
    "StepPlan",
    "StepState",
    "Value",
    "Workflow",
    "WorkflowError",
    "WorkflowRun",
    "chain",
    "group",
    "start_workflow",
    "workflow_run",
]
