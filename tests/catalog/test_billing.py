"""Queue `billing`: subscriptions and invoices mirrored from signed Stripe events, in any delivery order.

Events go in through the real ingress (signed, verified, stored); the billing
jobs then run against the `store` fixture (SQLite and PostgreSQL).
Notification is only enqueued here: its handler belongs to the email queue.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from forgejobs import Reason, RetryLater, Status, Unrecoverable
from forgejobs.testing import FakeQueue, make_context
from jobs.billing import UNKNOWN_CUSTOMER_RETRY, RecordInvoice, SyncSubscription
from jobs.email import Notification
from jobs.resources import Resources
from jobs.store import Store, invoices, memberships, organisations, stripe_events, subscriptions, users
from jobs.stripe import ProcessStripeEvent, build_event

from .test_stripe import add_org, checkout_session, deliver, invoice_object, subscription_object


def received(store: Store, event_type: str, obj: dict[str, Any], created: int = 1_800_000_000) -> str:
    """Deliver a signed event and return its id (ProcessStripeEvent is enqueued, not run)."""
    return deliver(store, build_event(event_type, obj, created=created)).event_id


def subscription_row(store: Store, sub_id: str = "sub_1") -> dict[str, Any]:
    with store.begin() as conn:
        return dict(conn.execute(sa.select(subscriptions).where(subscriptions.c.id == sub_id)).mappings().one())


def invoice_row(store: Store, invoice_id: str = "in_1") -> dict[str, Any]:
    with store.begin() as conn:
        return dict(conn.execute(sa.select(invoices).where(invoices.c.id == invoice_id)).mappings().one())


def notifications(fake_queue: FakeQueue) -> list[tuple[str, int, str, str, str]]:
    """(job id, priority, user, kind, ref) of each Notification enqueued."""
    found = []
    for prepared in fake_queue.backend.log:
        if prepared.name == Notification.job_name():
            job = Notification.model_validate(json.loads(prepared.envelope)["payload"])
            found.append((prepared.job_id, prepared.priority, job.user_id, job.kind, job.ref))
    return found


@pytest.fixture
def queue(fake_queue: FakeQueue, resources: Resources) -> FakeQueue:
    fake_queue.resources = resources
    return fake_queue


# -- subscriptions -----------------------------------------------------------------------------------


def test_a_created_subscription_becomes_a_row(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    obj = subscription_object(org["customer_id"], quantity=3, period_end=1_900_000_000)
    event_id = received(store, "customer.subscription.created", obj, created=1_800_000_000)

    result = queue.perform(SyncSubscription(event_id=event_id))

    assert result == {"subscription": "sub_1", "status": "active", "applied": True, "notified": []}
    row = subscription_row(store)
    assert row["org_id"] == org["org_id"]
    assert (row["status"], row["price_id"], row["quantity"]) == ("active", "price_pro", 3)
    assert row["current_period_end"] == datetime.fromtimestamp(1_900_000_000, UTC)
    assert row["cancel_at_period_end"] is False
    assert row["stripe_updated"] == 1_800_000_000
    assert notifications(queue) == []


def test_the_older_api_shape_is_accepted_too(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    obj = {
        "id": "sub_1",
        "object": "subscription",
        "customer": {"id": org["customer_id"], "object": "customer"},  # expanded
        "status": "trialing",
        "current_period_end": 1_850_000_000,
        "plan": {"id": "plan_basic", "object": "plan"},
        "quantity": 2,
        "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item", "quantity": 2}]},
    }
    queue.perform(SyncSubscription(event_id=received(store, "customer.subscription.created", obj)))

    row = subscription_row(store)
    assert (row["status"], row["price_id"], row["quantity"]) == ("trialing", "plan_basic", 2)
    assert row["current_period_end"] == datetime.fromtimestamp(1_850_000_000, UTC)


def test_an_older_update_arriving_late_changes_nothing(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    customer = org["customer_id"]
    created = received(store, "customer.subscription.created", subscription_object(customer), created=1000)
    newer = received(
        store, "customer.subscription.updated", subscription_object(customer, status="past_due", quantity=5), 1200
    )
    older = received(store, "customer.subscription.updated", subscription_object(customer, quantity=2), 1100)
    queue.perform(SyncSubscription(event_id=created))
    queue.perform(SyncSubscription(event_id=newer))

    result = queue.perform(SyncSubscription(event_id=older))

    assert result["applied"] is False
    row = subscription_row(store)
    assert (row["status"], row["quantity"], row["stripe_updated"]) == ("past_due", 5, 1200)


def test_events_of_the_same_second_keep_the_status_furthest_along(
    store: Store, queue: FakeQueue, org: dict[str, str]
) -> None:
    customer = org["customer_id"]
    active = received(store, "customer.subscription.updated", subscription_object(customer, status="active"), 1000)
    incomplete = received(
        store, "customer.subscription.created", subscription_object(customer, status="incomplete"), 1000
    )
    queue.perform(SyncSubscription(event_id=active))

    result = queue.perform(SyncSubscription(event_id=incomplete))  # delivered second, created the same second

    assert result["applied"] is False
    assert subscription_row(store)["status"] == "active"
    again = received(store, "customer.subscription.updated", subscription_object(customer, status="past_due"), 1000)
    assert queue.perform(SyncSubscription(event_id=again))["applied"] is True


def test_deleted_cancels_and_tells_the_owner_only(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    customer = org["customer_id"]
    queue.perform(
        SyncSubscription(event_id=received(store, "customer.subscription.created", subscription_object(customer), 1000))
    )
    deleted = received(store, "customer.subscription.deleted", subscription_object(customer, status="canceled"), 2000)

    queue.perform(SyncSubscription(event_id=deleted))

    assert subscription_row(store)["status"] == "canceled"
    queue.assert_enqueued(Notification, count=1, user_id=org["owner_id"], kind="subscription_canceled", ref="sub_1")
    queue.refute_enqueued(Notification, user_id=org["member_id"])
    assert notifications(queue) == [
        (f"notify-{deleted}-{org['owner_id']}", 5, org["owner_id"], "subscription_canceled", "sub_1")
    ]


def test_a_canceled_subscription_is_not_revived_by_an_update_of_the_same_second(
    store: Store, queue: FakeQueue, org: dict[str, str]
) -> None:
    customer = org["customer_id"]
    deleted = received(store, "customer.subscription.deleted", subscription_object(customer, status="canceled"), 3000)
    update = received(
        store, "customer.subscription.updated", subscription_object(customer, cancel_at_period_end=True), 3000
    )
    queue.perform(SyncSubscription(event_id=deleted))

    assert queue.perform(SyncSubscription(event_id=update))["applied"] is False
    assert subscription_row(store)["status"] == "canceled"


def test_a_rerun_of_deleted_notifies_once(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    deleted = received(
        store, "customer.subscription.deleted", subscription_object(org["customer_id"], status="canceled")
    )
    job = SyncSubscription(event_id=deleted)

    first, second = queue.perform(job), queue.perform(job)

    assert first["notified"] == second["notified"] == [org["owner_id"]]  # both runs asked
    assert len(notifications(queue)) == 1  # the fake queue, like Redis, stores an explicit job id once


def test_a_job_given_the_wrong_event_type_is_unrecoverable(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    event_id = received(store, "invoice.paid", invoice_object(org["customer_id"], status="paid"))
    with pytest.raises(Unrecoverable, match=f"Stripe event {event_id} is a invoice.paid; this job handles customer"):
        queue.perform(SyncSubscription(event_id=event_id))


def test_a_malformed_object_is_unrecoverable_and_says_which_field(
    store: Store, queue: FakeQueue, org: dict[str, str]
) -> None:
    obj = {**invoice_object(org["customer_id"]), "amount_due": "lots"}
    event_id = received(store, "invoice.payment_failed", obj)
    with pytest.raises(Unrecoverable, match=r"invoice.amount_due should be int, got 'lots'"):
        queue.perform(RecordInvoice(event_id=event_id))


# -- invoices ----------------------------------------------------------------------------------------


def test_a_paid_invoice_is_recorded_and_the_owner_told(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    obj = invoice_object(org["customer_id"], status="paid", amount_paid=2000, paid_at=1_800_000_100)
    event_id = received(store, "invoice.paid", obj, created=1_800_000_101)

    queue.perform(RecordInvoice(event_id=event_id))

    row = invoice_row(store)
    assert row["org_id"] == org["org_id"] and row["subscription_id"] == "sub_1"
    assert (row["status"], row["amount_due"], row["amount_paid"], row["currency"]) == ("paid", 2000, 2000, "eur")
    assert row["paid_at"] == datetime.fromtimestamp(1_800_000_100, UTC)
    assert row["hosted_invoice_url"] == "https://invoice.stripe.com/i/in_1"
    assert notifications(queue) == [
        (f"notify-{event_id}-{org['owner_id']}", 5, org["owner_id"], "invoice_paid", "in_1")
    ]


def test_a_failed_payment_is_recorded_and_the_owner_told_urgently(
    store: Store, queue: FakeQueue, org: dict[str, str]
) -> None:
    obj = invoice_object(org["customer_id"], attempt_count=2)
    del obj["parent"]
    obj["subscription"] = "sub_old_shape"  # older API versions
    event_id = received(store, "invoice.payment_failed", obj)

    queue.perform(RecordInvoice(event_id=event_id))

    row = invoice_row(store)
    assert (row["status"], row["amount_paid"], row["attempt_count"], row["paid_at"]) == ("open", 0, 2, None)
    assert row["subscription_id"] == "sub_old_shape"
    assert notifications(queue) == [
        (f"dunning-{event_id}-{org['owner_id']}", 1, org["owner_id"], "payment_failed", "in_1")
    ]
    queue.refute_enqueued(Notification, user_id=org["member_id"])


def test_a_rerun_of_a_failed_payment_does_not_notify_twice(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    event_id = received(store, "invoice.payment_failed", invoice_object(org["customer_id"]))
    job = RecordInvoice(event_id=event_id)

    queue.perform(job)
    queue.perform(job)

    assert len(notifications(queue)) == 1
    assert invoice_row(store)["status"] == "open"


def test_a_late_failure_does_not_undo_a_payment(store: Store, queue: FakeQueue, org: dict[str, str]) -> None:
    customer = org["customer_id"]
    failed = received(store, "invoice.payment_failed", invoice_object(customer), created=5000)
    paid = received(store, "invoice.paid", invoice_object(customer, status="paid", amount_paid=2000), created=5000)
    queue.perform(RecordInvoice(event_id=paid))

    assert queue.perform(RecordInvoice(event_id=failed))["applied"] is False  # same second, but paid is final

    assert invoice_row(store)["status"] == "paid"
    assert [n[3] for n in notifications(queue)] == ["invoice_paid"]  # no dunning for a paid invoice


# -- unknown customers -------------------------------------------------------------------------------


def test_an_unknown_customer_is_waited_for_then_given_up(store: Store, resources: Resources) -> None:
    event_id = received(store, "invoice.payment_failed", invoice_object("cus_not_linked_yet"))
    job = RecordInvoice(event_id=event_id)

    with pytest.raises(RetryLater, match="customer cus_not_linked_yet is not linked to an organisation yet") as wait:
        job.perform(make_context(job, resources=resources, attempt=1))
    assert wait.value.delay == UNKNOWN_CUSTOMER_RETRY.total_seconds()

    last = make_context(job, resources=resources, attempt=RecordInvoice.job_options().attempts)
    with pytest.raises(Unrecoverable, match="customer cus_not_linked_yet is linked to no organisation"):
        job.perform(last)

    with store.begin() as conn:  # an event that arrived long ago is not waited for, whatever the attempt
        conn.execute(
            stripe_events.update()
            .where(stripe_events.c.id == event_id)
            .values(received_at=datetime.now(UTC) - timedelta(hours=2))
        )
    with pytest.raises(Unrecoverable, match="requeue this job"):
        job.perform(make_context(job, resources=resources, attempt=1))


def test_a_waiting_job_succeeds_once_the_customer_is_linked(store: Store, resources: Resources) -> None:
    event_id = received(store, "customer.subscription.created", subscription_object("cus_late"))
    job = SyncSubscription(event_id=event_id)
    with pytest.raises(RetryLater):
        job.perform(make_context(job, resources=resources))

    org_id = add_org(store)
    with store.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == org_id).values(stripe_customer_id="cus_late"))

    assert job.perform(make_context(job, resources=resources))["applied"] is True
    assert subscription_row(store)["org_id"] == org_id


def test_through_the_queue_an_unknown_customer_retries_later_then_dead_letters(store: Store, queue: FakeQueue) -> None:
    received(store, "invoice.paid", invoice_object("cus_never", status="paid"))

    result = queue.drain(raise_on_failure=False)

    assert (result.succeeded, result.failed) == (1, 1)  # ProcessStripeEvent; RecordInvoice
    assert result.retried > 0
    (dead,) = queue.dead_letters()
    assert dead.reason is Reason.UNRECOVERABLE
    assert "customer cus_never is linked to no organisation" in dead.error


# -- the whole path ----------------------------------------------------------------------------------


def test_from_webhook_to_rows_and_notifications(
    store: Store, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkout, subscription, a failed then a successful payment, a cancellation: each signed and delivered."""
    org_id = add_org(store)  # no Stripe customer yet: the checkout links it
    with store.begin() as conn:
        conn.execute(users.insert().values(id="usr_owner", email="owner@example.com", name="Owner"))
        conn.execute(memberships.insert().values(org_id=org_id, user_id="usr_owner", role="owner"))
    # Notification's handler is the email queue's; here its runs are only recorded.
    sent: list[tuple[str, str, str]] = []
    monkeypatch.setattr(Notification, "perform", lambda self, ctx: sent.append((self.user_id, self.kind, self.ref)))

    customer = "cus_path"
    events = [
        ("checkout.session.completed", checkout_session(org_id, customer), 100),
        ("customer.subscription.created", subscription_object(customer), 101),
        ("invoice.payment_failed", invoice_object(customer), 102),
        ("invoice.paid", invoice_object(customer, status="paid", amount_paid=2000, paid_at=103), 103),
        ("customer.subscription.deleted", subscription_object(customer, status="canceled"), 104),
    ]
    handles = [deliver(store, build_event(kind, obj, created=created)).handle for kind, obj, created in events]

    result = queue.drain()

    # + the checkout workflow: sync, the owner's receipt, audit, activity
    assert (result.succeeded, result.failed, result.retried) == (5 + 4 + 3 + 4, 0, 0)
    assert all(h is not None and h.status() is Status.SUCCEEDED for h in handles)
    assert subscription_row(store)["status"] == "canceled"
    assert (invoice_row(store)["status"], invoice_row(store)["paid_at"]) == ("paid", datetime.fromtimestamp(103, UTC))
    assert sorted(sent) == [
        ("usr_owner", "invoice_paid", "in_1"),
        ("usr_owner", "payment_failed", "in_1"),
        ("usr_owner", "subscription_canceled", "sub_1"),
    ]
    with store.begin() as conn:
        statuses = conn.execute(sa.select(stripe_events.c.status)).scalars().all()
    assert statuses == ["processed"] * 5
    queue.assert_enqueued(ProcessStripeEvent, count=5)
