"""Queue `email` (concurrency 5): transactional email.

(Skeleton declarations: the email helper completes templates, SMTP and tests.)
"""

from __future__ import annotations

from typing import Literal

from forgejobs import Context, Job, backoff

from .resources import Resources

NotificationKind = Literal["payment_failed", "invoice_paid", "subscription_canceled", "webhook_endpoint_disabled"]
"""What a `Notification` tells its user; `ref` is the id of the row it is about (invoice, subscription, endpoint)."""


class WelcomeEmail(Job, queue="email", attempts=5, backoff=backoff.exponential(30, max_seconds=3600, jitter=0.2)):
    """Welcome a user who just signed up."""

    user_id: str

    def perform(self, ctx: Context[Resources]) -> None:
        raise NotImplementedError


class SendInvitation(Job, queue="email", attempts=5, backoff=backoff.exponential(30, max_seconds=3600, jitter=0.2)):
    """Email an invitation to join an organisation."""

    invitation_id: str

    def perform(self, ctx: Context[Resources]) -> None:
        raise NotImplementedError


class Notification(Job, queue="email", attempts=5, backoff=backoff.exponential(30, max_seconds=3600, jitter=0.2)):
    """Tell a user about something that happened to their account. Urgent ones go with priority 1."""

    user_id: str
    kind: NotificationKind
    ref: str

    def perform(self, ctx: Context[Resources]) -> None:
        raise NotImplementedError
