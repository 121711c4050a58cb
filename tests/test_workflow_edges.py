"""Workflow edges: the type checker's answers, each mistake a YAML or Python workflow can make (named by file,
line and key), the `forgejobs workflows` command's output and errors, the fake queue's reporting of step
outcomes, and the recovery paths of the worker side on a real Redis (a vanished run, a step left ready, a
compensation job removed by hand, retention of old runs, a pass that raises).

The jobs and workflows are this module's own (FORGEJOBS_JOBS=tests.test_workflow_edges for the CLI), on the
queues `edges` and `edges-undo`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from textwrap import dedent
from typing import Annotated, Any, Literal, NewType, TypedDict

import pytest
import redis
from pydantic import BaseModel

from forgejobs import Client, Context, Job, set_client
from forgejobs.backends.fake import FakeBackend
from forgejobs.backends.redis import RedisBackend
from forgejobs.execution import Succeeded
from forgejobs.keys import QueueKeys
from forgejobs.registry import Registry
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from forgejobs.workflows import Step, Workflow, WorkflowError, chain
from forgejobs.workflows import engine as engine_module
from forgejobs.workflows import run as run_module
from forgejobs.workflows import types as wt
from forgejobs.workflows import worker as worker_module
from forgejobs.workflows.cli import runs_summary
from forgejobs.workflows.engine import Engine, job_id
from forgejobs.workflows.fake import report
from forgejobs.workflows.plan import Binding, Plan, StepPlan, check_plan, output_type
from forgejobs.workflows.run import WorkflowRun, engine_for, start
from forgejobs.workflows.spec import load_dir, load_file
from forgejobs.workflows.worker import WorkerWorkflows, outbox_entry
from tests.helpers import cli_env, run_cli, wait_for

# -- jobs and workflows -----------------------------------------------------------------------------------


class EdgeInput(BaseModel):
    user_id: str
    org_ids: list[str] = []
    count: int = 0


class Profile(BaseModel):
    user_id: str
    email: str


class Load(Job, queue="edges"):
    user_id: str

    def perform(self, ctx: Context[None]) -> Profile:
        return Profile(user_id=self.user_id, email=f"{self.user_id}@example.com")


class Mail(Job, queue="edges"):
    email: str

    def perform(self, ctx: Context[None]) -> str:
        return f"mailed {self.email}"


class Nothing(Job, queue="edges"):
    user_id: str

    def perform(self, ctx: Context[None]) -> None:
        return None


class Charge(Job, queue="edges"):
    org_id: str

    def perform(self, ctx: Context[None]) -> int:
        return len(self.org_id)


class Refund(Job, queue="edges-undo"):
    org_id: str

    def perform(self, ctx: Context[None]) -> str:
        return f"refunded {self.org_id}"


class Forget(Job, queue="edges-undo"):
    user_id: str
    reason: str = "undo"

    def perform(self, ctx: Context[None]) -> None:
        return None


class Total(Job, queue="edges"):
    amounts: list[int]

    def perform(self, ctx: Context[None]) -> int:
        return sum(self.amounts)


class Flaky(Job, queue="edges", attempts=2):
    user_id: str

    def perform(self, ctx: Context[None]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return f"ok on attempt {ctx.attempt}"


class Labelled(Job, queue="edges"):
    """A plain job whose payload has a field called `workflow`, as a step job's options have a tag so called."""

    workflow: str

    def perform(self, ctx: Context[None]) -> str:
        return self.workflow


JOBS: list[type[Job]] = [Load, Mail, Nothing, Charge, Refund, Forget, Total, Flaky, Labelled]
MODULE = "tests.test_workflow_edges"
INPUT = f"{MODULE}:EdgeInput"


class EdgeChain(Workflow, input=EdgeInput, name="edges_chain"):
    load = Step(Load, {"user_id": "input.user_id"})
    mail = Step(Mail, {"email": "steps.load.output.email"})
    flow = chain(load, mail)


class EdgeSaga(Workflow, input=EdgeInput, name="edges_saga"):
    charge = Step(Charge, {"org_id": "item"}, for_each="input.org_ids", compensate=Refund)
    total = Step(Total, {"amounts": "steps.charge.output"}, after=[charge])


class EdgeRetry(Workflow, input=EdgeInput, name="edges_retry"):
    flaky = Step(Flaky, {"user_id": "input.user_id"})


# -- types: does one declared type fit a field of another? ---------------------------------------------------


class Base(BaseModel):
    id: int


class Derived(Base):
    name: str = ""


class Other(BaseModel):
    id: int
    label: str


class Keys(TypedDict):
    org: str
    seats: int


UserId = NewType("UserId", str)


