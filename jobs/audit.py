"""Queue `audit` (concurrency 5): the append-only audit log.

`RecordAuditEvent` writes one `audit_log` row per event. The event's id and
time are fixed when the job is *created* (in the request that did the
action), so the row says when the action happened, not when a worker got to
it, and a re-run of the job (retry, redelivery, manual requeue) finds its
`event_id` already there and inserts nothing. Rows are never updated.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from forgejobs import Context, Job

from .resources import Resources
from .store import audit_log, utcnow

AUDIT_MAX_PAYLOAD_BYTES = 8 * 1024
"""The serialised job, metadata included, must fit in this; larger events are refused at enqueue."""


def _event_id() -> str:
    return uuid.uuid4().hex


class AuditResult(BaseModel):
    event_id: str
    inserted: bool
    """False when this event was already recorded (a re-run)."""


class RecordAuditEvent(Job, queue="audit", attempts=5, max_payload_bytes=AUDIT_MAX_PAYLOAD_BYTES):
    """Record that `actor_id` did `action` (e.g. `user.signed_up`) to `target`.

    `metadata` is free-form JSON; together with the other fields it must fit in
    `AUDIT_MAX_PAYLOAD_BYTES` (8 KiB), or the enqueue raises
    `forgejobs.PayloadTooLarge`. `event_id` and `at` default to a new UUID and
    the current time when the job object is created; pass them to record an
    event that happened earlier or that has an id of its own.
    """

    actor_id: str = Field(min_length=1, max_length=40)
    action: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=80)
    target: str = Field(min_length=1, max_length=200)
    org_id: str | None = Field(default=None, max_length=40)
    request_id: str | None = Field(default=None, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    event_id: str = Field(default_factory=_event_id, min_length=1, max_length=64)
    at: AwareDatetime = Field(default_factory=utcnow)

    def perform(self, ctx: Context[Resources]) -> AuditResult:
        db = ctx.resources.db
        with db.begin() as conn:
            inserted = db.insert_ignore(
                conn,
                audit_log,
                {
                    "event_id": self.event_id,
                    "actor_id": self.actor_id,
                    "action": self.action,
                    "target": self.target,
                    "org_id": self.org_id,
                    "metadata": self.metadata,
                    "request_id": self.request_id,
                    "at": self.at,
                },
            )
        if not inserted:
            ctx.logger.info("audit event %s was already recorded", self.event_id)
        return AuditResult(event_id=self.event_id, inserted=inserted)
