"""Queue `billing` (concurrency 2): subscription and invoice state, mirrored from Stripe events.

`jobs.stripe.ProcessStripeEvent` routes each stored Stripe event here by id;
these jobs read the event back from `stripe_events` and converge the
`subscriptions` and `invoices` rows on it:

- `SyncSubscription(event_id)`: `customer.subscription.*` -> one `subscriptions` row;
  a deleted subscription tells the organisation's owners.
- `RecordInvoice(event_id)`: `invoice.paid` / `invoice.payment_failed` -> one `invoices` row;
  a payment tells the owners, a failed payment tells them urgently (dunning).

Ordering: Stripe does not deliver events in order. A row remembers the
`created` time of the event last applied (`stripe_updated`) and an event older
than that changes nothing, so a late delivery never rolls state back. A final
state (`canceled` subscription, `paid` invoice) is not left again for a
non-final one carrying the same timestamp.

Idempotency: re-running a job re-applies the same values and re-enqueues its
notifications under the same explicit job ids, which the queue stores at most
once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from forgejobs import Context, Job, RetryLater, Unrecoverable, backoff

from .email import notify
from .resources import Resources
from .store import Store, invoices, organisations, owner_ids, stripe_events, subscriptions, utcnow

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
"""Event types `SyncSubscription` applies."""

INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
"""Event types `RecordInvoice` applies."""

FINAL_SUBSCRIPTION_STATUSES = ("canceled", "incomplete_expired")
"""Stripe never moves a subscription out of these."""

FINAL_INVOICE_STATUSES = ("paid", "void")
"""Stripe never moves an invoice out of these."""

UNKNOWN_CUSTOMER_GRACE = timedelta(hours=1)
"""How long after an event was received a billing job waits for its customer to be linked to an organisation."""

UNKNOWN_CUSTOMER_RETRY = timedelta(seconds=30)
"""How often it looks again meanwhile (`RetryLater`: no attempt is used)."""


@dataclass(frozen=True)
class StoredEvent:
    """One row of `stripe_events`, as the handlers read it."""

    id: str
    type: str
    created: int
    livemode: bool
    status: str
    received_at: datetime
    payload: dict[str, Any]

    @property
    def object(self) -> dict[str, Any]:
        """The event's `data.object` (checked to be a JSON object when the event was received)."""
        data = self.payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise Unrecoverable(f"Stripe event {self.id} ({self.type}) has no data.object")
        return obj


def load_event(store: Store, event_id: str, *, types: frozenset[str] | None = None) -> StoredEvent:
    """The stored event `event_id`. Unrecoverable if there is none, or if its type is not one of `types`."""
    with store.begin() as conn:
        row = conn.execute(sa.select(stripe_events).where(stripe_events.c.id == event_id)).mappings().first()
    if row is None:
        raise Unrecoverable(f"no Stripe event {event_id!r} in stripe_events (was it received by this database?)")
    event = StoredEvent(
        id=row["id"],
        type=row["type"],
        created=int(row["created"]),
        livemode=bool(row["livemode"]),
        status=row["status"],
        received_at=row["received_at"],
        payload=dict(row["payload"]),
    )
    if types is not None and event.type not in types:
        raise Unrecoverable(f"Stripe event {event_id} is a {event.type}; this job handles {', '.join(sorted(types))}")
    return event


def object_id(value: Any) -> str | None:
    """The id in a Stripe reference field, which is either an id string or an expanded object with an `id`."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def org_for_customer(conn: Connection, customer_id: str | None) -> str | None:
    """The id of the organisation whose `stripe_customer_id` is `customer_id`, if any."""
    if customer_id is None:
        return None
    found = conn.execute(
        sa.select(organisations.c.id).where(organisations.c.stripe_customer_id == customer_id)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def event_and_org(ctx: Context[Resources], event_id: str, types: frozenset[str]) -> tuple[StoredEvent, str]:
    """The stored event and the organisation of its object's customer (waiting for the link if none yet)."""
    event = load_event(ctx.resources.db, event_id, types=types)
    customer = object_id(event.object.get("customer"))
    with ctx.resources.db.begin() as conn:
        org_id = org_for_customer(conn, customer)
    if org_id is None:
        wait_for_customer(ctx, event, customer)
    return event, org_id