def test_annotated_unions_and_optional_are_read_through_their_wrappers() -> None:
    assert wt.strip(Annotated[Annotated[int, "inner"], "outer"]) is int
    assert wt.members(Annotated[int | None, "doc"]) == (int, type(None))
    assert wt.members(str) == (str,)
    assert wt.optional(Any) is Any
    assert wt.optional(int | None) == int | None
    assert wt.optional(int) == int | None
    assert wt.accepts_none(Any) and wt.accepts_none(int | None) and wt.accepts_none(typing.Optional[Any])  # noqa: UP045
    assert not wt.accepts_none(int)


@pytest.mark.parametrize(
    ("tp", "item"),
    [
        (Any, Any),
        (list, Any),
        (list[int], int),
        (tuple[int, ...], int),
        (tuple[int, int], int),
        (tuple[int, str], typing.Union[int, str]),  # noqa: UP007
        (Sequence[str], str),
        (set[bytes], bytes),
        (Annotated[list[float], "doc"], float),
        (str, None),
        (bytes, None),
        (dict[str, int], None),
        (int, None),
        (Literal["a"], None),
    ],
)
def test_item_type_is_the_element_of_a_list_like_type_and_none_otherwise(tp: Any, item: Any) -> None:
    assert wt.item_type(tp) == item


def test_field_type_reads_models_mappings_typed_dicts_and_optional_outputs() -> None:
    assert wt.field_type(Any, "x") == (Any, None)
    assert wt.field_type(Other, "label") == (str, None)
    assert wt.field_type(dict[str, float], "anything") == (float, None)
    assert wt.field_type(dict, "anything") == (Any, None)
    assert wt.field_type(Other | None, "id") == (int | None, None)  # a missing output has no field either


@pytest.mark.parametrize(
    ("tp", "name", "problem"),
    [
        (Other, "lable", "Other has no field 'lable' (fields: id, label)"),
        (type(None), "id", "the output is None (perform returns nothing), so it has no field 'id'"),
        (int, "id", "int has no fields (only a model, TypedDict or mapping does)"),
        (list[str], "id", "list[str] has no fields (only a model, TypedDict or mapping does)"),
        (Other | None, "nope", "Other has no field 'nope' (fields: id, label)"),
    ],
)
def test_field_type_names_what_has_no_such_field(tp: Any, name: str, problem: str) -> None:
    found, said = wt.field_type(tp, name)
    assert said == problem
    assert wt.accepts_none(found)  # Any (or optional Any): nothing further is refused because of it


def test_field_type_reads_the_keys_of_a_typed_dict() -> None:
    assert wt.field_type(Keys, "seats") == (int, None)
    assert wt.field_type(Keys, "org_id") == (Any, "Keys has no key 'org_id' (keys: org, seats)")


class Card(BaseModel):
    id: str
    last4: str


class Invoice(BaseModel):
    id: int


def test_a_field_of_a_union_of_models_is_the_union_of_its_types_when_every_member_has_it() -> None:
    assert wt.field_type(Card | Invoice, "id") == (str | int, None)
    assert wt.field_type(Card | Invoice | None, "id") == (str | int | None, None)
    assert wt.field_type(Card | Invoice, "last4") == (
        Any,
        "Card | Invoice: Invoice has no field 'last4' (fields: id)",
    )


@pytest.mark.parametrize(
    ("tp", "shown"),
    [
        (type(None), "None"),
        (Any, "Any"),
        (int, "int"),
        (Profile | None, "Profile | None"),
        (Annotated[list[str], "doc"], "list[str]"),
        (dict[str, list[int]], "dict[str, list[int]]"),
        (Literal["a"], "Literal['a']"),
    ],
)
def test_show_writes_a_type_as_a_reader_would(tp: Any, shown: str) -> None:
    assert wt.show(tp) == shown


@pytest.mark.parametrize(
    ("source", "target", "fit"),
    [
        (Any, int, True),
        (str, Any, True),
        (str, object, True),
        (int | str, int, False),  # every member of a union must fit
        (int | float, float, True),
        (int, str | None, False),
        (int, float | None, True),  # one member of the target suffices
        (Literal["a", "b"], str, True),
        (Literal["a"], Literal["a", "b"], True),  # a literal's values may fit a Literal field
        (Literal["c"], Literal["a", "b"], False),
        (Literal[1], str, False),
        (str, Literal["a"], False),  # a plain type never fits a Literal: its value is not known here
        (type(None), type(None), True),
        (type(None), int, False),
        (int, type(None), False),
        (list[int], list[float], True),
        (list[str], list[int], False),
        (list[int], int, False),  # a list is not a scalar
        (int, list[int], False),
        (Any, list[int], True),
        (UserId, int, True),  # a form the checker does not read is not refused
        (int, float, True),
        (bool, int, False),  # a flag is not a count
        (int, bool, False),
        (dict[str, int], dict[str, float], True),
        (dict[str, str], Mapping[str, int], False),
        (dict, dict[str, int], True),  # an unparametrised mapping is not refused
        (Derived, Base, True),
        (Base, Derived, False),
        (Other, Base, False),
        (Annotated[int, "doc"], Annotated[float, "doc"], True),
    ],
)
def test_fits_refuses_only_mismatches_it_can_name(source: Any, target: Any, fit: bool) -> None:
    assert wt.fits(source, target) is fit


