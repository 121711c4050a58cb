"""Workflows on the fake queue: `fake_queue.drain()` runs a whole run on the fake clock, without Redis."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from forgejobs import Context, Job, Unrecoverable
from forgejobs.registry import Registry
from forgejobs.specs import QueueSpec, Specs
from forgejobs.testing import FakeQueue
from forgejobs.workflows import Step, Workflow, WorkflowError, chain, group, start_workflow


class SignUp(BaseModel):
    user_id: str
    org_ids: list[str] = []
    fail_org: str = ""


class Stored(BaseModel):
    user_id: str
    email: str


class StoreUser(Job, queue="wf"):
    user_id: str

    def perform(self, ctx: Context[None]) -> Stored:
        return Stored(user_id=self.user_id, email=f"{self.user_id}@example.com")


class Welcome(Job, queue="wf"):
    email: str

    def perform(self, ctx: Context[None]) -> str:
        return f"welcomed {self.email}"


class Audit(Job, queue="wf"):
    user_id: str

    def perform(self, ctx: Context[None]) -> int:
        return len(self.user_id)


class Report(Job, queue="wf"):
    greeting: str
    audit: int

    def perform(self, ctx: Context[None]) -> str:
        return f"{self.greeting} / {self.audit}"


class Bill(Job, queue="wf", attempts=2):
    org_id: str
    fail_org: str = ""

    def perform(self, ctx: Context[None]) -> int:
        if self.org_id == self.fail_org:
            raise Unrecoverable(f"cannot bill {self.org_id}")
        return 10 * len(self.org_id)


class Total(Job, queue="wf"):
    amounts: list[int | None]

    def perform(self, ctx: Context[None]) -> int:
        return sum(a or 0 for a in self.amounts)


class Unbill(Job, queue="wf"):
    org_id: str

    def perform(self, ctx: Context[None]) -> str:
        return f"refunded {self.org_id}"


class DeleteUser(Job, queue="wf"):
    user_id: str

    def perform(self, ctx: Context[None]) -> None:
        return None


class Diamond(Workflow, input=SignUp, name="fake_diamond"):
    store = Step(StoreUser, {"user_id": "input.user_id"})
    welcome = Step(Welcome, {"email": "steps.store.output.email"})
    audit = Step(Audit, {"user_id": "steps.store.output.user_id"})
    report = Step(Report, {"greeting": "steps.welcome.output", "audit": "steps.audit.output"})
    flow = chain(store, group(welcome, audit), report)


class Billing(Workflow, input=SignUp, name="fake_billing"):
    bill = Step(Bill, {"org_id": "item", "fail_org": "input.fail_org"}, for_each="input.org_ids", on_failure="continue")
    total = Step(Total, {"amounts": "steps.bill.output"}, after=[bill])


class Saga(Workflow, input=SignUp, name="fake_saga", timeout=timedelta(minutes=5)):
    store = Step(StoreUser, {"user_id": "input.user_id"}, compensate=DeleteUser)
    bill = Step(
        Bill,
        {"org_id": "item", "fail_org": "input.fail_org"},
        for_each="input.org_ids",
        compensate=Unbill,
        after=[store],
    )
    total = Step(Total, {"amounts": "steps.bill.output"}, after=[bill])


def test_a_diamond_runs_every_step_with_the_outputs_it_waits_for(fake_queue: FakeQueue) -> None:
    run = Diamond.start(user_id="usr_1")
    assert [type(j).__name__ for j in fake_queue.enqueued(StoreUser)] == ["StoreUser"]
    assert fake_queue.enqueued(Welcome) == []  # released only once store has finished

    result = fake_queue.drain()

    assert result.succeeded == 4
    assert fake_queue.enqueued(Welcome) == [Welcome(email="usr_1@example.com")]
    assert fake_queue.enqueued(Audit) == [Audit(user_id="usr_1")]
    assert fake_queue.enqueued(Report) == [Report(greeting="welcomed usr_1@example.com", audit=5)]
    assert run.status() == "succeeded"
    assert run.outputs() == {
        "store": {"user_id": "usr_1", "email": "usr_1@example.com"},
        "welcome": "welcomed usr_1@example.com",
        "audit": 5,
        "report": "welcomed usr_1@example.com / 5",
    }
    assert {s.name: s.status for s in run.steps().values()} == dict.fromkeys(
        ["store", "welcome", "audit", "report"], "done"
    )


def test_fan_out_then_fan_in_gets_every_output_in_order(fake_queue: FakeQueue) -> None:
    orgs = [f"org_{i:03d}" for i in range(25)]
    run = Billing.start(user_id="usr_1", org_ids=orgs)
    fake_queue.drain()
    assert sorted(b.org_id for b in fake_queue.enqueued(Bill)) == orgs
    assert fake_queue.enqueued(Total) == [Total(amounts=[70] * 25)]
    assert run.output("total") == 1750 and run.status() == "succeeded"


def test_an_empty_fan_out_releases_its_dependants_at_once(fake_queue: FakeQueue) -> None:
    run = Billing.start(user_id="usr_1", org_ids=[])
    fake_queue.drain()
    assert fake_queue.enqueued(Bill) == []
    assert fake_queue.enqueued(Total) == [Total(amounts=[])]
    assert run.status() == "succeeded"


def test_continue_gives_dependants_none_for_the_failed_instance(fake_queue: FakeQueue) -> None:
    run = Billing.start(user_id="usr_1", org_ids=["a", "bb", "ccc"], fail_org="bb")
    fake_queue.drain(raise_on_failure=False)
    assert fake_queue.enqueued(Total) == [Total(amounts=[10, None, 30])]
    assert run.status() == "succeeded"
    assert run.steps()["bill"].failed == 1


def test_fail_stops_the_run_and_compensates_completed_steps_in_reverse(fake_queue: FakeQueue) -> None:
    run = Saga.start(user_id="usr_1", org_ids=["a", "bb", "ccc"], fail_org="ccc")
    fake_queue.drain(raise_on_failure=False)

    assert run.status() == "failed"
    assert "step bill[2] failed" in (run.error() or "")
    assert fake_queue.enqueued(Total) == []  # never released
    # store finished first, then bill a and bb: undone newest first, one after another
    assert run.compensations() == [("bill:1", "done"), ("bill:0", "done"), ("store:0", "done")]
    assert [u.org_id for u in fake_queue.enqueued(Unbill)] == ["bb", "a"]
    assert fake_queue.enqueued(DeleteUser) == [DeleteUser(user_id="usr_1")]
    assert run.steps()["total"].status == "cancelled"


def test_the_same_key_returns_the_run_already_started(fake_queue: FakeQueue) -> None:
    first = Diamond.start(key="signup:usr_1", user_id="usr_1")
    again = Diamond.start(key="signup:usr_1", user_id="usr_2")
    assert again.id == first.id and again.existing and not first.existing
    fake_queue.drain()
    assert fake_queue.enqueued(StoreUser) == [StoreUser(user_id="usr_1")]


def test_cancel_mid_run_cancels_what_has_not_run(fake_queue: FakeQueue) -> None:
    run = Diamond.start(user_id="usr_1")
    fake_queue.perform_one()  # store
    assert run.cancel() is True and run.cancel() is False
    result = fake_queue.drain()
    assert result.total == 0  # welcome and audit were waiting: cancelled, never run
    assert run.status() == "cancelled"
    assert {s.name: s.status for s in run.steps().values()} == {
        "store": "done",
        "welcome": "cancelled",
        "audit": "cancelled",
        "report": "cancelled",
    }


def test_a_run_past_its_timeout_on_the_fake_clock_times_out(fake_queue: FakeQueue) -> None:
    run = Saga.start(user_id="usr_1", org_ids=["a"])
    fake_queue.perform_one()  # store
    fake_queue.clock.advance(timedelta(minutes=6))
    fake_queue.drain()
    assert run.status() == "timed_out"
    assert "timeout (300s)" in (run.error() or "")
    assert fake_queue.enqueued(Total) == []


def test_input_is_validated_by_the_workflow_model(fake_queue: FakeQueue) -> None:
    with pytest.raises(Exception, match="user_id"):
        Diamond.start(org_ids=["a"])


def test_a_yaml_workflow_runs_on_a_fake_queue_built_on_a_registry_that_knows_its_jobs(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "signup.yaml").write_text(
        "workflows:\n"
        "  yaml_signup:\n"
        "    input: tests.test_workflow_fake:SignUp\n"
        "    steps:\n"
        "      store: {job: wf.store-user, inputs: {user_id: input.user_id}}\n"
        "      welcome: {job: wf.welcome, after: [store], inputs: {email: steps.store.output.email}}\n"
    )
    registry = Registry([StoreUser, Welcome], Specs(queues={"wf": QueueSpec()}, workflows_dir=tmp_path / "workflows"))
    with FakeQueue(registry=registry) as queue:
        run = start_workflow("yaml_signup", user_id="usr_9")
        queue.drain()
        assert queue.enqueued(Welcome) == [Welcome(email="usr_9@example.com")]
        assert run.status() == "succeeded" and run.output("welcome") == "welcomed usr_9@example.com"
        with pytest.raises(WorkflowError, match="no workflow named 'nope'"):
            start_workflow("nope")


class Loose(Job, queue="wf"):
    user_id: str

    def perform(self, ctx: Context[None]) -> dict[str, Any]:  # fields not declared: references to them are unchecked
        return {"email": 42}


class LooseSignup(Workflow, input=SignUp, name="fake_loose"):
    load = Step(Loose, {"user_id": "input.user_id"})
    welcome = Step(Welcome, {"email": "steps.load.output.email"}, after=[load])


def test_a_step_whose_input_does_not_validate_at_run_time_fails_the_run(fake_queue: FakeQueue) -> None:
    run = LooseSignup.start(user_id="usr_1")
    fake_queue.drain()
    assert run.status() == "failed"
    assert run.error() == "step welcome: its input does not validate: email: Input should be a valid string"
    assert fake_queue.enqueued(Welcome) == []
    assert run.steps()["welcome"].status == "cancelled"
