"""The catalog's multi-step flows as workflows (docs/workflows.md, docs/catalog.md).

- `SignUp` / `MemberSignUp`: after `flows.sign_up` has stored the user, the welcome email, the audit event
  and (for a member of an organisation) the activity entry, side by side, as one run keyed by the user id.
- `Checkout`: a `checkout.session.completed` (started by `stripe.ProcessStripeEvent` once the customer is
  linked): `sync` records the session's subscription, then a receipt to each owner, the audit event and the
  activity entry run side by side, all reading `sync`'s output. Keyed by the event id.
- `MonthlyInvoicing`: one `InvoiceOrganisation` per organisation (fan-out), then `InvoicingSummary` with all
  of their outputs (fan-in). `StartMonthlyInvoicing` starts it for a month (by default the one before).

Each is checked when this module is imported (`forgejobs check` lists them).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import BaseModel, Field

from forgejobs import Context, Job, Unrecoverable, backoff
from forgejobs.workflows import Step, Value, Workflow, chain, group

from .activity import CreateActivity
from .audit import RecordAuditEvent
from .billing import load_event, object_id
from .email import EmailOutcome, WelcomeEmail, _address, _deliver, _user
from .resources import Resources
from .store import organisations, owner_ids, subscriptions, usage_events

# -- sign-up ---------------------------------------------------------------------------------------


class SignUpInput(BaseModel):
    """What `flows.sign_up` stored: the user, and what the audit event says about them."""

    user_id: str
    target: str = Field(description="the audit event's target: user:<id>")
    request_id: str | None = None


class MemberSignUpInput(SignUpInput):
    """A sign-up into an organisation: also the activity entry's organisation and summary."""

    org_id: str
    summary: str


class SignUp(Workflow, input=SignUpInput, name="sign_up"):
    """Welcome email and audit event of a user who signed up on their own."""

    welcome = Step(WelcomeEmail, {"user_id": "input.user_id"})
    audit = Step(
        RecordAuditEvent,
        {
            "actor_id": "input.user_id",
            "action": Value("user.signed_up"),
            "target": "input.target",
            "request_id": "input.request_id",
        },
    )
    flow = group(welcome, audit)


class MemberSignUp(Workflow, input=MemberSignUpInput, name="member_sign_up"):
    """`SignUp` for a member of an organisation: also its activity entry."""

    welcome = Step(WelcomeEmail, {"user_id": "input.user_id"})
    audit = Step(
        RecordAuditEvent,
        {
            "actor_id": "input.user_id",
            "action": Value("user.signed_up"),
            "target": "input.target",
            "org_id": "input.org_id",
            "request_id": "input.request_id",
        },
    )
    activity = Step(
        CreateActivity,
        {
            "org_id": "input.org_id",
            "actor_id": "input.user_id",
            "verb": Value("member.joined"),
            "object_type": Value("user"),
            "object_id": "input.user_id",
            "summary": "input.summary",
        },
    )
    flow = group(welcome, audit, activity)


# -- checkout.session.completed --------------------------------------------------------------------


class CheckoutInput(BaseModel):
    event_id: str


class CheckoutSynced(BaseModel):
    """What `SyncCheckout` found and recorded; the later steps read it."""

    org_id: str
    subscription_id: str
    status: str
    created: bool
    owner_ids: list[str]
    target: str
    summary: str


class SyncCheckout(
    Job, queue="billing", attempts=5, backoff=backoff.exponential(30, max_seconds=1800, jitter=0.2), timeout="30s"
):
    """Record the subscription a completed checkout session started (for an organisation whose customer
    `ProcessStripeEvent` has linked).

    A row the subscription's own `customer.subscription.*` events have not written yet is inserted with
    `stripe_updated = 0`, so any of those events replaces it; an existing row is left alone."""

    event_id: str

    def perform(self, ctx: Context[Resources]) -> CheckoutSynced:
        store = ctx.resources.db
        event = load_event(store, self.event_id, types=frozenset({"checkout.session.completed"}))
        session = event.object
        org_id, subscription_id = session.get("client_reference_id"), object_id(session.get("subscription"))
        if not isinstance(org_id, str) or not org_id or subscription_id is None:
            raise Unrecoverable(f"Stripe event {event.id}: the checkout session names no organisation or subscription")
        status = "active" if session.get("payment_status") in ("paid", "no_payment_required") else "incomplete"
        with store.begin() as conn:
            found = sa.select(organisations.c.name).where(organisations.c.id == org_id)
            name = conn.execute(found).scalar_one_or_none()
            if name is None:
                raise Unrecoverable(f"Stripe event {event.id}: no organisation {org_id!r}")
            created = store.insert_ignore(
                conn,
                subscriptions,
                {"id": subscription_id, "org_id": org_id, "status": status, "stripe_updated": 0},
            )
            current = conn.execute(
                sa.select(subscriptions.c.status).where(subscriptions.c.id == subscription_id)
            ).scalar_one()
            owners = owner_ids(conn, org_id)
        return CheckoutSynced(
            org_id=org_id,
            subscription_id=subscription_id,
            status=str(current),
            created=created,
            owner_ids=owners,
            target=f"subscription:{subscription_id}",
            summary=f"{name} subscribed ({subscription_id})",
        )