# -- plans: each mistake one error naming file, line and key ------------------------------------------------


def line_of(text: str, needle: str) -> int:
    """The 1-based number of the first line of `text` that contains `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _resolve(name: str) -> type[Job] | None:
    return {job.job_name(): job for job in JOBS}.get(name)


def load(tmp_path: Path, body: str, name: str = "flow.yaml") -> tuple[list[Plan], list[str], Path, str]:
    """Write `body` to `tmp_path/name` and load it with this module's jobs."""
    text = dedent(body)
    path = tmp_path / name
    path.write_text(text)
    plans, problems = load_file(path, _resolve, [job.job_name() for job in JOBS])
    return plans, problems, path, text


def one_problem(tmp_path: Path, body: str) -> tuple[str, Path, str]:
    plans, problems, path, text = load(tmp_path, body)
    assert plans == [] and len(problems) == 1, problems
    return problems[0], path, text


FLOW = f"""
workflows:
  signup:
    input: {INPUT}
    steps:
      load:
        job: edges.load
        inputs: {{user_id: input.user_id}}
      mail:
        job: edges.mail
        after: [load]
        inputs: {{email: steps.load.output.email}}
"""


def test_the_reference_flow_loads_without_problems(tmp_path: Path) -> None:
    plans, problems, _path, _text = load(tmp_path, FLOW)
    assert problems == []
    assert [p.name for p in plans] == ["signup"] and list(plans[0].steps) == ["load", "mail"]


@pytest.mark.parametrize(
    ("edit", "key_line", "message"),
    [
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: item}"),
            "inputs: {email: item}",
            "workflows.signup.steps.mail.inputs.email: item: 'item' is only defined in a step with for_each",
        ),
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: steps.lod.output.email}"),
            "inputs: {email: steps.lod",
            "workflows.signup.steps.mail.inputs.email: no step named 'lod' (did you mean 'load'?)",
        ),
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: load.email}"),
            "inputs: {email: load.email}",
            "workflows.signup.steps.mail.inputs.email: 'load.email' is not a reference: write input.<field>, "
            "steps.<step>.output[.<field>] or item[.<field>]",
        ),
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: steps.load}"),
            "inputs: {email: steps.load}",
            "workflows.signup.steps.mail.inputs.email: 'steps.load' is not a reference",
        ),
        (
            (
                "inputs: {email: steps.load.output.email}",
                "inputs: {email: steps.load.output.email, mail: input.user_id}",
            ),
            "mail: input.user_id",
            "workflows.signup.steps.mail.inputs.mail: edges.mail has no field 'mail' (did you mean 'email'?)",
        ),
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: steps.load.output.email, zzz: input.count}"),
            "zzz: input.count",
            "workflows.signup.steps.mail.inputs.zzz: edges.mail has no field 'zzz'",
        ),
        (
            ("  mail:\n        job: edges.mail", "  Mail:\n        job: edges.mail"),
            "Mail:",
            "workflows.signup.steps.Mail: step names are lower-case letters, digits and '_'",
        ),
        (
            ("  signup:", "  Sign Up:"),
            "Sign Up:",
            "workflows.Sign Up: workflow names are lower-case letters, digits, '.', '_', '-'",
        ),
        (
            ("      load:\n        job: edges.load", "      load:\n        job: edges.nothing"),
            "inputs: {email: steps.load",
            "workflows.signup.steps.mail.inputs.email: steps.load.output.email: the output is None (perform returns "
            "nothing), so it has no field 'email'",
        ),
        (
            ("inputs: {email: steps.load.output.email}", "inputs: {email: {value: 12}}"),
            "inputs: {email: {value: 12}}",
            "workflows.signup.steps.mail.inputs.email: 12 does not fit str: Input should be a valid string",
        ),
    ],
)
def test_a_bad_reference_or_name_is_one_error_naming_file_line_and_key(
    tmp_path: Path, edit: tuple[str, str], key_line: str, message: str
) -> None:
    assert edit[0] in FLOW
    problem, path, text = one_problem(tmp_path, FLOW.replace(edit[0], edit[1], 1))
    assert problem.startswith(f"{path}:{line_of(text, key_line)}: "), problem
    assert message in problem, problem
    if "did you mean" not in message and message.endswith("'"):
        assert "did you mean" not in problem  # no hint when nothing is close


