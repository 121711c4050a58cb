"""Queue `activity` (concurrency 5): the per-organisation activity feed.

`CreateActivity` adds one `activity_feed` row ("Ada uploaded report.pdf").
Each activity has a dedupe key, by default `verb:object_type:object_id`, so
the same thing happening twice (a retried request, a redelivered event, a
re-run job) shows once. Duplicates are stopped twice over:

- at enqueue, for `ACTIVITY_UNIQUE_FOR` (10 minutes): a second enqueue with the
  same key returns the first job's handle (`handle.existing`) and stores
  nothing (`unique_for` with the key as `dedupe_key`);
- in the database, for ever: the row is inserted only if no row has the key.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from forgejobs import Context, Job, Unrecoverable

from .resources import Resources
from .store import activity_feed, organisations, utcnow

ACTIVITY_UNIQUE_FOR = "10m"


def activity_key(job: Any) -> str:
    """The enqueue-side dedupe key of a `CreateActivity`: the same key the feed row is unique on."""
    key: str = job.key
    return key


class ActivityResult(BaseModel):
    dedupe_key: str
    created: bool
    """False when an activity with this key already existed: nothing was written."""


class CreateActivity(Job, queue="activity", attempts=5, unique_for=ACTIVITY_UNIQUE_FOR, dedupe_key=activity_key):
    """Add an entry to `org_id`'s activity feed, unless one with the same dedupe key exists.

    `at` is when it happened (default: when the job object is created).
    `actor_id` is None for things the system did.
    """

    org_id: str = Field(min_length=1, max_length=40)
    actor_id: str | None = Field(default=None, max_length=40)
    verb: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=60)
    object_type: str = Field(min_length=1, max_length=40)
    object_id: str = Field(min_length=1, max_length=64)
    summary: str = Field(min_length=1, max_length=300)
    dedupe_key: str | None = Field(default=None, min_length=1, max_length=200)
    at: AwareDatetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        """`dedupe_key`, or `verb:object_type:object_id` when it is not given."""
        return self.dedupe_key or f"{self.verb}:{self.object_type}:{self.object_id}"

    def perform(self, ctx: Context[Resources]) -> ActivityResult:
        db = ctx.resources.db
        with db.begin() as conn:
            if conn.execute(organisations.select().where(organisations.c.id == self.org_id)).first() is None:
                raise Unrecoverable(f"no organisation {self.org_id!r}: activity {self.key!r} cannot be recorded")
            created = db.insert_ignore(
                conn,
                activity_feed,
                {
                    "dedupe_key": self.key,
                    "org_id": self.org_id,
                    "actor_id": self.actor_id,
                    "verb": self.verb,
                    "object_type": self.object_type,
                    "object_id": self.object_id,
                    "summary": self.summary,
                    "at": self.at,
                },
            )
        if not created:
            ctx.logger.info("activity %s already in the feed", self.key)
        return ActivityResult(dedupe_key=self.key, created=created)