class CheckoutReceipt(
    Job, queue="email", attempts=8, backoff=backoff.exponential(30, max_seconds=3600, jitter=0.2), timeout="60s"
):
    """Thank an owner for a completed checkout (template `checkout_receipt`)."""

    user_id: str
    org_id: str
    subscription_id: str

    def perform(self, ctx: Context[Resources]) -> EmailOutcome:
        user = _user(ctx.resources.db, self.user_id)
        with ctx.resources.db.begin() as conn:
            org_name = conn.execute(
                sa.select(organisations.c.name).where(organisations.c.id == self.org_id)
            ).scalar_one_or_none()
        if org_name is None:
            raise Unrecoverable(f"no organisation {self.org_id!r}")
        return _deliver(
            ctx,
            kind="checkout_receipt",
            to=_address(user.email, user.name),
            template="checkout_receipt",
            values={"name": user.name, "org_name": org_name, "subscription_id": self.subscription_id},
        )


class Checkout(Workflow, input=CheckoutInput, name="checkout"):
    """`checkout.session.completed`: sync the subscription, then receipts, audit and activity side by side."""

    sync = Step(SyncCheckout, {"event_id": "input.event_id"})
    receipt = Step(
        CheckoutReceipt,
        {
            "user_id": "item",
            "org_id": "steps.sync.output.org_id",
            "subscription_id": "steps.sync.output.subscription_id",
        },
        for_each="steps.sync.output.owner_ids",
    )
    audit = Step(
        RecordAuditEvent,
        {
            "actor_id": Value("stripe"),
            "action": Value("billing.checkout_completed"),
            "target": "steps.sync.output.target",
            "org_id": "steps.sync.output.org_id",
            "request_id": "input.event_id",
        },
    )
    activity = Step(
        CreateActivity,
        {
            "org_id": "steps.sync.output.org_id",
            "verb": Value("subscription.started"),
            "object_type": Value("subscription"),
            "object_id": "steps.sync.output.subscription_id",
            "summary": "steps.sync.output.summary",
        },
    )
    flow = chain(sync, group(receipt, audit, activity))


# -- monthly invoicing -----------------------------------------------------------------------------

MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The first instant of `month` (YYYY-MM, UTC) and of the month after."""
    if not re.match(MONTH, month):
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    year, number = int(month[:4]), int(month[5:])
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


class Invoicing(BaseModel):
    month: str = Field(pattern=MONTH)
    org_ids: list[str]


class OrgInvoice(BaseModel):
    """One organisation's usage in the month: `quantity` over `events` usage events."""

    org_id: str
    month: str
    quantity: int
    events: int


class InvoicingTotals(BaseModel):
    month: str
    organisations: int
    quantity: int
    largest: str | None


class InvoiceOrganisation(Job, queue="billing", attempts=5, backoff=backoff.exponential(30, max_seconds=1800)):
    """One organisation's usage for the month, summed from `usage_events` (reading only: safe to rerun)."""

    org_id: str
    month: str = Field(pattern=MONTH)

    def perform(self, ctx: Context[Resources]) -> OrgInvoice:
        start, end = month_bounds(self.month)
        with ctx.resources.db.begin() as conn:
            row = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(usage_events.c.quantity), 0), sa.func.count()).where(
                    usage_events.c.org_id == self.org_id,
                    usage_events.c.occurred_at >= start,
                    usage_events.c.occurred_at < end,
                )
            ).one()
        return OrgInvoice(org_id=self.org_id, month=self.month, quantity=int(row[0]), events=int(row[1]))


class InvoicingSummary(Job, queue="billing", attempts=3):
    """The month's totals over every organisation's invoice (the fan-in)."""

    month: str
    invoices: list[OrgInvoice]

    def perform(self, ctx: Context[Resources]) -> InvoicingTotals:
        largest = max(self.invoices, key=lambda i: (i.quantity, i.org_id), default=None)
        totals = InvoicingTotals(
            month=self.month,
            organisations=len(self.invoices),
            quantity=sum(i.quantity for i in self.invoices),
            largest=largest.org_id if largest is not None and largest.quantity > 0 else None,
        )
        ctx.logger.info("invoicing %s: %d organisations, %d units", totals.month, totals.organisations, totals.quantity)
        return totals


class MonthlyInvoicing(Workflow, input=Invoicing, name="monthly_invoicing"):
    """One `InvoiceOrganisation` per organisation, then the month's summary with all of their outputs."""

    invoice = Step(InvoiceOrganisation, {"org_id": "item", "month": "input.month"}, for_each="input.org_ids")
    summary = Step(InvoicingSummary, {"month": "input.month", "invoices": "steps.invoice.output"})
    flow = chain(invoice, summary)


def previous_month(now: datetime) -> str:
    first = now.astimezone(UTC).replace(day=1)
    year, month = (first.year, first.month - 1) if first.month > 1 else (first.year - 1, 12)
    return f"{year:04d}-{month:02d}"


class StartMonthlyInvoicing(Job, queue="billing", attempts=3):
    """Start `MonthlyInvoicing` for `month` (default: the month before now) over every organisation.

    The run's key is `invoicing:<month>`: running this again returns the run already started."""

    month: str | None = Field(default=None, pattern=MONTH)

    def perform(self, ctx: Context[Resources]) -> dict[str, str]:
        month = self.month or previous_month(datetime.now(UTC))
        with ctx.resources.db.begin() as conn:
            org_ids = [
                str(o) for o in conn.execute(sa.select(organisations.c.id).order_by(organisations.c.id)).scalars()
            ]
        run = MonthlyInvoicing.start(key=f"invoicing:{month}", month=month, org_ids=org_ids)
        return {"run": run.id, "month": month, "organisations": str(len(org_ids)), "existing": str(run.existing)}