def test_a_step_without_steps_is_refused(tmp_path: Path) -> None:
    problem, path, text = one_problem(tmp_path, f"workflows:\n  empty:\n    input: {INPUT}\n    steps: {{}}\n")
    assert problem == f"{path}:{line_of(text, 'steps:')}: workflows.empty.steps: a workflow needs at least one step"


def test_a_step_output_of_none_does_not_fit_a_string_field(tmp_path: Path) -> None:
    body = FLOW.replace("job: edges.load", "job: edges.nothing").replace("steps.load.output.email", "steps.load.output")
    problem, path, text = one_problem(tmp_path, body)
    assert problem == (
        f"{path}:{line_of(text, 'inputs: {email')}: workflows.signup.steps.mail.inputs.email: "
        "steps.load.output is None, which does not fit edges.mail.email: str"
    )


def test_an_output_whose_annotation_cannot_be_read_is_not_checked(tmp_path: Path) -> None:
    class Hidden(BaseModel):  # local: the return annotation below cannot be evaluated from the module
        email: str

    class Opaque(Job, queue="edges"):
        user_id: str

        def perform(self, ctx: Context[None]) -> Hidden:
            return Hidden(email=self.user_id)

    class Untyped(Job, queue="edges"):
        user_id: str

        def perform(self, ctx: Context[None]):  # type: ignore[no-untyped-def]  # deliberately undeclared
            return {"email": self.user_id}

    assert output_type(Opaque) is Any and output_type(Untyped) is Any
    assert output_type(Load) is Profile and output_type(Nothing) is type(None)
    for producer in (Opaque, Untyped):
        plan = Plan(
            name="opaque",
            input_model=EdgeInput,
            steps={
                "load": StepPlan("load", producer.job_name(), {"user_id": Binding(ref="input.user_id")}),
                "mail": StepPlan(
                    "mail", "edges.mail", {"email": Binding(ref="steps.load.output.no.such.path")}, after=("load",)
                ),
            },
        )
        jobs = {producer.job_name(): producer, "edges.mail": Mail}
        assert check_plan(plan, jobs.get, jobs, lambda key: "here") == []


def test_binding_describes_a_reference_by_its_path_and_a_literal_by_its_value() -> None:
    assert Binding(ref="steps.load.output.email").describe() == "steps.load.output.email"
    assert Binding(value={"month": "2026-11"}).describe() == "the value {'month': '2026-11'}"
    assert Binding(value=None).describe() == "the value None"


def test_a_python_workflow_whose_input_is_not_a_model_is_refused_at_its_class() -> None:
    with pytest.raises(WorkflowError) as caught:

        class NotAModel(Workflow, input=dict, name="edges_not_a_model"):  # type: ignore[arg-type]
            load = Step(Load, {"user_id": "input.user_id"})

    text = str(caught.value)
    assert text.startswith("tests/test_workflow_edges.py:"), text
    assert "NotAModel.input: must be a Pydantic model class, got <class 'dict'>" in text
    # the check goes on with an empty model, so a field it refers to is reported too
    assert "NotAModel.steps.load.inputs.user_id: input.user_id: BaseModel has no field 'user_id'" in text


# -- YAML files: what is wrong with the file itself ----------------------------------------------------------


@pytest.mark.parametrize(
    ("input_line", "message"),
    [
        ("tests.no_such_module_here:EdgeInput", "cannot import 'tests.no_such_module_here': ModuleNotFoundError: "),
        (f"{MODULE}:NoSuchInput", f"{MODULE} has no 'NoSuchInput'"),
        (f"{MODULE}:line_of", f"{MODULE}:line_of is not a Pydantic model class"),
        (f"{MODULE}:Profile", None),  # a model: accepted
    ],
)
def test_an_input_that_is_not_an_importable_model_names_the_input_line(
    tmp_path: Path, input_line: str, message: str | None
) -> None:
    if message is None:
        plans, problems, _path, _text = load(tmp_path, FLOW.replace(INPUT, input_line))
        assert problems == [] and plans[0].input_model is Profile
        return
    problem, path, text = one_problem(tmp_path, FLOW.replace(INPUT, input_line))
    assert problem.startswith(f"{path}:{line_of(text, 'input:')}: workflows.signup.input: {message}"), problem


def test_a_literal_with_other_keys_than_value_is_refused(tmp_path: Path) -> None:
    problem, path, text = one_problem(tmp_path, FLOW.replace("{email: steps.load.output.email}", "{email: {val: x}}"))
    assert problem == (
        f"{path}:{line_of(text, 'signup:')}: workflows.signup.steps.mail: a literal is written {{value: ...}}; "
        "a reference is a plain string"
    )


