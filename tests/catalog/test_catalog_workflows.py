"""The catalog's workflows (jobs/workflows.py): each on the fake queue, step inputs and outputs; the checkout and
the monthly invoicing on real Redis with a worker subprocess, SMTP and a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from forgejobs import Client, Registry, Settings, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.testing import FakeQueue
from forgejobs.workflows import WorkflowError, workflow_run
from forgejobs.workflows.engine import run_id_for
from forgejobs.workflows.run import store_for
from jobs.activity import CreateActivity
from jobs.audit import RecordAuditEvent
from jobs.email import WelcomeEmail
from jobs.flows import sign_up
from jobs.resources import Resources
from jobs.store import (
    Store,
    activity_feed,
    audit_log,
    memberships,
    new_id,
    organisations,
    subscriptions,
    usage_events,
    users,
)
from jobs.stripe import ProcessStripeEvent, build_event, receive_stripe_event, sign_stripe_payload
from jobs.workflows import (
    CheckoutReceipt,
    InvoiceOrganisation,
    InvoicingSummary,
    OrgInvoice,
    SignUp,
    StartMonthlyInvoicing,
    SyncCheckout,
)
from tests.catalog.smtp_server import Server, start_server
from tests.conftest import ROOT, WorkerProcess

SECRET = "whsec_test_secret"  # tests/catalog/conftest.py: catalog_settings.stripe_webhook_secret


def checkout_event(org_id: str, customer: str, subscription: str = "sub_wf") -> bytes:
    session = {
        "id": "cs_wf",
        "object": "checkout.session",
        "mode": "subscription",
        "client_reference_id": org_id,
        "customer": customer,
        "subscription": subscription,
        "payment_status": "paid",
        "status": "complete",
    }
    return build_event("checkout.session.completed", session)


def deliver(store: Store, body: bytes, secret: str = SECRET) -> str:
    return receive_stripe_event(store, body, sign_stripe_payload(body, secret), secret=secret).event_id


def rows(store: Store, query: sa.Select[tuple[str]]) -> list[str]:
    with store.begin() as conn:
        return [str(v) for v in conn.execute(query).scalars()]


# -- sign-up ------------------------------------------------------------------------------------------


def test_a_member_sign_up_runs_welcome_audit_and_activity_side_by_side(
    store: Store, resources: Resources, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    user_id = sign_up(store, email="cy@example.com", name="Cy", org_id=org["org_id"], request_id="req-1")

    run = workflow_run(run_id_for("member_sign_up", user_id))
    assert run.name == "member_sign_up"
    assert fake_queue.enqueued(WelcomeEmail) == [WelcomeEmail(user_id=user_id)]  # all three released at once
    (audit,) = fake_queue.enqueued(RecordAuditEvent)
    assert (audit.actor_id, audit.action, audit.target, audit.org_id, audit.request_id) == (
        user_id,
        "user.signed_up",
        f"user:{user_id}",
        org["org_id"],
        "req-1",
    )
    (activity,) = fake_queue.enqueued(CreateActivity)
    assert (activity.org_id, activity.actor_id, activity.verb, activity.object_id, activity.summary) == (
        org["org_id"],
        user_id,
        "member.joined",
        user_id,
        "Cy joined",
    )

    fake_queue.drain()

    assert run.status() == "succeeded"
    outputs = run.outputs()
    assert outputs["welcome"]["to"] == "cy@example.com" and outputs["welcome"]["message_id"]
    assert outputs["audit"] == {"event_id": audit.event_id, "inserted": True}
    assert outputs["activity"]["created"] is True
    assert rows(store, sa.select(audit_log.c.action)) == ["user.signed_up"]
    assert rows(store, sa.select(activity_feed.c.summary)) == ["Cy joined"]


def test_a_sign_up_without_an_organisation_runs_the_two_step_workflow(
    store: Store, resources: Resources, fake_queue: FakeQueue
) -> None:
    fake_queue.resources = resources
    user_id = sign_up(store, email="ada@example.com", name="Ada")
    fake_queue.drain()

    run = workflow_run(run_id_for("sign_up", user_id))
    assert run.status() == "succeeded"
    assert set(run.outputs()) == {"welcome", "audit"}
    assert fake_queue.enqueued(CreateActivity) == []


def test_a_rolled_back_sign_up_starts_no_run(store: Store, fake_queue: FakeQueue, org: dict[str, str]) -> None:
    sign_up(store, email="dup@example.com", name="First", org_id=org["org_id"])
    runs_before = store_for(fake_queue.client).runs()
    fake_queue.clear()

    with pytest.raises(sa.exc.IntegrityError):
        sign_up(store, email="dup@example.com", name="Second", org_id=org["org_id"])  # the email is taken

    assert store_for(fake_queue.client).runs() == runs_before
    assert fake_queue.all_enqueued() == []


def test_a_workflow_start_inside_a_commit_holding_transaction_is_refused(store: Store, fake_queue: FakeQueue) -> None:
    user_id = new_id("usr")
    with pytest.raises(WorkflowError, match="not started inside a transaction"), store.transaction() as conn:
        conn.execute(users.insert().values(id=user_id, email="eve@example.com", name="Eve"))
        SignUp.start(key=user_id, user_id=user_id, target=f"user:{user_id}")

    assert store_for(fake_queue.client).runs() == []
    assert rows(store, sa.select(users.c.id).where(users.c.id == user_id)) == []  # rolled back with it


# -- checkout.session.completed -------------------------------------------------------------------------


def test_a_checkout_syncs_then_sends_receipts_audits_and_logs_activity(
    store: Store, resources: Resources, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    event_id = deliver(store, checkout_event(org["org_id"], org["customer_id"]))

    processed = fake_queue.perform(ProcessStripeEvent(event_id=event_id))
    run = workflow_run(processed["workflow"])
    assert fake_queue.enqueued(SyncCheckout) == [SyncCheckout(event_id=event_id)]
    assert fake_queue.enqueued(CheckoutReceipt) == []  # waits for sync

    fake_queue.drain()

    assert run.status() == "succeeded"
    sync = run.output("sync")
    assert sync == {
        "org_id": org["org_id"],
        "subscription_id": "sub_wf",
        "status": "active",
        "created": True,
        "owner_ids": [org["owner_id"]],
        "target": "subscription:sub_wf",
        "summary": "Acme subscribed (sub_wf)",
    }
    assert fake_queue.enqueued(CheckoutReceipt) == [
        CheckoutReceipt(user_id=org["owner_id"], org_id=org["org_id"], subscription_id="sub_wf")
    ]
    (audit,) = fake_queue.enqueued(RecordAuditEvent)
    assert (audit.actor_id, audit.action, audit.target, audit.org_id, audit.request_id) == (
        "stripe",
        "billing.checkout_completed",
        "subscription:sub_wf",
        org["org_id"],
        event_id,
    )
    (activity,) = fake_queue.enqueued(CreateActivity)
    assert (activity.verb, activity.object_type, activity.object_id, activity.summary) == (
        "subscription.started",
        "subscription",
        "sub_wf",
        "Acme subscribed (sub_wf)",
    )
    (receipt,) = run.output("receipt")
    assert receipt["to"] == org["owner_email"]
    assert run.output("audit")["inserted"] is True
    assert rows(store, sa.select(subscriptions.c.status).where(subscriptions.c.id == "sub_wf")) == ["active"]
    # the same event again: the run under its key is found, nothing runs twice
    assert fake_queue.perform(ProcessStripeEvent(event_id=event_id))["outcome"] == "already processed"
    assert checkout_runs(fake_queue) == 1


def checkout_runs(fake_queue: FakeQueue) -> int:
    store = store_for(fake_queue.client)
    return sum(1 for r in store.runs() if (store.read(r) or {}).get("wf") == "checkout")


# -- monthly invoicing ------------------------------------------------------------------------------


def test_monthly_invoicing_fans_out_per_organisation_and_fans_in_to_a_summary(
    store: Store, resources: Resources, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    other = new_id("org")
    with store.begin() as conn:
        conn.execute(organisations.insert().values(id=other, name="Beta"))
        conn.execute(
            usage_events.insert(),
            [
                {"id": new_id("use"), "org_id": org["org_id"], "metric": "api.requests", "quantity": 30,
                 "occurred_at": datetime(2026, 10, 3, tzinfo=UTC)},
                {"id": new_id("use"), "org_id": org["org_id"], "metric": "api.requests", "quantity": 12,
                 "occurred_at": datetime(2026, 10, 31, 23, 59, tzinfo=UTC)},
                {"id": new_id("use"), "org_id": other, "metric": "api.requests", "quantity": 5,
                 "occurred_at": datetime(2026, 10, 15, tzinfo=UTC)},
                {"id": new_id("use"), "org_id": other, "metric": "api.requests", "quantity": 99,
                 "occurred_at": datetime(2026, 11, 1, tzinfo=UTC)},  # next month: not counted
            ],
        )  # fmt: skip
    orgs = sorted([org["org_id"], other])

    started = fake_queue.perform(StartMonthlyInvoicing(month="2026-10"))
    run = workflow_run(started["run"])
    assert sorted(fake_queue.enqueued(InvoiceOrganisation), key=lambda j: j.org_id) == [
        InvoiceOrganisation(org_id=o, month="2026-10") for o in orgs
    ]

    fake_queue.drain()

    expected = {org["org_id"]: (42, 2), other: (5, 1)}
    invoices = [OrgInvoice(org_id=o, month="2026-10", quantity=expected[o][0], events=expected[o][1]) for o in orgs]
    assert fake_queue.enqueued(InvoicingSummary) == [InvoicingSummary(month="2026-10", invoices=invoices)]
    assert run.status() == "succeeded"
    assert run.output("invoice") == [i.model_dump() for i in invoices]
    assert run.output("summary") == {
        "month": "2026-10",
        "organisations": 2,
        "quantity": 47,
        "largest": org["org_id"],
    }
    again = fake_queue.perform(StartMonthlyInvoicing(month="2026-10"))
    assert (again["run"], again["existing"]) == (run.id, "True")


def test_monthly_invoicing_over_no_organisation_still_summarises(
    store: Store, resources: Resources, fake_queue: FakeQueue
) -> None:
    fake_queue.resources = resources
    run = workflow_run(fake_queue.perform(StartMonthlyInvoicing(month="2026-02"))["run"])
    fake_queue.drain()
    assert run.output("summary") == {"month": "2026-02", "organisations": 0, "quantity": 0, "largest": None}


# -- on Redis, with a worker process --------------------------------------------------------------


@pytest.mark.redis
def test_the_checkout_and_invoicing_workflows_run_on_redis_with_a_worker_process(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, start_cli: Callable[..., WorkerProcess]
) -> None:
    smtp: Server = start_server(request)
    database_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    store = Store.from_url(database_url)
    org_id, owner, customer = new_id("org"), new_id("usr"), f"cus_{uuid.uuid4().hex[:10]}"
    with store.begin() as conn:
        conn.execute(users.insert().values(id=owner, email="owner@example.com", name="Ada Owner"))
        conn.execute(organisations.insert().values(id=org_id, name="Acme"))
        conn.execute(memberships.insert().values(org_id=org_id, user_id=owner, role="owner"))
        conn.execute(
            usage_events.insert().values(
                id=new_id("use"),
                org_id=org_id,
                metric="seats",
                quantity=7,
                occurred_at=datetime(2026, 9, 9, tzinfo=UTC),
            )
        )
    connection = redis.Redis.from_url(redis_url)
    client = Client(RedisBackend(connection), Registry.load(Settings(jobs="jobs", specs=ROOT / "specs")))
    previous = set_client(client)
    try:
        event_id = deliver(store, checkout_event(org_id, customer), secret="whsec_wf")
        StartMonthlyInvoicing.enqueue(month="2026-09")
        worker = start_cli(
            "worker",
            "--burst",
            "--concurrency",
            "2",
            env={
                "FORGEJOBS_JOBS": "jobs",
                "FORGEJOBS_SPECS": str(ROOT / "specs"),
                "FORGEJOBS_CATALOG_DATABASE_URL": database_url,
                "FORGEJOBS_CATALOG_MAIL_TRANSPORT": "smtp",
                "FORGEJOBS_CATALOG_SMTP_HOST": "127.0.0.1",
                "FORGEJOBS_CATALOG_SMTP_PORT": str(smtp.port),
                "FORGEJOBS_CATALOG_STORAGE_DIR": str(tmp_path / "storage"),
                "FORGEJOBS_CATALOG_STRIPE_WEBHOOK_SECRET": "whsec_wf",
            },
        )
        assert worker.wait(timeout=120) == 0, worker.log()

        run = workflow_run(run_id_for("checkout", event_id))
        assert run.wait(timeout=60) == "succeeded", worker.log()
        assert {name: state.status for name, state in run.steps().items()} == dict.fromkeys(
            ["sync", "receipt", "audit", "activity"], "done"
        )
        assert run.output("sync")["owner_ids"] == [owner]
        assert [str(m["Subject"]) for m in smtp.recorder.messages()] == ["Acme is subscribed"]
        assert rows(store, sa.select(audit_log.c.action)) == ["billing.checkout_completed"]
        assert rows(store, sa.select(activity_feed.c.verb)) == ["subscription.started"]
        assert rows(store, sa.select(organisations.c.stripe_customer_id)) == [customer]
        invoicing = workflow_run(run_id_for("monthly_invoicing", "invoicing:2026-09"))
        assert invoicing.wait(timeout=60) == "succeeded", worker.log()
        assert invoicing.output("invoice") == [{"org_id": org_id, "month": "2026-09", "quantity": 7, "events": 1}]
        assert invoicing.output("summary") == {"month": "2026-09", "organisations": 1, "quantity": 7, "largest": org_id}
        assert client.dead_letters() == []
    finally:
        set_client(previous)
        connection.close()
        store.dispose()
