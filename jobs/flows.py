"""Application-side flows that fan out to several queues, as a web handler would call them.

Each writes its rows and its jobs in one transaction (`Store.transaction`): the
jobs exist only if the rows do. By default the jobs are held and enqueued once the
transaction has committed (`forgejobs.sqlalchemy`), so a job never looks for a row
that a rolled-back transaction never wrote; a store with an outbox writes them as
outbox rows instead, which also survive a crash between the commit and Redis (see
docs/transactions.md).
"""

from __future__ import annotations

from forgejobs import Job

from .activity import CreateActivity
from .audit import RecordAuditEvent
from .email import WelcomeEmail, checked_email
from .mail import has_control_characters
from .store import Store, max_length, memberships, new_id, users


def sign_up(store: Store, *, email: str, name: str, org_id: str | None = None, request_id: str | None = None) -> str:
    """Create a user (a member of `org_id` if given) and enqueue the welcome email, the audit event and,
    for a member, the organisation's activity entry. Returns the user id.

    Everything is validated before the transaction: a bad address or name (empty, too long, or with a
    control character or line separator such as U+000B or U+2028) raises `ValueError` (a job payload that
    would not validate raises pydantic's `ValidationError`) with nothing written."""
    address = checked_email(email)
    name = name.strip()
    if not name or len(name) > NAME_LIMIT or has_control_characters(name):
        raise ValueError(
            f"name must be 1 to {NAME_LIMIT} characters on one line, without control characters, got {name[:80]!r}"
        )
    user_id = new_id("usr")
    jobs: list[Job] = [
        WelcomeEmail(user_id=user_id),
        RecordAuditEvent(
            actor_id=user_id, action="user.signed_up", target=f"user:{user_id}", org_id=org_id, request_id=request_id
        ),
    ]
    if org_id is not None:
        jobs.append(
            CreateActivity(
                org_id=org_id,
                actor_id=user_id,
                verb="member.joined",
                object_type="user",
                object_id=user_id,
                summary=f"{name} joined",
            )
        )
    with store.transaction() as conn:
        conn.execute(users.insert().values(id=user_id, email=address, name=name))
        if org_id is not None:
            conn.execute(memberships.insert().values(org_id=org_id, user_id=user_id, role="member"))
        for job in jobs:
            store.enqueue(conn, job)
    return user_id


NAME_LIMIT = max_length(users.c.name)
