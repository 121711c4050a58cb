"""Workflow plans: the YAML and Python forms give one plan, and each wiring mistake is one clear error.

The job classes are this module's own; `forgejobs check` runs with FORGEJOBS_JOBS=tests.test_workflow_plan
and a spec folder written by the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from pydantic import BaseModel

from forgejobs import Context, Job
from forgejobs.registry import Registry
from forgejobs.specs import QueueSpec, Specs
from forgejobs.workflows import Step, Workflow, WorkflowError, chain, group
from forgejobs.workflows.spec import load_file
from tests.helpers import ROOT


class SignupInput(BaseModel):
    user_id: str
    org_ids: list[str] = []
    count: int = 0


class Stored(BaseModel):
    user_id: str
    email: str
    seats: int


class StoreUser(Job, queue="plan"):
    user_id: str

    def perform(self, ctx: Context[None]) -> Stored:
        return Stored(user_id=self.user_id, email=f"{self.user_id}@example.com", seats=3)


class Welcome(Job, queue="plan"):
    email: str
    seats: int = 1

    def perform(self, ctx: Context[None]) -> str:
        return f"sent to {self.email}"


class Invoice(Job, queue="plan"):
    org_id: str

    def perform(self, ctx: Context[None]) -> int:
        return 100


class Summary(Job, queue="plan"):
    totals: list[int]

    def perform(self, ctx: Context[None]) -> int:
        return sum(self.totals)


class MaybeSummary(Job, queue="plan"):
    totals: list[int | None]

    def perform(self, ctx: Context[None]) -> int:
        return sum(t or 0 for t in self.totals)


class DeleteUser(Job, queue="plan"):
    user_id: str

    def perform(self, ctx: Context[None]) -> None:
        return None


JOBS: list[type[Job]] = [StoreUser, Welcome, Invoice, Summary, MaybeSummary, DeleteUser]
INPUT = "tests.test_workflow_plan:SignupInput"


def registry_with(folder: Path) -> Registry:
    return Registry(JOBS, Specs(queues={"plan": QueueSpec()}, workflows_dir=folder))


def problems_of(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "flow.yaml"
    path.write_text(dedent(body))
    registry = Registry(JOBS, Specs(queues={"plan": QueueSpec()}))
    known = [e.job_type.job_name() for e in registry]

    def resolve(name: str) -> type[Job] | None:
        return registry.resolve(name).job_type if name in registry else None

    plans, problems = load_file(path, resolve, known)
    assert not (plans and problems)
    return problems


GOOD = f"""
workflows:
  signup:
    input: {INPUT}
    timeout: 10m
    steps:
      store:
        job: plan.store-user
        inputs: {{user_id: input.user_id}}
      welcome:
        job: plan.welcome
        after: [store]
        inputs: {{email: steps.store.output.email, seats: steps.store.output.seats}}
      invoice:
        job: plan.invoice
        after: [store]
        for_each: input.org_ids
        inputs: {{org_id: item}}
        compensate: {{job: plan.delete-user, inputs: {{user_id: input.user_id}}}}
      summary:
        job: plan.summary
        after: [invoice, welcome]
        inputs: {{totals: steps.invoice.output}}
