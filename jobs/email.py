"""Queue `email` (concurrency 5): transactional email.

Jobs carry ids only; each handler loads its rows from `ctx.resources.db`,
renders a template pair (`jobs/templates/email/`), and hands the message to
`ctx.resources.mailer`. Every message's `Message-ID` is `<job id@mail domain>`
and every sent message is recorded in `sent_emails` under its job id, so a job
that runs again after it sent (a crash before the worker acknowledged it, a
requeued dead letter, a repeated enqueue with the same `job_id`) sends nothing
the second time.

Failures: a missing row, or a recipient the server refuses for good, raise
`Unrecoverable` (dead-lettered at once); transport trouble
(`TransientMailError`, `MailSetupError`) and database errors propagate, so the
job is retried with backoff.

The application side uses `invite(...)` and `notify(...)` below.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Any, Literal, get_args

import sqlalchemy as sa
from pydantic import BaseModel
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import Connection, Row

from forgejobs import Context, Job, JobHandle, RetryLater, Unrecoverable, backoff

from .mail import RecipientRefused, build_message, clean_display_name, format_money, message_id_for, render
from .resources import Resources
from .store import (
    Store,
    invitations,
    invoices,
    max_length,
    memberships,
    new_id,
    organisations,
    sent_emails,
    subscriptions,
    users,
    utcnow,
    webhook_endpoints,
)

__all__ = [
    "EmailOutcome",
    "Notification",
    "NotificationKind",
    "SendInvitation",
    "WelcomeEmail",
    "invite",
    "notify",
    "sent_key",
]

NotificationKind = Literal["payment_failed", "invoice_paid", "subscription_canceled", "webhook_endpoint_disabled"]
"""What a `Notification` tells its user; `ref` is the id of the row it is about (invoice, subscription, endpoint)."""

NOTIFICATION_KINDS: tuple[str, ...] = get_args(NotificationKind)

# The email jobs' shared options: a mail server that is down for a while is waited out
# (30 s, 1 min, 2 min, ... capped at an hour), and a stuck SMTP conversation is cut off.
_RETRIES = backoff.exponential(30, max_seconds=3600, jitter=0.2)
_ATTEMPTS = 5
_TIMEOUT = "2m"
STALE_CLAIM = timedelta(minutes=5)
"""The least age at which a `sending` claim counts as left by a run that died: twice the run's timeout, and
never less than this (the jobs' own timeout is 2 minutes). Claim times come from the workers' clocks, so
hosts are assumed to keep time (NTP); skew beyond the margin could let two runs send."""


_JOB_ID_LIMIT = max_length(sent_emails.c.job_id)
_MESSAGE_ID_LIMIT = max_length(sent_emails.c.message_id)
_SUBJECT_LIMIT = max_length(sent_emails.c.subject)


class EmailOutcome(BaseModel):
    """What an email job returns (`handle.result()`).

    After a send: `to` and `message_id`. When the job had already sent its
    message: the same two, and `skipped="already sent"`. When there was
    nothing to send (e.g. an accepted invitation): only `skipped`, saying why.
    """

    to: str | None = None
    message_id: str | None = None
    skipped: str | None = None


class WelcomeEmail(Job, queue="email", attempts=_ATTEMPTS, backoff=_RETRIES, priority=5, timeout=_TIMEOUT):
    """Welcome a user who just signed up (template `welcome`). `specs/queues.yaml` gives it 4 attempts."""

    user_id: str

    def perform(self, ctx: Context[Resources]) -> EmailOutcome:
        user = _user(ctx.resources.db, self.user_id)
        return _deliver(
            ctx, kind="welcome", to=_address(user.email, user.name), template="welcome", values={"name": user.name}
        )


class SendInvitation(Job, queue="email", attempts=_ATTEMPTS, backoff=_RETRIES, priority=3, timeout=_TIMEOUT):
    """Email an invitation to join an organisation (template `invitation`); sets the invitation's `sent_at`.

    Sends nothing (and says why in `skipped`) once the invitation is no longer
    pending or has expired. The link is `{app_url}/invitations/{token}`.
    """

    invitation_id: str

    def perform(self, ctx: Context[Resources]) -> EmailOutcome:
        db = ctx.resources.db
        inviter = users.alias("inviter")
        query = (
            sa.select(
                invitations,
                organisations.c.name.label("org_name"),
                inviter.c.name.label("inviter_name"),
                inviter.c.email.label("inviter_email"),
            )
            .join(organisations, organisations.c.id == invitations.c.org_id)
            .join(inviter, inviter.c.id == invitations.c.invited_by)
            .where(invitations.c.id == self.invitation_id)
        )
        with db.begin() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise Unrecoverable(f"no invitation {self.invitation_id}")
        if row.status != "pending":
            ctx.logger.info("invitation %s is %s: not sending it", row.id, row.status)
            return EmailOutcome(skipped=f"invitation {row.id} is {row.status}")
        if row.expires_at <= utcnow():
            ctx.logger.info("invitation %s expired at %s: not sending it", row.id, row.expires_at.isoformat())
            return EmailOutcome(skipped=f"invitation {row.id} expired at {row.expires_at.isoformat()}")

        def mark_sent(conn: Connection) -> None:
            conn.execute(invitations.update().where(invitations.c.id == row.id).values(sent_at=utcnow()))

        settings = ctx.resources.settings
        values = {
            "org_name": row.org_name,
            "inviter_name": row.inviter_name,
            "inviter_email": row.inviter_email,
            "accept_url": f"{settings.app_url.rstrip('/')}/invitations/{row.token}",
            "expires_at": row.expires_at,
        }
        return _deliver(
            ctx, kind="invitation", to=_address(row.email), template="invitation", values=values, also=mark_sent
        )


class Notification(Job, queue="email", attempts=_ATTEMPTS, backoff=_RETRIES, priority=5, timeout=_TIMEOUT):
    """Tell a user about something that happened to their organisation (template = `kind`).

    `ref` is an invoice id (`payment_failed`, `invoice_paid`), a subscription id
    (`subscription_canceled`) or a webhook endpoint id
    (`webhook_endpoint_disabled`). The user must be a member of the
    organisation the row belongs to. Skipped when the news is stale by the time
    it runs: a `payment_failed` invoice that is now paid, a
    `webhook_endpoint_disabled` endpoint that is enabled again. Urgent ones go
    with priority 1 (`notify(..., urgent=True)`).
    """

    user_id: str
    kind: NotificationKind
    ref: str

    def perform(self, ctx: Context[Resources]) -> EmailOutcome:
        db = ctx.resources.db
        user = _user(db, self.user_id)
        with db.begin() as conn:
            org_id, values, stale = _NOTIFICATION_LOADERS[self.kind](conn, self.ref, ctx.resources)
            member = conn.execute(
                sa.select(memberships.c.role).where(
                    memberships.c.org_id == org_id, memberships.c.user_id == self.user_id
                )
            ).first()
        if member is None:
            raise Unrecoverable(
                f"user {self.user_id} is not a member of organisation {org_id}, which {self.ref} belongs to:"
                f" not sending them {self.kind}"
            )
        if stale is not None:
            ctx.logger.info("%s about %s no longer applies (%s): not sending it", self.kind, self.ref, stale)
            return EmailOutcome(skipped=stale)
        return _deliver(
            ctx,
            kind=self.kind,
            to=_address(user.email, user.name),
            template=self.kind,
            values={"name": user.name, **values},
        )


# -- the application side -------------------------------------------------------


def invite(store: Store, *, org_id: str, email: str, invited_by: str, expires_in: timedelta = timedelta(days=7)) -> str:
    """Invite `email` to organisation `org_id` on behalf of member `invited_by`; return the invitation id.

    Saves a pending invitation with a random token (committed before anything
    is enqueued, so the job always finds it), then enqueues `SendInvitation`
    with job id `invitation-<id>`. Raises `ValueError` for an unknown
    organisation, an inviter who is not a member, an invalid address or a
    non-positive `expires_in`. If the enqueue fails, the invitation stays saved
    (unsent, `sent_at` empty); the exception carries a note naming it.
    """
    if expires_in <= timedelta(0):
        raise ValueError(f"expires_in must be positive, got {expires_in}")
    address = checked_email(email)
    invitation_id = new_id("inv")
    with store.begin() as conn:
        if conn.execute(sa.select(organisations.c.id).where(organisations.c.id == org_id)).first() is None:
            raise ValueError(f"no organisation {org_id}")
        member = conn.execute(
            sa.select(memberships.c.role).where(memberships.c.org_id == org_id, memberships.c.user_id == invited_by)
        ).first()
        if member is None:
            raise ValueError(f"user {invited_by} is not a member of organisation {org_id}, so cannot invite to it")
        conn.execute(
            invitations.insert().values(
                id=invitation_id,
                org_id=org_id,
                email=address,
                invited_by=invited_by,
                token=secrets.token_urlsafe(32),
                status="pending",
                expires_at=utcnow() + expires_in,
            )
        )
    try:
        SendInvitation.with_options(job_id=f"invitation-{invitation_id}").enqueue(invitation_id=invitation_id)
    except Exception as exc:
        exc.add_note(f"invitation {invitation_id} is saved but unsent: enqueue SendInvitation for it again")
        raise
    return invitation_id


def notify(
    user_id: str, kind: NotificationKind, ref: str, *, urgent: bool = False, job_id: str | None = None
) -> JobHandle:
    """Enqueue a `Notification`; `urgent=True` gives it priority 1 (the highest) instead of 5.

    Pass a stable `job_id` (letters, digits, `_` and `-`, at most 128), e.g. made
    from the Stripe event id, to make the notification once-only: while the job
    is known a repeat enqueue returns it, and afterwards `sent_emails` stops a
    second send.
    """
    if kind not in NOTIFICATION_KINDS:
        raise ValueError(f"unknown notification kind {kind!r}; known kinds: {', '.join(NOTIFICATION_KINDS)}")
    return Notification.with_options(priority=1 if urgent else None, job_id=job_id).enqueue(
        user_id=user_id, kind=kind, ref=ref
    )


# -- loading rows ---------------------------------------------------------------


def _user(db: Store, user_id: str) -> Row[Any]:
    with db.begin() as conn:
        user = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
    if user is None:
        raise Unrecoverable(f"no user {user_id}")
    return user


def _org_name(conn: Connection, org_id: str) -> str:
    name = conn.execute(sa.select(organisations.c.name).where(organisations.c.id == org_id)).scalar_one_or_none()
    if name is None:
        raise Unrecoverable(f"no organisation {org_id}")
    return str(name)


def _billing_url(resources: Resources) -> str:
    return f"{resources.settings.app_url.rstrip('/')}/billing"


Loaded = tuple[str, dict[str, Any], str | None]
"""(organisation id, template values, why it is stale or None)."""


def _invoice(conn: Connection, ref: str) -> Row[Any]:
    invoice = conn.execute(sa.select(invoices).where(invoices.c.id == ref)).first()
    if invoice is None:
        raise Unrecoverable(f"no invoice {ref}")
    return invoice


def _payment_failed(conn: Connection, ref: str, resources: Resources) -> Loaded:
    invoice = _invoice(conn, ref)
    values = {
        "org_name": _org_name(conn, invoice.org_id),
        "invoice_id": invoice.id,
        "amount_due": format_money(invoice.amount_due, invoice.currency),
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "billing_url": _billing_url(resources),
    }
    stale = f"invoice {ref} is {invoice.status} now" if invoice.status in ("paid", "void") else None
    return invoice.org_id, values, stale


def _invoice_paid(conn: Connection, ref: str, resources: Resources) -> Loaded:
    invoice = _invoice(conn, ref)
    values = {
        "org_name": _org_name(conn, invoice.org_id),
        "invoice_id": invoice.id,
        "amount_paid": format_money(invoice.amount_paid, invoice.currency),
        "paid_at": invoice.paid_at,
        "hosted_invoice_url": invoice.hosted_invoice_url,
    }
    return invoice.org_id, values, None


def _subscription_canceled(conn: Connection, ref: str, resources: Resources) -> Loaded:
    subscription = conn.execute(sa.select(subscriptions).where(subscriptions.c.id == ref)).first()
    if subscription is None:
        raise Unrecoverable(f"no subscription {ref}")
    end = subscription.current_period_end
    values = {
        "org_name": _org_name(conn, subscription.org_id),
        "subscription_id": subscription.id,
        "access_until": end if end is not None and end > utcnow() else None,
        "billing_url": _billing_url(resources),
    }
    return subscription.org_id, values, None


def _webhook_endpoint_disabled(conn: Connection, ref: str, resources: Resources) -> Loaded:
    endpoint = conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.id == ref)).first()
    if endpoint is None:
        raise Unrecoverable(f"no webhook endpoint {ref}")
    values = {
        "org_name": _org_name(conn, endpoint.org_id),
        "endpoint_url": endpoint.url,
        "disabled_reason": endpoint.disabled_reason,
        "webhooks_url": f"{resources.settings.app_url.rstrip('/')}/settings/webhooks",
    }
    stale = f"webhook endpoint {ref} is enabled again" if endpoint.disabled_at is None else None
    return endpoint.org_id, values, stale


_NOTIFICATION_LOADERS: Mapping[str, Callable[[Connection, str, Resources], Loaded]] = {
    "payment_failed": _payment_failed,
    "invoice_paid": _invoice_paid,
    "subscription_canceled": _subscription_canceled,
    "webhook_endpoint_disabled": _webhook_endpoint_disabled,
}


# -- sending --------------------------------------------------------------------


def sent_key(job_id: str) -> str:
    """The `sent_emails.job_id` of a job: its id, or, for an id longer than the column (a schema narrower
    than the catalog's 128 characters), the id's start and a digest of the whole id."""
    if len(job_id) <= _JOB_ID_LIMIT:
        return job_id
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:24]
    return f"{job_id[: _JOB_ID_LIMIT - len(digest) - 1]}~{digest}"


def checked_email(email: str) -> str:
    """The address, normalised; `ValueError` naming it if it is not one."""
    from pydantic.networks import validate_email

    try:
        return validate_email(email.strip())[1]
    except PydanticCustomError as exc:
        raise ValueError(f"not an email address: {email!r} ({exc})") from None


def _address(email: str, name: str | None = None) -> Address:
    """The recipient; a stored name's control characters (refused by `sign_up` now) become spaces."""
    try:
        return Address(display_name=clean_display_name(name or ""), addr_spec=email)
    except (ValueError, HeaderParseError) as exc:
        raise Unrecoverable(f"cannot address an email to {email!r}: {exc}") from exc


def _deliver(
    ctx: Context[Resources],
    *,
    kind: str,
    to: Address,
    template: str,
    values: Mapping[str, Any],
    also: Callable[[Connection], None] | None = None,
) -> EmailOutcome:
    """Send one message unless this job already did, then record it (and run `also` in that transaction).

    The `sent_emails` row is claimed ("sending") before the message goes out and confirmed ("sent") after, so
    two runs of the same job at once (a stalled run recovered while it still sends, a requeue) cannot both
    send. A claim older than `STALE_CLAIM` (or twice the run's timeout) belongs to a run that died mid-send:
    it is taken over and the message sent again, with the same Message-ID (at least once, never dropped).
    """
    resources = ctx.resources
    db = resources.db
    key = sent_key(ctx.job_id)
    settings = resources.settings
    try:
        message_id = message_id_for(ctx.job_id, settings.mail_from)
    except ValueError as exc:
        raise Unrecoverable(f"FORGEJOBS_CATALOG_MAIL_FROM: {exc}") from exc
    if len(message_id) > _MESSAGE_ID_LIMIT:
        raise Unrecoverable(f"Message-ID {message_id} is longer than {_MESSAGE_ID_LIMIT} characters")
    rendered = render(template, product_name=settings.product_name, app_url=settings.app_url, **values)
    message = build_message(rendered, to=to, mail_from=settings.mail_from, message_id=message_id)

    claimed_at = utcnow()
    claim = {
        "job_id": key,
        "kind": kind,
        "recipient": to.addr_spec,
        "subject": rendered.subject[:_SUBJECT_LIMIT],
        "message_id": message_id,
        "status": "sending",
        "sent_at": claimed_at,
    }
    stale_after = max(STALE_CLAIM, 2 * ctx.timeout) if ctx.timeout else STALE_CLAIM
    with db.begin() as conn:
        row = None
        while not db.insert_ignore(conn, sent_emails, claim):
            row = conn.execute(sa.select(sent_emails).where(sent_emails.c.job_id == key)).first()
            if row is not None:
                break  # else: the other run released its claim between the insert and the select
        if row is not None:
            if row.status == "sent":
                ctx.logger.info(
                    "already sent %s as %s to %s: not sending it again", kind, row.message_id, row.recipient
                )
                return EmailOutcome(to=row.recipient, message_id=row.message_id, skipped="already sent")
            if claimed_at - row.sent_at < stale_after or not _take_over(conn, row.sent_at, claim):
                raise RetryLater(stale_after, f"another run of job {ctx.job_id} is sending this {kind} email")
            ctx.logger.warning("taking over the send of %s from a run that stopped mid-send", message_id)

    try:
        resources.mailer.send(message)
    except BaseException as exc:
        with db.begin() as conn:  # not sent: release the claim, so the retry can send
            conn.execute(
                sent_emails.delete().where(
                    sent_emails.c.job_id == key, sent_emails.c.status == "sending", sent_emails.c.sent_at == claimed_at
                )
            )
        if isinstance(exc, RecipientRefused):
            raise Unrecoverable(f"{kind} email to {to.addr_spec} refused: {exc}") from exc
        raise

    with db.begin() as conn:
        conn.execute(sent_emails.update().where(sent_emails.c.job_id == key).values(status="sent", sent_at=utcnow()))
        if also is not None:
            also(conn)
    ctx.logger.info("sent %s %s to %s", kind, message_id, to.addr_spec)
    return EmailOutcome(to=to.addr_spec, message_id=message_id)


def _take_over(conn: Connection, stale: datetime, claim: Mapping[str, Any]) -> bool:
    """Move a stale claim to this run; False if another run took it first."""
    moved = conn.execute(
        sent_emails.update()
        .where(
            sent_emails.c.job_id == claim["job_id"], sent_emails.c.status == "sending", sent_emails.c.sent_at == stale
        )
        .values(**claim)
    )
    return moved.rowcount == 1
