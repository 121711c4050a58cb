"""Queue `stripe` (concurrency 3): incoming Stripe webhook events.

Two halves:

- Ingress, called by whatever web framework receives the webhook:
  `receive_stripe_event` (or `stripe_webhook_response`, which turns the
  outcome into a status and a JSON body) checks the `Stripe-Signature` header
  against the raw body with the `stripe` package, stores the event once under
  its id in `stripe_events` and enqueues `ProcessStripeEvent(event_id)`.
  Nothing is stored for an event that fails the checks.
- `ProcessStripeEvent` routes a stored event: subscription and invoice events
  to the `billing` queue (`jobs.billing`), `checkout.session.completed` links
  the Stripe customer to the organisation here, anything else is skipped.

`sign_stripe_payload` and `build_event` make signed, realistic events for tests
and the demo.

This module is `jobs.stripe`; `import stripe` below is an absolute import and
so still finds the Stripe package, not this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Connection

from forgejobs import Context, Job, JobHandle, Unrecoverable, backoff

from .billing import (
    INVOICE_EVENTS,
    SUBSCRIPTION_EVENTS,
    RecordInvoice,
    StoredEvent,
    SyncSubscription,
    load_event,
    object_id,
)
from .resources import Resources
from .store import Store, organisations, stripe_events, utcnow
from .workflows import Checkout

EVENT_ID = re.compile(r"^evt_[A-Za-z0-9_]{1,60}$")
"""What an event id must look like: it becomes part of job ids (`stripe-<id>`, `dunning-<id>-<user>`),
which allow letters, digits, `_` and `-` up to 128 characters."""

CHECKOUT_COMPLETED = "checkout.session.completed"


class InvalidStripeEvent(ValueError):
    """A webhook request that is not a genuine, well-formed Stripe event. The message says what is wrong."""


@dataclass(frozen=True)
class Received:
    """What `receive_stripe_event` did with one delivery."""

    event_id: str
    type: str
    duplicate: bool
    """True when the event was already stored: a replay or a redelivery. No second row is written."""
    handle: JobHandle | None = None
    """The `ProcessStripeEvent` job: new for a first delivery; for a duplicate whose event is still
    unprocessed, the existing job (`handle.existing`), or a new one if the first enqueue was lost;
    None for a duplicate that was already processed or skipped."""


def sign_stripe_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, made as Stripe makes it: `t=<ts>,v1=<hex HMAC-SHA256>`
    of `"<ts>.<payload>"` keyed with the endpoint's secret (the whole `whsec_...` string). For tests and demos."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


def build_event(type: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None) -> bytes:
    """The JSON body of a Stripe event of `type` about `obj` (its `data.object`), shaped like a real one."""
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": stripe.api_version,
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
    return json.dumps(event).encode()


def verify_stripe_event(
    payload: bytes, signature_header: str | None, *, secret: str, tolerance: int = 300
) -> dict[str, Any]:
    """The event in `payload` once its signature, age and shape are checked; `InvalidStripeEvent` otherwise.

    The signature is checked by `stripe.WebhookSignature.verify_header` over the
    raw bytes: parse nothing before this, re-serialised JSON would not match. A
    timestamp more than `tolerance` seconds old is refused (0 turns the check
    off); like the stripe package, a timestamp in the future is accepted.
    """
    if not secret or not secret.strip():
        raise ValueError("no Stripe webhook secret configured (FORGEJOBS_CATALOG_STRIPE_WEBHOOK_SECRET)")
    if not signature_header:
        raise InvalidStripeEvent("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload, signature_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidStripeEvent(f"Stripe-Signature refused: {exc.user_message or exc}") from None
    except UnicodeDecodeError:
        raise InvalidStripeEvent("the body is not UTF-8 text") from None
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise InvalidStripeEvent(f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidStripeEvent(f"the body is JSON {type(event).__name__}, not an event object")
    if event.get("object", "event") != "event":
        raise InvalidStripeEvent(
            f"object is {event.get('object')!r}, not 'event' (thin v2 events are not supported: use a snapshot "
            "event destination)"
        )
    event_id = event.get("id")
    if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
        raise InvalidStripeEvent(f"id {event_id!r} is not a Stripe event id (evt_ and up to 60 letters/digits)")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
        raise InvalidStripeEvent(f"event {event_id}: type {event_type!r} is missing or invalid")
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise InvalidStripeEvent(f"event {event_id}: created {created!r} is not epoch seconds")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise InvalidStripeEvent(f"event {event_id}: data.object is missing or not an object")
    return event


def _enqueue_processing(store: Store, conn: Connection, event_id: str) -> JobHandle:
    return store.enqueue(conn, ProcessStripeEvent(event_id=event_id), job_id=f"stripe-{event_id}")


def receive_stripe_event(
    store: Store, payload: bytes, signature_header: str | None, *, secret: str, tolerance: int = 300
) -> Received:
    """Verify one webhook delivery, store its event once, and enqueue `ProcessStripeEvent` for it in the
    same transaction (`Store.enqueue`: sent after the commit, or an outbox row).

    `payload` is the request body exactly as received; `signature_header` the
    `Stripe-Signature` header (None if absent). Raises `InvalidStripeEvent`
    (answer 400) when the delivery is refused; nothing is stored then. A
    `BackendError` from the enqueue after the commit (queue unreachable)
    propagates: answer 5xx, Stripe delivers again, and the redelivery enqueues
    the job the first one could not (the stored event is still `received`).
    With an outbox there is no such error: the job is a row of the transaction.
    """
    event = verify_stripe_event(payload, signature_header, secret=secret, tolerance=tolerance)
    event_id, event_type = str(event["id"]), str(event["type"])
    with store.transaction() as conn:
        inserted = store.insert_ignore(
            conn,
            stripe_events,
            {
                "id": event_id,
                "type": event_type,
                "livemode": bool(event.get("livemode", False)),
                "created": int(event["created"]),
                "payload": event,
                "status": "received",
                "received_at": utcnow(),
            },
        )
        status = (
            "received"
            if inserted
            else conn.execute(sa.select(stripe_events.c.status).where(stripe_events.c.id == event_id)).scalar_one()
        )
        # Stored but not processed (a redelivery): its job normally exists, and the same job id makes this a no-op.
        handle = _enqueue_processing(store, conn, event_id) if status == "received" else None
    return Received(event_id, event_type, duplicate=not inserted, handle=handle)


def stripe_webhook_response(
    store: Store, payload: bytes, signature_header: str | None, *, secret: str, tolerance: int = 300
) -> tuple[int, dict[str, Any]]:
    """`receive_stripe_event` as an HTTP answer: `(200, {...})` for an accepted or duplicate event,
    `(400, {"error": reason})` for a refused one. Other errors propagate (let the framework answer 500)."""
    try:
        received = receive_stripe_event(store, payload, signature_header, secret=secret, tolerance=tolerance)
    except InvalidStripeEvent as exc:
        return 400, {"error": str(exc)}
    return 200, {"received": received.event_id, "type": received.type, "duplicate": received.duplicate}


def _mark(store: Store, event_id: str, status: str) -> None:
    with store.begin() as conn:
        conn.execute(
            stripe_events.update()
            .where(stripe_events.c.id == event_id, stripe_events.c.status == "received")
            .values(status=status, processed_at=utcnow())
        )


class ProcessStripeEvent(
    Job, queue="stripe", attempts=5, backoff=backoff.exponential(10, max_seconds=900, jitter=0.2), timeout="30s"
):
    """Route one stored Stripe event, then mark it `processed` (or `skipped`).

    - `customer.subscription.created|updated|deleted|paused|resumed` -> `billing.SyncSubscription`
    - `invoice.paid`, `invoice.payment_failed` -> `billing.RecordInvoice`
    - `checkout.session.completed` -> sets `organisations.stripe_customer_id` of the organisation named
      by the session's `client_reference_id` to the session's `customer`, if the organisation has none;
      then, for a subscription checkout, starts the `checkout` workflow keyed by the event id
      (`jobs.workflows.Checkout`: sync the subscription, then receipts, audit and activity)
    - anything else -> `skipped`, logged

    Billing jobs get job id `billing-<event id>`, so running this again enqueues nothing twice; an event
    already processed or skipped is left alone. A missing event is Unrecoverable.
    """

    event_id: str

    def perform(self, ctx: Context[Resources]) -> dict[str, str]:
        store = ctx.resources.db
        event = load_event(store, self.event_id)
        if event.status != "received":
            ctx.logger.info("Stripe event %s (%s) is already %s", event.id, event.type, event.status)
            return {"event": event.id, "type": event.type, "outcome": f"already {event.status}"}
        billing_job: type[Job] | None = None
        if event.type in SUBSCRIPTION_EVENTS:
            billing_job = SyncSubscription
        elif event.type in INVOICE_EVENTS:
            billing_job = RecordInvoice
        if billing_job is not None:
            billing_job.with_options(job_id=f"billing-{event.id}").enqueue(event_id=event.id)
            _mark(store, event.id, "processed")
            return {"event": event.id, "type": event.type, "outcome": f"routed to {billing_job.job_name()}"}
        if event.type == CHECKOUT_COMPLETED:
            outcome = link_customer(ctx, event)
            if not outcome.startswith("skipped") and object_id(event.object.get("subscription")) is not None:
                run = Checkout.start(key=event.id, event_id=event.id)
                return {"event": event.id, "type": event.type, "outcome": outcome, "workflow": run.id}
            return {"event": event.id, "type": event.type, "outcome": outcome}
        ctx.logger.info("Stripe event %s: no handler for type %s; skipped", event.id, event.type)
        _mark(store, event.id, "skipped")
        return {"event": event.id, "type": event.type, "outcome": "skipped"}


def link_customer(ctx: Context[Resources], event: StoredEvent) -> str:
    """Apply a `checkout.session.completed`: give the organisation named by `client_reference_id` the
    session's Stripe customer, if it has none yet. Returns what was done; marks the event in the same
    transaction."""
    store = ctx.resources.db
    session = event.object
    org_id, customer = session.get("client_reference_id"), object_id(session.get("customer"))
    if not isinstance(org_id, str) or not org_id or customer is None:
        ctx.logger.info("Stripe event %s: checkout session without client_reference_id or customer; skipped", event.id)
        _mark(store, event.id, "skipped")
        return "skipped: no client_reference_id or customer"
    with store.begin() as conn:
        current = conn.execute(
            sa.select(organisations.c.stripe_customer_id).where(organisations.c.id == org_id)
        ).one_or_none()
        if current is None:
            raise Unrecoverable(
                f"Stripe event {event.id}: checkout session {session.get('id')} names organisation {org_id!r} "
                "(client_reference_id), which does not exist"
            )
        if current.stripe_customer_id == customer:
            outcome = f"{org_id} already linked to {customer}"
        elif current.stripe_customer_id is not None:
            ctx.logger.warning(
                "Stripe event %s: organisation %s already has customer %s; %s not linked",
                event.id,
                org_id,
                current.stripe_customer_id,
                customer,
            )
            outcome = f"{org_id} keeps {current.stripe_customer_id}; {customer} not linked"
        else:
            other = conn.execute(
                sa.select(organisations.c.id).where(organisations.c.stripe_customer_id == customer)
            ).scalar_one_or_none()
            if other is not None:
                raise Unrecoverable(
                    f"Stripe event {event.id}: customer {customer} is already linked to organisation {other}, "
                    f"not {org_id}; fix organisations.stripe_customer_id by hand"
                )
            updated = conn.execute(
                organisations.update()
                .where(organisations.c.id == org_id, organisations.c.stripe_customer_id.is_(None))
                .values(stripe_customer_id=customer)
            )
            if updated.rowcount != 1:
                raise RuntimeError(f"organisation {org_id} changed while linking {customer}; trying again")
            outcome = f"linked {org_id} to {customer}"
        conn.execute(
            stripe_events.update()
            .where(stripe_events.c.id == event.id, stripe_events.c.status == "received")
            .values(status="processed", processed_at=utcnow())
        )
    ctx.logger.info("Stripe event %s: %s", event.id, outcome)
    return outcome