def wait_for_customer(ctx: Context[Resources], event: StoredEvent, customer_id: str | None) -> NoReturn:
    """No organisation has this customer: wait for its `checkout.session.completed` to link it, within limits.

    Within `UNKNOWN_CUSTOMER_GRACE` of the event's arrival, `RetryLater` every
    `UNKNOWN_CUSTOMER_RETRY`; after that (or on the job's last attempt),
    `Unrecoverable`: the dead letter can be requeued once the customer is linked.
    """
    what = f"Stripe event {event.id} ({event.type})"
    if customer_id is None:
        raise Unrecoverable(f"{what} names no customer")
    waited = utcnow() - event.received_at
    if waited < UNKNOWN_CUSTOMER_GRACE and not ctx.is_last_attempt:
        raise RetryLater(
            UNKNOWN_CUSTOMER_RETRY,
            f"customer {customer_id} is not linked to an organisation yet (its checkout.session.completed may "
            "still be on its way)",
        )
    raise Unrecoverable(
        f"{what}: customer {customer_id} is linked to no organisation (organisations.stripe_customer_id) "
        f"{int(waited.total_seconds())} s after the event arrived; link it, then requeue this job"
    )


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _field(event: StoredEvent, obj: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Unrecoverable(
            f"Stripe event {event.id} ({event.type}): {obj.get('object', 'object')}.{name} "
            f"should be {kind.__name__}, got {value!r}"
        )
    return value


def _first_item(obj: dict[str, Any]) -> dict[str, Any]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return {}


def subscription_values(event: StoredEvent, org_id: str) -> dict[str, Any]:
    """The `subscriptions` row an event's subscription object describes.

    Accepts both API shapes: `current_period_end` and the price at the top
    level (older versions) or on the first subscription item (2025 and later).
    """
    sub = event.object
    item = _first_item(sub)
    price = object_id(item.get("price")) or object_id(sub.get("plan")) or object_id(item.get("plan"))
    quantity = item.get("quantity", sub.get("quantity"))
    period_end = _epoch(sub.get("current_period_end")) or _epoch(item.get("current_period_end"))
    return {
        "id": _field(event, sub, "id", str),
        "org_id": org_id,
        "status": _field(event, sub, "status", str),
        "price_id": price,
        "quantity": quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else None,
        "current_period_end": period_end,
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end", False)),
        "stripe_updated": event.created,
        "updated_at": utcnow(),
    }


def invoice_values(event: StoredEvent, org_id: str) -> dict[str, Any]:
    """The `invoices` row an event's invoice object describes.

    The subscription is `invoice.subscription` in older API versions and
    `invoice.parent.subscription_details.subscription` in newer ones. `paid_at`
    is `status_transitions.paid_at`, or the event's time for an `invoice.paid`
    that lacks it.
    """
    inv = event.object
    subscription = object_id(inv.get("subscription"))
    parent = inv.get("parent")
    if subscription is None and isinstance(parent, dict) and isinstance(parent.get("subscription_details"), dict):
        subscription = object_id(parent["subscription_details"].get("subscription"))
    status = _field(event, inv, "status", str)
    paid_at = None
    if status == "paid":
        transitions = inv.get("status_transitions")
        paid_at = _epoch(transitions.get("paid_at")) if isinstance(transitions, dict) else None
        paid_at = paid_at or datetime.fromtimestamp(event.created, UTC)
    url = inv.get("hosted_invoice_url")
    attempt_count = inv.get("attempt_count", 0)
    return {
        "id": _field(event, inv, "id", str),
        "org_id": org_id,
        "subscription_id": subscription,
        "status": status,
        "amount_due": _field(event, inv, "amount_due", int),
        "amount_paid": _field(event, inv, "amount_paid", int),
        "currency": _field(event, inv, "currency", str),
        "attempt_count": attempt_count if isinstance(attempt_count, int) else 0,
        "hosted_invoice_url": url if isinstance(url, str) else None,
        "stripe_updated": event.created,
        "paid_at": paid_at,
        "updated_at": utcnow(),
    }


# Stripe's `created` has one-second resolution, and one checkout often emits `customer.subscription.created`
# (incomplete) and `.updated` (active) within the same second, delivered in any order. Between two events of
# the same second, the one whose status is further along a subscription's (or invoice's) life wins.
SUBSCRIPTION_PROGRESS = {"incomplete": 0, "trialing": 1, "active": 2, "past_due": 3, "unpaid": 4, "paused": 4}
INVOICE_PROGRESS = {"draft": 0, "open": 1, "uncollectible": 2}


def _guard(
    table: sa.Table, event: StoredEvent, new_status: str, final: tuple[str, ...], progress: dict[str, int]
) -> sa.ColumnElement[bool]:
    """Update the stored row only if this event is newer, or of the same second and not behind the stored
    status; and never from a final status to another one."""
    rank = progress.get(new_status, max(progress.values()) + 1)  # a final or unknown status is furthest along
    not_behind = [status for status, r in progress.items() if r <= rank]
    same_second = sa.and_(table.c.stripe_updated == event.created, table.c.status.in_(not_behind))
    if new_status in final or new_status not in progress:
        same_second = table.c.stripe_updated == event.created
    condition = sa.or_(table.c.stripe_updated < event.created, same_second)
    if new_status not in final:
        condition = sa.and_(condition, table.c.status.not_in(final))
    return condition


class SyncSubscription(
    Job, queue="billing", attempts=5, backoff=backoff.exponential(30, max_seconds=1800, jitter=0.2), timeout="30s"
):
    """Apply a `customer.subscription.*` event to its `subscriptions` row.

    The organisation is the one whose `stripe_customer_id` is the subscription's
    customer (see `wait_for_customer` when there is none yet). The row is
    written only if the event is not older than the one last applied. A
    `customer.subscription.deleted` that is applied enqueues
    `Notification(kind="subscription_canceled", ref=<sub id>)` for each owner,
    with job id `notify-<event id>-<user id>`.
    """

    event_id: str

    def perform(self, ctx: Context[Resources]) -> dict[str, Any]:
        store = ctx.resources.db
        event, org_id = event_and_org(ctx, self.event_id, SUBSCRIPTION_EVENTS)
        values = subscription_values(event, org_id)
        where = _guard(subscriptions, event, values["status"], FINAL_SUBSCRIPTION_STATUSES, SUBSCRIPTION_PROGRESS)
        with store.begin() as conn:
            applied = store.upsert(conn, subscriptions, values, ["id"], where=where)
            owners = owner_ids(conn, org_id) if applied and event.type == "customer.subscription.deleted" else []
        if not applied:
            ctx.logger.info("subscription %s: event %s is older than the stored state; ignored", values["id"], event.id)
        for user_id in owners:
            notify(user_id, "subscription_canceled", values["id"], job_id=f"notify-{event.id}-{user_id}")
        return {"subscription": values["id"], "status": values["status"], "applied": applied, "notified": owners}


class RecordInvoice(
    Job, queue="billing", attempts=5, backoff=backoff.exponential(30, max_seconds=1800, jitter=0.2), timeout="30s"
):
    """Apply an `invoice.paid` or `invoice.payment_failed` event to its `invoices` row.

    Same organisation lookup and ordering rule as `SyncSubscription`. When the
    row is written: `invoice.paid` sets `paid_at` and enqueues
    `Notification(kind="invoice_paid")` for each owner (job id
    `notify-<event id>-<user id>`); `invoice.payment_failed` enqueues
    `Notification(kind="payment_failed")` at priority 1 (job id
    `dunning-<event id>-<user id>`).
    """

    event_id: str

    def perform(self, ctx: Context[Resources]) -> dict[str, Any]:
        store = ctx.resources.db
        event, org_id = event_and_org(ctx, self.event_id, INVOICE_EVENTS)
        values = invoice_values(event, org_id)
        where = _guard(invoices, event, values["status"], FINAL_INVOICE_STATUSES, INVOICE_PROGRESS)
        with store.begin() as conn:
            applied = store.upsert(conn, invoices, values, ["id"], where=where)
            owners = owner_ids(conn, org_id) if applied else []
        if not applied:
            ctx.logger.info("invoice %s: event %s is older than the stored state; ignored", values["id"], event.id)
        failed = event.type == "invoice.payment_failed"
        for user_id in owners:
            if failed:  # dunning: urgent
                notify(user_id, "payment_failed", values["id"], urgent=True, job_id=f"dunning-{event.id}-{user_id}")
            else:
                notify(user_id, "invoice_paid", values["id"], job_id=f"notify-{event.id}-{user_id}")
        return {"invoice": values["id"], "status": values["status"], "applied": applied, "notified": owners}