def test_a_bad_literal_in_a_compensation_is_refused_too(tmp_path: Path) -> None:
    body = FLOW.replace(
        "inputs: {user_id: input.user_id}\n",
        "inputs: {user_id: input.user_id}\n        compensate: {job: edges-undo.forget, inputs: {reason: {v: 1}}}\n",
    )
    problem, _path, _text = one_problem(tmp_path, body)
    assert "workflows.signup.steps.load: a literal is written {value: ...}" in problem


def test_compensate_given_as_a_job_name_takes_the_fields_it_shares_with_the_step(tmp_path: Path) -> None:
    body = FLOW.replace(
        "inputs: {user_id: input.user_id}\n",
        "inputs: {user_id: input.user_id}\n        compensate: edges-undo.forget\n",
    )
    plans, problems, _path, _text = load(tmp_path, body)
    assert problems == []
    comp = plans[0].steps["load"].compensate
    assert comp is not None and comp.job == "edges-undo.forget"
    assert dict(comp.inputs) == {"user_id": Binding(ref="input.user_id")}  # reason keeps its default
    assert plans[0].jobs["edges-undo.forget"] is Forget


def test_compensate_naming_no_job_is_reported_at_its_key(tmp_path: Path) -> None:
    body = FLOW.replace(
        "inputs: {user_id: input.user_id}\n",
        "inputs: {user_id: input.user_id}\n        compensate: edges-undo.forgot\n",
    )
    problem, path, text = one_problem(tmp_path, body)
    assert problem == (
        f"{path}:{line_of(text, 'compensate:')}: workflows.signup.steps.load.compensate.job: "
        "no job named 'edges-undo.forgot' (did you mean 'edges-undo.forget'?)"
    )


def test_a_compensation_with_explicit_inputs_is_checked_against_its_job(tmp_path: Path) -> None:
    body = FLOW.replace(
        "inputs: {user_id: input.user_id}\n",
        "inputs: {user_id: input.user_id}\n"
        "        compensate: {job: edges-undo.forget,\n"
        "                     inputs: {user_id: steps.load.output.user_id, reason: {value: 3}}}\n",
    )
    problem, path, text = one_problem(tmp_path, body)
    assert problem == (
        f"{path}:{line_of(text, 'reason: {value: 3}')}: workflows.signup.steps.load.compensate.inputs.reason: "
        "3 does not fit str: Input should be a valid string"
    )  # and its own output (steps.load.output) is upstream of the compensation: not refused


def test_a_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text("workflows: [unclosed\n")
    plans, problems = load_file(path, _resolve, [])
    assert plans == [] and len(problems) == 1
    assert problems[0].startswith(f"{path}: not valid YAML: ")


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_bytes(b"workflows:\n  caf\xe9: {}\n")
    assert load_file(path, _resolve, []) == ([], [f"{path}: not UTF-8 text (byte 16): save the spec as UTF-8"])


def test_an_empty_file_declares_nothing_and_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text("# nothing yet\n")
    assert load_file(path, _resolve, []) == ([], [])
    path.write_text("- signup\n")
    assert load_file(path, _resolve, []) == (
        [],
        [f"{path}: top level must be a mapping with a 'workflows' key, got list"],
    )


def test_a_missing_workflows_folder_holds_no_workflows(tmp_path: Path) -> None:
    assert load_dir(tmp_path / "absent", _resolve, []) == ({}, [])


def test_a_workflow_declared_in_two_files_keeps_the_first_and_names_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(dedent(FLOW))
    (tmp_path / "b.yml").write_text(
        dedent(FLOW).replace("job: edges.mail", "job: edges.mail\n        on_failure: continue")
    )
    (tmp_path / "notes.txt").write_text("not a spec")
    plans, problems = load_dir(tmp_path, _resolve, [])
    assert problems == [f"{tmp_path / 'b.yml'}: workflows.signup: already declared in {tmp_path / 'a.yaml'}"]
    assert list(plans) == ["signup"] and plans["signup"].source == str(tmp_path / "a.yaml")
    assert plans["signup"].steps["mail"].on_failure == "fail"


# -- the fake queue's reporting --------------------------------------------------------------------------


def test_a_retried_step_is_not_final_and_its_success_releases_the_run(fake_queue: FakeQueue) -> None:
    run = EdgeRetry.start(user_id="usr_1")
    fake_queue.perform_one(raise_on_failure=False)  # attempt 1 fails: a retry, not an outcome of the step
    assert run.status() == "running"
    assert run.steps()["flaky"].finished == 0 and run.steps()["flaky"].status == "running"
    fake_queue.drain()
    assert run.status() == "succeeded"
    assert run.output("flaky") == "ok on attempt 2"


