"""Application-side flows that fan out to several queues, as a web handler would call them.

Each writes its rows and its jobs in one transaction (`Store.transaction`): the
jobs exist only if the rows do. By default the jobs are held and enqueued once the
transaction has committed (`forgejobs.sqlalchemy`), so a job never looks for a row
that a rolled-back transaction never wrote; a store with an outbox writes them as
outbox rows instead, which also survive a crash between the commit and Redis (see
docs/transactions.md). `sign_up` starts a workflow once its transaction has committed.
"""

from __future__ import annotations

from typing import Any

from forgejobs import Job
from forgejobs.workflows import Workflow

from .activity import CreateActivity
from .audit import RecordAuditEvent
from .email import WelcomeEmail, checked_email
from .mail import has_control_characters
from .store import Store, max_length, memberships, new_id, users
from .workflows import MemberSignUp, SignUp


def sign_up(store: Store, *, email: str, name: str, org_id: str | None = None, request_id: str | None = None) -> str:
    """Create a user (a member of `org_id` if given), then start the `sign_up` workflow (`member_sign_up`
    for a member): the welcome email, the audit event and, for a member, the organisation's activity entry,
    side by side, as one run keyed by the user id (`jobs.workflows`). Returns the user id.

    The run is started once the transaction has committed, so a rolled-back sign-up starts nothing. With
    an outbox store the three step jobs are written as outbox rows of the transaction instead (a workflow
    start is not an outbox row), as plain jobs.

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
    target = f"user:{user_id}"
    start: dict[str, Any] = {"user_id": user_id, "target": target, "request_id": request_id}
    workflow: type[Workflow] = SignUp
    if org_id is not None:
        workflow, start = MemberSignUp, {**start, "org_id": org_id, "summary": f"{name} joined"}
    workflow.plan.input_model.model_validate(start)
    jobs = _jobs(start)  # the steps' payloads: a bad value raises here, before anything is written
    with store.transaction() as conn:
        conn.execute(users.insert().values(id=user_id, email=address, name=name))
        if org_id is not None:
            conn.execute(memberships.insert().values(org_id=org_id, user_id=user_id, role="member"))
        if store.outbox is not None:  # a workflow start is no outbox row: the steps' jobs are, as before
            for job in jobs:
                store.enqueue(conn, job)
    if store.outbox is None:
        workflow.start(key=user_id, **start)  # after the commit: a rolled-back sign-up starts nothing
    return user_id


NAME_LIMIT = max_length(users.c.name)


def _jobs(start: dict[str, Any]) -> list[Job]:
    """The jobs of the sign-up workflow's steps, for a store whose transactions write an outbox."""
    user_id, org_id = start["user_id"], start.get("org_id")
    jobs: list[Job] = [
        WelcomeEmail(user_id=user_id),
        RecordAuditEvent(
            actor_id=user_id,
            action="user.signed_up",
            target=start["target"],
            org_id=org_id,
            request_id=start["request_id"],
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
                summary=start["summary"],
            )
        )
    return jobs