"""


def test_a_yaml_workflow_and_its_python_twin_give_the_same_plan(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "signup.yaml").write_text(dedent(GOOD))
    yaml_plan = registry_with(tmp_path / "workflows").workflows["signup"]

    class SignupTwin(Workflow, input=SignupInput, name="signup_twin", timeout=600):
        store = Step(StoreUser, {"user_id": "input.user_id"})
        welcome = Step(Welcome, {"email": "steps.store.output.email", "seats": "steps.store.output.seats"})
        invoice = Step(
            Invoice,
            {"org_id": "item"},
            for_each="input.org_ids",
            compensate=DeleteUser,
            compensate_inputs={"user_id": "input.user_id"},
        )
        summary = Step(Summary, {"totals": "steps.invoice.output"})
        flow = chain(store, group(welcome, invoice), summary)

    py_plan = SignupTwin.plan
    assert list(yaml_plan.steps) == list(py_plan.steps) == ["store", "welcome", "invoice", "summary"]
    for name in yaml_plan.steps:
        y, p = yaml_plan.steps[name], py_plan.steps[name]
        assert (y.job, dict(y.inputs), set(y.after), y.for_each, y.on_failure) == (
            p.job,
            dict(p.inputs),
            set(p.after),
            p.for_each,
            p.on_failure,
        ), name
    assert yaml_plan.steps["invoice"].compensate == py_plan.steps["invoice"].compensate
    assert yaml_plan.timeout == py_plan.timeout == 600
    assert yaml_plan.jobs["plan.summary"] is Summary


@pytest.mark.parametrize(
    ("mistake", "edit", "expected"),
    [
        (
            "unknown job",
            ("job: plan.welcome", "job: plan.welcom"),
            "flow.yaml:11: workflows.signup.steps.welcome.job: no job named 'plan.welcom' "
            "(did you mean 'plan.welcome'?)",
        ),
        (
            "not upstream",
            ("after: [invoice, welcome]", "after: [welcome]"),
            "flow.yaml:23: workflows.signup.steps.summary.inputs.totals: steps.invoice.output: step 'invoice' is not "
            "upstream of 'summary' (add it to after)",
        ),
        (
            "missing field",
            ("email: steps.store.output.email", "email: steps.store.output.mail"),
            "flow.yaml:13: workflows.signup.steps.welcome.inputs.email: steps.store.output.mail: Stored has no field "
            "'mail' (fields: user_id, email, seats)",
        ),
        (
            "type does not fit",
            ("seats: steps.store.output.seats", "seats: steps.store.output.email"),
            "flow.yaml:13: workflows.signup.steps.welcome.inputs.seats: steps.store.output.email is str, which does "
            "not fit plan.welcome.seats: int",
        ),
        (
            "cycle",
            ("after: [store]\n        inputs: {email", "after: [store, summary]\n        inputs: {email"),
            "workflows.signup.steps.",
        ),
        (
            "for_each over a non-list",
            ("for_each: input.org_ids", "for_each: input.user_id"),
            "flow.yaml:17: workflows.signup.steps.invoice.for_each: input.user_id is str, not a list",
        ),
        (
            "unknown step in after",
            ("after: [invoice, welcome]", "after: [invoice, welcom]"),
            "flow.yaml:22: workflows.signup.steps.summary.after: no step named 'welcom' (did you mean 'welcome'?)",
        ),
        (
            "missing required input",
            ("inputs: {user_id: input.user_id}", "inputs: {}"),
            "flow.yaml:9: workflows.signup.steps.store.inputs: plan.store-user needs user_id, which no input gives",
        ),
        (
            "fan-in is a list of outputs",
            ("inputs: {totals: steps.invoice.output}", "inputs: {totals: steps.welcome.output}"),
            "workflows.signup.steps.summary.inputs.totals: steps.welcome.output is str, which does not fit "
            "plan.summary.totals: list[int]",
        ),
        (
            "unknown key",
            ("for_each: input.org_ids", "for_eahc: input.org_ids"),
            "flow.yaml:17: workflows.signup.steps.invoice.for_eahc: unknown key",
        ),
    ],
)
def test_each_mistake_is_one_error_naming_file_line_and_key(
    tmp_path: Path, mistake: str, edit: tuple[str, str], expected: str
) -> None:
    assert edit[0] in GOOD, mistake
    problems = problems_of(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    assert len(problems) == 1, problems
    assert expected in problems[0], problems[0]
    assert str(tmp_path / "flow.yaml") in problems[0]


def test_the_cycle_is_named_step_by_step(tmp_path: Path) -> None:
    broken = GOOD.replace("after: [store]\n        inputs: {email", "after: [store, summary]\n        inputs: {email")
    (problem,) = problems_of(tmp_path, broken)
    assert "cycle: " in problem
    cycle = problem.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and {"welcome", "summary"} <= set(cycle)


def test_a_continue_step_makes_its_output_optional_downstream(tmp_path: Path) -> None:
    lenient = GOOD.replace("inputs: {org_id: item}", "inputs: {org_id: item}\n        on_failure: continue")
    (problem,) = problems_of(tmp_path, lenient)
    assert "steps.invoice.output may be missing (its step has on_failure: continue)" in problem
    assert "plan.summary.totals must accept None" in problem
    fixed = lenient.replace("job: plan.summary", "job: plan.maybe-summary")
    assert problems_of(tmp_path, fixed) == []


def test_literals_and_item_fields_are_checked(tmp_path: Path) -> None:
    body = GOOD.replace("inputs: {org_id: item}", "inputs: {org_id: {value: 7}}")
    (problem,) = problems_of(tmp_path, body)
    assert "workflows.signup.steps.invoice.inputs.org_id: 7 does not fit str" in problem
    body = GOOD.replace("inputs: {org_id: item}", "inputs: {org_id: item.name}")
    (problem,) = problems_of(tmp_path, body)
    assert "item.name: str has no fields" in problem


def test_a_python_workflow_is_checked_when_its_class_is_defined() -> None:
    with pytest.raises(WorkflowError) as caught:

        class Broken(Workflow, input=SignupInput, name="broken_plan"):
            store = Step(StoreUser, {"user_id": "input.user"})
            welcome = Step(Welcome, {"email": "steps.store.output.email"})  # no after: not upstream

    text = str(caught.value)
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "tests/test_workflow_plan.py:" in lines[0]
    assert "Broken.steps.store.inputs.user_id: input.user: SignupInput has no field 'user'" in text
    assert "Broken.steps.welcome.inputs.email: steps.store.output.email: step 'store' is not upstream" in text


def test_forgejobs_check_prints_one_error_per_mistake(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    (specs / "workflows").mkdir(parents=True)
    (specs / "queues.yaml").write_text("queues:\n  plan: {concurrency: 1}\n")
    (specs / "workflows" / "good.yaml").write_text(dedent(GOOD))
    broken = (
        GOOD.replace("signup:", "broken:")
        .replace("job: plan.welcome", "job: plan.welcom")
        .replace("for_each: input.org_ids", "for_each: input.count")
        .replace("totals: steps.invoice.output", "totals: steps.store.output.seat")
    )
    (specs / "workflows" / "broken.yaml").write_text(dedent(broken))
    env = {**os.environ, "FORGEJOBS_JOBS": "tests.test_workflow_plan", "FORGEJOBS_SPECS": str(specs)}
    done = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "workflows.broken.steps.welcome.job: no job named 'plan.welcom'" in out
    assert "workflows.broken.steps.invoice.for_each: input.count is int, not a list" in out
    assert "workflows.broken.steps.summary.inputs.totals: steps.store.output.seat: Stored has no field 'seat'" in out
    assert "workflows.signup" not in out
    assert out.count("broken.yaml:") == 3, out

    (specs / "workflows" / "broken.yaml").unlink()
    fixed = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert fixed.returncode == 0, fixed.stderr
    table = fixed.stdout[fixed.stdout.index("workflows") :]
    assert "signup" in table and "SignupInput" in table and "600s" in table