def test_a_plain_job_with_a_field_named_workflow_is_not_taken_for_a_step(fake_queue: FakeQueue) -> None:
    running = EdgeChain.start(user_id="usr_1")
    Labelled.enqueue(workflow="edges_chain")
    result = fake_queue.drain(queue="edges")
    assert (result.succeeded, result.failed) == (3, 0)
    assert fake_queue.enqueued(Labelled) == [Labelled(workflow="edges_chain")]
    assert running.status() == "succeeded"  # its own two steps, nothing more
    recorded = {k: v for k, v in running.refresh().items() if k.startswith("d:")}
    assert recorded == {"d:load:0": "done", "d:mail:0": "done"}


def test_report_ignores_a_job_that_carries_no_workflow_tag(fake_queue: FakeQueue) -> None:
    handle = Load.enqueue(user_id="usr_1")
    backend = fake_queue.client.backend
    assert isinstance(backend, FakeBackend)
    stored = backend.jobs[handle.id]
    assert '"workflow"' not in stored.envelope
    run_module._memory.pop(backend, None)
    report(fake_queue.client, stored, Succeeded(value={"user_id": "usr_1"}, name="edges.load"))
    assert backend not in run_module._memory  # returned before it looked for a run store


# -- the worker side: outbox entries ---------------------------------------------------------------------


def _envelope(options: dict[str, Any], data: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"name": "edges.load", "data": data or {}, "options": options}, separators=(",", ":")).encode()


def test_outbox_entry_records_a_step_jobs_final_outcome() -> None:
    done = json.loads(outbox_entry(_envelope({"workflow": "r1|load|0"}), "done", b'{"a":1}'))
    assert (done["tag"], done["mode"], done["out"], done["err"]) == ("r1|load|0", "done", '{"a":1}', "")
    failed = json.loads(outbox_entry(_envelope({"workflow": "r1|load|0"}), "failed", "boom"))
    assert (failed["out"], failed["err"]) == ("", "boom")
    cancelled = json.loads(outbox_entry(_envelope({"workflow": "r1|load|0"}), "cancelled", b""))
    assert cancelled["err"] == "cancelled"  # no error text: the mode says what happened
    assert isinstance(done["at"], int) and done["at"] > 0


@pytest.mark.parametrize(
    ("envelope", "mode"),
    [
        (_envelope({"workflow": "r1|load|0"}), "retry"),  # not final: the step is not done yet
        (_envelope({}), "done"),  # not a step job
        (_envelope({}, {"workflow": "billing"}), "done"),  # a payload field named workflow is no tag
        (_envelope({"workflow": 7}), "done"),
        (b'{"options":{"workflow":"r1|load|0"', "done"),  # not JSON: nothing to report
    ],
)
def test_outbox_entry_is_empty_for_what_is_not_a_final_step_outcome(envelope: bytes, mode: str) -> None:
    assert outbox_entry(envelope, mode, b"1") == ""


# -- the worker side: recovery on Redis -------------------------------------------------------------------


@pytest.fixture
def edge_client(conn: redis.Redis) -> Iterator[Client]:
    registry = Registry(JOBS, Specs(queues={"edges": QueueSpec(), "edges-undo": QueueSpec()}))
    c = Client(RedisBackend(conn), registry)
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture
def recovery(edge_client: Client) -> WorkerWorkflows:
    return WorkerWorkflows(edge_client, [QueueKeys("forgejobs", q) for q in ("edges", "edges-undo")])


def test_an_active_run_whose_record_vanished_leaves_the_active_set(
    edge_client: Client, recovery: WorkerWorkflows, conn: redis.Redis
) -> None:
    gone = start(EdgeChain.plan, {"user_id": "usr_1"}, client=edge_client)
    kept = start(EdgeChain.plan, {"user_id": "usr_2"}, client=edge_client)
    store = recovery.store
    assert set(store.active_runs()) == {gone.id, kept.id}
    conn.delete(*store.keys(gone.id).all)
    recovery.recover()
    assert store.active_runs() == [kept.id]
    assert kept.status() == "running"


