"""Queue `stripe`: webhook ingress (signature, storage, replay) and ProcessStripeEvent's routing.

Every event here is signed with the test secret exactly as Stripe signs, and
checked by the stripe package; rows live in the `store` fixture (SQLite and
PostgreSQL). The helpers at the top are also used by test_billing.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import sqlalchemy as sa
import stripe as stripe_package

import jobs.stripe
from forgejobs import BackendError, Unrecoverable
from forgejobs.envelope import decode
from forgejobs.testing import FakeQueue
from jobs.billing import RecordInvoice, SyncSubscription
from jobs.resources import Resources
from jobs.store import Store, new_id, organisations, stripe_events
from jobs.stripe import (
    InvalidStripeEvent,
    ProcessStripeEvent,
    Received,
    build_event,
    receive_stripe_event,
    sign_stripe_payload,
    stripe_webhook_response,
)

SECRET = "whsec_test_secret"  # tests/catalog/conftest.py: catalog_settings.stripe_webhook_secret


# -- helpers (shared with test_billing.py) ----------------------------------------------------------


def deliver(store: Store, body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> Received:
    """One webhook delivery of `body`, signed with `secret` at `timestamp` (now by default)."""
    return receive_stripe_event(store, body, sign_stripe_payload(body, secret, timestamp), secret=SECRET)


def subscription_object(
    customer: str,
    sub_id: str = "sub_1",
    *,
    status: str = "active",
    quantity: int = 1,
    period_end: int = 1_900_000_000,
    price: str = "price_pro",
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    """A subscription as recent API versions send it: the period on its item."""
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{sub_id}",
                    "object": "subscription_item",
                    "price": {"id": price, "object": "price", "unit_amount": 2000, "currency": "eur"},
                    "quantity": quantity,
                    "current_period_start": period_end - 30 * 86400,
                    "current_period_end": period_end,
                }
            ],
        },
    }


def invoice_object(
    customer: str,
    invoice_id: str = "in_1",
    *,
    status: str = "open",
    amount_due: int = 2000,
    amount_paid: int = 0,
    attempt_count: int = 1,
    paid_at: int | None = None,
    subscription: str = "sub_1",
) -> dict[str, Any]:
    """An invoice as recent API versions send it: the subscription under `parent`."""
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "status": status,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "currency": "eur",
        "attempt_count": attempt_count,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{invoice_id}",
        "status_transitions": {"paid_at": paid_at, "finalized_at": 1_800_000_000},
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": subscription}},
    }


def checkout_session(org_id: str | None, customer: str | None) -> dict[str, Any]:
    return {
        "id": "cs_test_1",
        "object": "checkout.session",
        "mode": "subscription",
        "client_reference_id": org_id,
        "customer": customer,
        "subscription": "sub_1",
        "status": "complete",
    }


def event_row(store: Store, event_id: str) -> dict[str, Any]:
    with store.begin() as conn:
        row = conn.execute(sa.select(stripe_events).where(stripe_events.c.id == event_id)).mappings().one()
    return dict(row)


def count_events(store: Store) -> int:
    with store.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(stripe_events)).scalar_one())


def add_org(store: Store, customer_id: str | None = None) -> str:
    """A second organisation (no members), with or without a Stripe customer."""
    org_id = new_id("org")
    with store.begin() as conn:
        conn.execute(organisations.insert().values(id=org_id, name="Globex", stripe_customer_id=customer_id))
    return org_id


def customer_of(store: Store, org_id: str) -> str | None:
    with store.begin() as conn:
        value = conn.execute(
            sa.select(organisations.c.stripe_customer_id).where(organisations.c.id == org_id)
        ).scalar_one()
    return None if value is None else str(value)


# -- the module and the signer -------------------------------------------------------------------------


def test_the_module_named_stripe_still_imports_the_stripe_package() -> None:
    assert jobs.stripe.stripe is stripe_package
    assert jobs.stripe.__name__ == "jobs.stripe"


def test_sign_stripe_payload_matches_the_stripe_package() -> None:
    body = build_event("customer.created", {"id": "cus_1", "object": "customer"})
    ours = sign_stripe_payload(body, SECRET, timestamp=1_700_000_000)
    theirs = stripe_package.WebhookSignature.generate_signature_header(body.decode(), SECRET, timestamp=1_700_000_000)
    assert ours == theirs
    assert ours.startswith("t=1700000000,v1=")


def test_build_event_makes_a_realistic_event() -> None:
    event = json.loads(build_event("invoice.paid", {"id": "in_1"}, event_id="evt_abc", created=123))
    assert event == {
        "id": "evt_abc",
        "object": "event",
        "api_version": stripe_package.api_version,
        "created": 123,
        "data": {"object": {"id": "in_1"}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "invoice.paid",
    }
    assert json.loads(build_event("invoice.paid", {}))["id"].startswith("evt_")


# -- ingress -------------------------------------------------------------------------------------------


def test_a_signed_event_is_stored_and_its_processing_enqueued_with_only_its_id(
    store: Store, fake_queue: FakeQueue
) -> None:
    body = build_event("customer.subscription.created", subscription_object("cus_1"), created=1_800_000_000)
    event_id = json.loads(body)["id"]

    received = deliver(store, body)

    assert (received.event_id, received.type, received.duplicate) == (event_id, "customer.subscription.created", False)
    assert received.handle is not None and received.handle.id == f"stripe-{event_id}"
    assert not received.handle.existing
    row = event_row(store, event_id)
    assert row["type"] == "customer.subscription.created"
    assert row["livemode"] is False
    assert row["created"] == 1_800_000_000
    assert row["payload"] == json.loads(body)
    assert row["status"] == "received" and row["processed_at"] is None
    fake_queue.assert_enqueued(ProcessStripeEvent, count=1, event_id=event_id)
    (prepared,) = fake_queue.backend.log
    assert prepared.job_id == f"stripe-{event_id}"
    assert prepared.queue == "stripe"
    assert decode(prepared.envelope).payload == {"event_id": event_id}  # the id only, not the event


def _refusals() -> list[Any]:
    good = build_event("invoice.paid", invoice_object("cus_1"), event_id="evt_good")
    now = int(time.time())

    def signed(body: bytes) -> tuple[bytes, str]:
        return body, sign_stripe_payload(body, SECRET)

    def event_with(**changes: Any) -> bytes:
        return json.dumps({**json.loads(good), **changes}).encode()

    tampered = good.replace(b'"amount_due": 2000', b'"amount_due": 1')
    assert tampered != good
    return [
        pytest.param(good, sign_stripe_payload(good, "whsec_wrong"), "No signatures found matching", id="wrong-secret"),
        pytest.param(tampered, sign_stripe_payload(good, SECRET), "No signatures found matching", id="tampered-body"),
        pytest.param(good, None, "missing Stripe-Signature", id="no-header"),
        pytest.param(good, "", "missing Stripe-Signature", id="empty-header"),
        pytest.param(good, "garbage", "Unable to extract timestamp", id="malformed-header"),
        pytest.param(good, f"t={now},v0=abc", "No signatures found with expected scheme", id="no-v1-signature"),
        pytest.param(good, sign_stripe_payload(good, SECRET, now - 301), "outside the tolerance", id="stale"),
        pytest.param(*signed(b"{not json"), "not JSON", id="not-json"),
        pytest.param(*signed(b"\xff\xfe"), "not UTF-8", id="not-utf8"),
        pytest.param(*signed(b"[1, 2]"), "not an event object", id="json-array"),
        pytest.param(*signed(event_with(id=None)), "id None is not a Stripe event id", id="missing-id"),
        pytest.param(*signed(event_with(id="evt_a/b")), "is not a Stripe event id", id="bad-id"),
        pytest.param(*signed(event_with(type=None)), "type None is missing", id="missing-type"),
        pytest.param(*signed(event_with(created="today")), "not epoch seconds", id="bad-created"),
        pytest.param(*signed(event_with(data={})), "data.object is missing", id="no-data-object"),
        pytest.param(*signed(event_with(object="v2.core.event")), "thin v2 events", id="thin-event"),
    ]


@pytest.mark.parametrize(("body", "header", "reason"), _refusals())
def test_a_refused_delivery_stores_and_enqueues_nothing(
    store: Store, fake_queue: FakeQueue, body: bytes, header: str | None, reason: str
) -> None:
    with pytest.raises(InvalidStripeEvent, match=reason):
        receive_stripe_event(store, body, header, secret=SECRET)

    assert count_events(store) == 0
    assert fake_queue.backend.log == []


def test_the_tolerance_refuses_old_signatures_and_accepts_recent_and_future_ones(
    store: Store, fake_queue: FakeQueue
) -> None:
    now = int(time.time())
    old = build_event("invoice.paid", invoice_object("cus_1"))
    with pytest.raises(InvalidStripeEvent, match="outside the tolerance"):
        receive_stripe_event(store, old, sign_stripe_payload(old, SECRET, now - 120), secret=SECRET, tolerance=60)

    recent = deliver(store, build_event("invoice.paid", invoice_object("cus_1")), timestamp=now - 200)
    # The stripe package only bounds the age of a signature; a future timestamp passes, and so it does here.
    future = deliver(store, build_event("invoice.paid", invoice_object("cus_1")), timestamp=now + 3600)

    assert not recent.duplicate and not future.duplicate
    assert count_events(store) == 2
    assert len(fake_queue.enqueued(ProcessStripeEvent)) == 2


def test_a_replay_is_stored_once_enqueued_once_and_reported_as_duplicate(
    store: Store, resources: Resources, fake_queue: FakeQueue
) -> None:
    fake_queue.resources = resources
    body = build_event("customer.created", {"id": "cus_1", "object": "customer"})

    first = deliver(store, body)
    again = deliver(store, body)  # Stripe redelivers with a fresh signature
    replayed = receive_stripe_event(store, body, sign_stripe_payload(body, SECRET), secret=SECRET)

    assert (first.duplicate, again.duplicate, replayed.duplicate) == (False, True, True)
    assert first.handle is not None and again.handle is not None
    assert again.handle.existing and again.handle.id == first.handle.id
    assert count_events(store) == 1
    assert len(fake_queue.backend.log) == 1

    fake_queue.drain()  # processes it (skipped: no handler for customer.created)
    after = deliver(store, body)

    assert after.duplicate and after.handle is None
    assert len(fake_queue.backend.log) == 1


def test_an_enqueue_that_failed_is_made_by_the_redelivery(
    store: Store, fake_queue: FakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = build_event("invoice.paid", invoice_object("cus_1"))
    event_id = json.loads(body)["id"]

    def unreachable(jobs: Any) -> set[str]:
        raise BackendError("Redis is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(fake_queue.backend, "enqueue", unreachable)
        with pytest.raises(BackendError):
            deliver(store, body)  # the web framework answers 500 and Stripe delivers again
    assert event_row(store, event_id)["status"] == "received"
    assert fake_queue.backend.log == []

    redelivered = deliver(store, body)

    assert redelivered.duplicate
    assert redelivered.handle is not None and not redelivered.handle.existing
    fake_queue.assert_enqueued(ProcessStripeEvent, count=1, event_id=event_id)
    assert count_events(store) == 1


def test_the_webhook_response_for_web_frameworks(store: Store, fake_queue: FakeQueue) -> None:
    body = build_event("invoice.paid", invoice_object("cus_1"), event_id="evt_resp1")
    header = sign_stripe_payload(body, SECRET)

    assert stripe_webhook_response(store, body, header, secret=SECRET) == (
        200,
        {"received": "evt_resp1", "type": "invoice.paid", "duplicate": False},
    )
    assert stripe_webhook_response(store, body, header, secret=SECRET)[1]["duplicate"] is True
    status, answer = stripe_webhook_response(store, body, sign_stripe_payload(body, "whsec_other"), secret=SECRET)
    assert status == 400 and "No signatures found matching" in answer["error"]
    assert stripe_webhook_response(store, body, None, secret=SECRET) == (
        400,
        {"error": "missing Stripe-Signature header"},
    )


def test_a_missing_secret_is_a_configuration_error_not_a_bad_event(store: Store) -> None:
    body = build_event("invoice.paid", {})
    with pytest.raises(ValueError, match="no Stripe webhook secret configured") as caught:
        receive_stripe_event(store, body, sign_stripe_payload(body, SECRET), secret="")
    assert not isinstance(caught.value, InvalidStripeEvent)
    assert count_events(store) == 0


# -- ProcessStripeEvent -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "billing_job"),
    [
        ("customer.subscription.created", SyncSubscription),
        ("customer.subscription.updated", SyncSubscription),
        ("customer.subscription.deleted", SyncSubscription),
        ("customer.subscription.paused", SyncSubscription),
        ("customer.subscription.resumed", SyncSubscription),
        ("invoice.paid", RecordInvoice),
        ("invoice.payment_failed", RecordInvoice),
    ],
)
def test_billing_events_are_routed_to_their_billing_job(
    store: Store, resources: Resources, fake_queue: FakeQueue, event_type: str, billing_job: type[Any]
) -> None:
    fake_queue.resources = resources
    obj = invoice_object("cus_1") if event_type.startswith("invoice.") else subscription_object("cus_1")
    event_id = deliver(store, build_event(event_type, obj)).event_id

    outcome = fake_queue.perform(ProcessStripeEvent(event_id=event_id))

    assert outcome == {"event": event_id, "type": event_type, "outcome": f"routed to {billing_job.job_name()}"}
    fake_queue.assert_enqueued(billing_job, count=1, event_id=event_id)
    (prepared,) = [p for p in fake_queue.backend.log if p.name == billing_job.job_name()]
    assert (prepared.job_id, prepared.queue) == (f"billing-{event_id}", "billing")
    row = event_row(store, event_id)
    assert row["status"] == "processed" and row["processed_at"] is not None


def test_an_unknown_type_is_skipped(store: Store, resources: Resources, fake_queue: FakeQueue) -> None:
    fake_queue.resources = resources
    event_id = deliver(store, build_event("charge.refunded", {"id": "ch_1", "object": "charge"})).event_id

    assert fake_queue.perform(ProcessStripeEvent(event_id=event_id))["outcome"] == "skipped"

    row = event_row(store, event_id)
    assert row["status"] == "skipped" and row["processed_at"] is not None
    assert [p.name for p in fake_queue.backend.log] == [ProcessStripeEvent.job_name()]


def test_running_process_again_enqueues_nothing_new(store: Store, resources: Resources, fake_queue: FakeQueue) -> None:
    fake_queue.resources = resources
    event_id = deliver(store, build_event("invoice.paid", invoice_object("cus_1"))).event_id
    job = ProcessStripeEvent(event_id=event_id)
    fake_queue.perform(job)
    processed_at = event_row(store, event_id)["processed_at"]

    # A re-run after it finished: the event is already processed.
    assert fake_queue.perform(job)["outcome"] == "already processed"
    assert event_row(store, event_id)["processed_at"] == processed_at
    # A re-run after a crash between the enqueue and the mark: the billing job's id is already taken.
    with store.begin() as conn:
        conn.execute(stripe_events.update().where(stripe_events.c.id == event_id).values(status="received"))
    fake_queue.perform(job)

    fake_queue.assert_enqueued(RecordInvoice, count=1, event_id=event_id)
    assert len(fake_queue.backend.log) == 2  # ProcessStripeEvent and one RecordInvoice


def test_a_missing_event_is_unrecoverable_and_named(store: Store, resources: Resources, fake_queue: FakeQueue) -> None:
    fake_queue.resources = resources
    with pytest.raises(Unrecoverable, match="no Stripe event 'evt_nowhere'"):
        fake_queue.perform(ProcessStripeEvent(event_id="evt_nowhere"))


# -- checkout.session.completed ------------------------------------------------------------------------


def test_checkout_links_the_customer_to_the_organisation(
    store: Store, resources: Resources, fake_queue: FakeQueue
) -> None:
    fake_queue.resources = resources
    org_id = add_org(store)
    event_id = deliver(store, build_event("checkout.session.completed", checkout_session(org_id, "cus_new"))).event_id

    outcome = fake_queue.perform(ProcessStripeEvent(event_id=event_id))

    assert outcome["outcome"] == f"linked {org_id} to cus_new"
    assert customer_of(store, org_id) == "cus_new"
    assert event_row(store, event_id)["status"] == "processed"
    assert fake_queue.perform(ProcessStripeEvent(event_id=event_id))["outcome"] == "already processed"


def test_checkout_leaves_an_existing_customer_alone(
    store: Store, resources: Resources, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    body = build_event("checkout.session.completed", checkout_session(org["org_id"], "cus_other"))
    event_id = deliver(store, body).event_id

    outcome = fake_queue.perform(ProcessStripeEvent(event_id=event_id))

    assert outcome["outcome"] == f"{org['org_id']} keeps {org['customer_id']}; cus_other not linked"
    assert customer_of(store, org["org_id"]) == org["customer_id"]
    assert event_row(store, event_id)["status"] == "processed"


def test_checkout_for_an_unknown_organisation_is_unrecoverable(
    store: Store, resources: Resources, fake_queue: FakeQueue
) -> None:
    fake_queue.resources = resources
    event_id = deliver(
        store, build_event("checkout.session.completed", checkout_session("org_gone", "cus_new"))
    ).event_id

    with pytest.raises(
        Unrecoverable, match="names organisation 'org_gone' .client_reference_id., which does not exist"
    ):
        fake_queue.perform(ProcessStripeEvent(event_id=event_id))
    assert event_row(store, event_id)["status"] == "received"


def test_checkout_with_a_customer_linked_elsewhere_is_unrecoverable(
    store: Store, resources: Resources, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    other_org = add_org(store)
    body = build_event("checkout.session.completed", checkout_session(other_org, org["customer_id"]))
    event_id = deliver(store, body).event_id

    with pytest.raises(Unrecoverable, match=f"customer {org['customer_id']} is already linked to organisation"):
        fake_queue.perform(ProcessStripeEvent(event_id=event_id))
    assert customer_of(store, other_org) is None
    assert event_row(store, event_id)["status"] == "received"


def test_checkout_without_our_reference_is_skipped(store: Store, resources: Resources, fake_queue: FakeQueue) -> None:
    fake_queue.resources = resources
    event_id = deliver(store, build_event("checkout.session.completed", checkout_session(None, "cus_new"))).event_id

    assert fake_queue.perform(ProcessStripeEvent(event_id=event_id))["outcome"].startswith("skipped")
    assert event_row(store, event_id)["status"] == "skipped"


def test_checkout_through_the_queue(store: Store, resources: Resources, fake_queue: FakeQueue) -> None:
    fake_queue.resources = resources
    org_id = add_org(store)
    deliver(store, build_event("checkout.session.completed", checkout_session(org_id, "cus_x")))

    result = fake_queue.drain()

    # ProcessStripeEvent, then the checkout workflow: sync, audit, activity (this organisation has no owner to receipt)
    assert (result.succeeded, result.failed, result.retried) == (4, 0, 0)
    assert customer_of(store, org_id) == "cus_x"
