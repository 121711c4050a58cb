"""The workflows a registry knows: its specs' `workflows/*.yaml` and the `Workflow` classes defined so far."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnknownJob
from ..job import Job
from .define import defined
from .plan import Plan
from .spec import load_dir

if TYPE_CHECKING:
    from ..registry import Registry


def collect(registry: Registry) -> tuple[dict[str, Plan], list[str]]:
    """Name -> plan, and every problem (each naming its file and key)."""

    def resolve(name: str) -> type[Job] | None:
        try:
            return registry.resolve(name).job_type
        except UnknownJob:
            return None

    known = [entry.job_type.job_name() for entry in registry]
    directory = registry.specs.workflows_dir
    plans, problems = load_dir(directory, resolve, known) if directory is not None else ({}, [])
    if not registry.strict:
        problems = []  # a lenient registry (the fake queue's) learns jobs as tests use them: keep what checks
    for name, cls in defined().items():
        plan = cls.plan
        if name in plans:
            problems.append(f"{plans[name].source}: workflows.{name}: also declared by {plan.source}")
            continue
        if registry.strict:
            unknown = sorted(job for job in plan.jobs if job not in registry)
            if unknown:
                continue  # a class of another project's package (e.g. a test module): not this registry's
        plans[name] = plan
    return plans, problems