def test_runs_started_within_one_millisecond_are_listed_in_the_order_they_started(
    edge_client: Client, recovery: WorkerWorkflows, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = types.SimpleNamespace(time_ns=lambda: 1_764_567_890_123_456_789)  # every start in the same ms
    monkeypatch.setattr(engine_module, "time", frozen)
    started = [start(EdgeChain.plan, {"user_id": f"usr_{i}"}, client=edge_client).id for i in range(40)]
    assert recovery.store.runs() == started
    assert recovery.store.active_runs() == started


def test_a_step_left_ready_without_any_instance_is_enqueued_after_a_whole_pass(
    edge_client: Client, recovery: WorkerWorkflows, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "release", lambda self, run_id, step: None)  # the starter died before releasing
        run = start(EdgeChain.plan, {"user_id": "usr_1"}, client=edge_client)
    job_key = QueueKeys("forgejobs", "edges").job(job_id(run.id, "load", 0))
    assert recovery.store.ready(run.id) == ["load"] and not conn.exists(job_key)
    recovery.recover()  # first sight: its releaser may still be at work
    assert recovery.store.ready(run.id) == ["load"] and not conn.exists(job_key)
    recovery.recover()
    assert recovery.store.ready(run.id) == []
    assert conn.exists(job_key)
    assert run.steps()["load"].instances == 1 and run.status() == "running"


def test_a_compensation_job_removed_by_hand_is_recorded_as_cancelled(
    edge_client: Client, recovery: WorkerWorkflows, conn: redis.Redis
) -> None:
    run = start(EdgeSaga.plan, {"user_id": "usr_1", "org_ids": ["a", "bb"]}, client=edge_client)
    engine = recovery.engine
    engine.finished(f"{run.id}|charge|0", "done", "1")
    engine.finished(f"{run.id}|charge|1", "failed", error="card declined")
    assert run.status() == "compensating"
    refund = job_id(run.id, "~0", 0)
    assert conn.exists(QueueKeys("forgejobs", "edges-undo").job(refund))  # on the compensation's own queue
    recovery.recover()
    recovery.recover()
    assert run.status() == "compensating"  # still queued on edges-undo: recovery waits for it
    assert edge_client.backend.remove_waiting(refund) == "removed"
    recovery.recover()  # first sight: the outbox path may still report it
    assert run.status() == "compensating"
    recovery.recover()
    assert run.status() == "failed"
    assert run.compensations() == [("charge:0", "cancelled")]
    assert "card declined" in (run.error() or "")


def test_retention_keeps_old_runs_that_are_running_or_ended_recently(
    edge_client: Client, recovery: WorkerWorkflows, conn: redis.Redis
) -> None:
    running = start(EdgeChain.plan, {"user_id": "usr_1"}, client=edge_client)
    ended = start(EdgeChain.plan, {"user_id": "usr_2"}, client=edge_client)
    assert ended.cancel() and ended.status() == "cancelled"
    index = recovery.store.index
    conn.zadd(index, {running.id: 1, ended.id: 1})  # both started eight days ago and more
    recovery.recover()
    assert running.status() == "running" and ended.status() == "cancelled"
    assert conn.zscore(index, running.id) == 1 and conn.zscore(index, ended.id) == 1
    conn.hset(recovery.store.keys(ended.id).run, "t1", "1")  # now it also ended long ago
    recovery.recover()
    assert conn.zscore(index, ended.id) is None and conn.zscore(index, running.id) == 1


def test_a_recovery_pass_that_raises_is_logged_and_the_next_pass_runs(
    recovery: WorkerWorkflows, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    passes: list[int] = []

    def broken() -> None:
        passes.append(1)
        raise RuntimeError("a bug in one pass")

    monkeypatch.setattr(worker_module, "PASS_INTERVAL", 0.02)
    monkeypatch.setattr(recovery, "recover", broken)
    halt = threading.Event()
    thread = threading.Thread(target=recovery.run, args=(halt,), daemon=True)
    with caplog.at_level(logging.ERROR, logger="forgejobs.workflows"):
        thread.start()
        try:
            wait_for(lambda: len(passes) >= 2, timeout=10, what="a second pass after the first raised")
            assert thread.is_alive()
        finally:
            halt.set()
            thread.join(10)
    assert not thread.is_alive()
    failures = [r for r in caplog.records if r.getMessage() == "workflow recovery pass failed"]
    assert failures and failures[0].exc_info is not None and "a bug in one pass" in str(failures[0].exc_info[1])


# -- `forgejobs workflows` ------------------------------------------------------------------------------


@pytest.fixture
def cli(redis_url: str, tmp_path: Path) -> dict[str, str]:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "queues.yaml").write_text("queues:\n  edges: {concurrency: 1}\n  edges-undo: {concurrency: 1}\n")
    return cli_env(redis_url, jobs=MODULE, specs=specs)


def recovery_index(client: Client) -> str:
    index: str = engine_for(client).store.index  # type: ignore[attr-defined]
    return index


def test_list_shows_a_table_filters_by_status_and_keeps_the_newest(
    edge_client: Client, cli: dict[str, str], conn: redis.Redis
) -> None:
    first = start(EdgeChain.plan, {"user_id": "usr_1"}, key="k-first", client=edge_client)
    assert first.cancel()
    second = start(EdgeChain.plan, {"user_id": "usr_2"}, client=edge_client)
    conn.zadd(recovery_index(edge_client), {first.id: 1, second.id: 2})  # a fixed order: first is older

    code, out = run_cli("workflows", "list", env=cli)
    assert code == 0, out
    assert "2 workflow run(s)" in out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
    assert [row[:4] for row in rows] == [
        [second.id, "edges_chain", "running", "-"],  # newest first; no key
        [first.id, "edges_chain", "cancelled", "k-first"],
    ]
    assert stamp.match(rows[0][4]) and rows[0][5] == "-"  # not ended
    assert stamp.match(rows[1][4]) and stamp.match(rows[1][5])

    code, out = run_cli("workflows", "list", "--status", "cancelled", "--json", env=cli)
    listed = json.loads(out)
    assert [(r["id"], r["status"], r["key"]) for r in listed] == [(first.id, "cancelled", "k-first")]
    assert listed[0]["ended"] != "-" and listed[0]["started"] != "-"

    code, out = run_cli("workflows", "list", "--limit", "1", "--json", env=cli)
    assert [r["id"] for r in json.loads(out)] == [second.id]
    assert json.loads(out)[0]["ended"] == "-"


def test_show_draws_pending_steps_without_output_and_the_compensations(
    edge_client: Client, cli: dict[str, str]
) -> None:
    run = start(EdgeSaga.plan, {"user_id": "usr_1", "org_ids": ["a", "bb"]}, client=edge_client)
    engine = engine_for(edge_client)
    engine.finished(f"{run.id}|charge|0", "done", "1")
    code, out = run_cli("workflows", "show", run.id, env=cli)
    assert code == 0, out
    assert f"edges_saga {run.id}: running" in out
    assert "charge edges.charge running ×2 (1 reported, 0 failed)" in out
    assert "total edges.total waiting" in out and "→" not in out  # nothing done yet as a whole step
    assert "compensations" not in out

    engine.finished(f"{run.id}|charge|1", "failed", error="card declined")
    engine.finished(f"{run.id}|~0|0", "done", '"refunded a"')
    code, out = run_cli("workflows", "show", run.id, env=cli)
    assert f"edges_saga {run.id}: failed (step charge[1] failed: card declined)" in out
    assert "charge edges.charge failed ×2 (2 reported, 1 failed)" in out
    assert "total edges.total cancelled" in out
    assert "compensations (newest completed first)" in out and "charge:0 done" in out
    assert json.loads(run_cli("workflows", "show", run.id, "--json", env=cli)[1])["compensations"] == [
        ["charge:0", "done"]
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{user_id:", "error: --data is not JSON: Expecting property name enclosed in double quotes"),
        ('["usr_1"]', "error: --data must be a JSON object"),
    ],
)
def test_start_refuses_data_that_is_not_a_json_object(
    cli: dict[str, str], conn: redis.Redis, data: str, message: str
) -> None:
    code, out = run_cli("workflows", "start", "edges_chain", "--data", data, env=cli)
    assert code == 1
    assert message in out
    assert conn.zcard("forgejobs:workflows") == 0  # nothing started


def test_start_then_cancel_from_the_command_line(edge_client: Client, cli: dict[str, str]) -> None:
    code, out = run_cli("workflows", "start", "edges_chain", "--data", '{"user_id": "usr_1"}', env=cli)
    assert code == 0, out
    run_id = out.strip()
    assert WorkflowRun(engine_for(edge_client), run_id).status() == "running"
    code, out = run_cli("workflows", "cancel", run_id, env=cli)
    assert (code, out.strip()) == (0, f"cancelled {run_id}: cancelled")  # nothing ran: it ends at once
    code, out = run_cli("workflows", "cancel", run_id, env=cli)
    assert code == 1 and "has already ended (cancelled): nothing to cancel" in out


def test_cancel_of_an_unknown_run_says_so(cli: dict[str, str]) -> None:
    code, out = run_cli("workflows", "cancel", "wf_nope", env=cli)
    assert code == 1
    assert "error: no workflow run 'wf_nope'" in out


def test_runs_summary_counts_only_runs_that_have_not_ended(edge_client: Client) -> None:
    assert runs_summary(edge_client) is None
    ended = start(EdgeChain.plan, {"user_id": "usr_1"}, client=edge_client)
    assert ended.cancel()
    assert ended.id in engine_for(edge_client).store.active_runs()  # type: ignore[attr-defined]
    assert runs_summary(edge_client) is None  # ended, though no recovery pass has settled it yet
    start(EdgeChain.plan, {"user_id": "usr_2"}, client=edge_client)
    start(EdgeChain.plan, {"user_id": "usr_3"}, client=edge_client)
    assert runs_summary(edge_client) == "workflow runs: 2 running (forgejobs workflows list)"
