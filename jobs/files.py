"""Queue `files` (concurrency 1): removing stored objects once nothing needs them.

A user's delete is soft: `soft_delete_file()` stamps `files.deleted_at` and
enqueues `CleanupDeletedFile` to run after a grace period (24 h by default);
`restore_file()` undoes the delete until then. The cleanup removes the stored
object and stamps `purged_at` only if the row is still deleted *by that same
deletion*: a restore, or a restore followed by a newer delete (which has its
own cleanup), makes it skip.

`SweepOrphanFiles` runs daily and catches what slipped through: stored objects
no live row refers to (an upload whose row was never written), and deletions
whose cleanup job was lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from typing import Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, Field

from forgejobs import Context, Job, JobHandle, backoff
from forgejobs.schedule import cron

from .resources import Resources
from .storage import Storage
from .store import Store, files, utcnow

DEFAULT_PURGE_AFTER = timedelta(hours=24)
ORPHAN_MIN_AGE = timedelta(hours=1)
"""A stored object without a row is left alone while younger than this: its upload may still be in progress."""

CleanupOutcome = Literal["purged", "missing", "not_deleted", "superseded", "already_purged"]


class FileNotFound(LookupError):
    """No `files` row has this id."""


class FileAlreadyPurged(ValueError):
    """The file's stored object is gone: it can no longer be restored or deleted again."""


class CleanupResult(BaseModel):
    """What `CleanupDeletedFile` did: `purged`, or why there was nothing to do."""

    file_id: str
    outcome: CleanupOutcome
    object_deleted: bool = False
    """False when there was nothing to delete, including an object that was already gone."""


class SweepResult(BaseModel):
    """The counts of one `SweepOrphanFiles` run."""

    objects_checked: int = 0
    orphans_deleted: int = 0
    young_orphans_kept: int = 0
    """Objects without a row, left alone because they are younger than `ORPHAN_MIN_AGE`."""
    lost_cleanups_purged: int = 0


def _cleanup_job_id(file_id: str, deleted_at: datetime) -> str:
    """One job id per deletion: asking to delete the same deletion again finds the job already there."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", file_id)[:80]
    return f"file-cleanup-{safe}-{deleted_at:%Y%m%dT%H%M%S%f}"


def soft_delete_file(store: Store, file_id: str, *, purge_after: timedelta = DEFAULT_PURGE_AFTER) -> JobHandle:
    """Mark the file deleted (restorable) and enqueue its `CleanupDeletedFile` to run after `purge_after`.

    The job is enqueued in the row's transaction (`Store.enqueue`: sent after
    the commit, so it never runs ahead of the row, or an outbox row); if the
    enqueue after the commit fails, the exception propagates and the daily
    `SweepOrphanFiles` purges the file later. Deleting a file that is already
    deleted keeps the first deletion time and returns the handle of its cleanup
    (enqueued again, for the time that is left, if it is no longer known).
    Raises `FileNotFound` and `FileAlreadyPurged`.
    """
    if purge_after < timedelta(0):
        raise ValueError(f"purge_after must not be negative, got {purge_after}")
    now = utcnow()
    with store.transaction() as conn:
        row = conn.execute(
            sa.select(files.c.deleted_at, files.c.purge_at, files.c.purged_at).where(files.c.id == file_id)
        ).one_or_none()
        if row is None:
            raise FileNotFound(f"no file {file_id!r}")
        if row.purged_at is not None:
            raise FileAlreadyPurged(f"file {file_id!r} was purged at {row.purged_at.isoformat()}")
        deleted_at: datetime = row.deleted_at
        purge_at: datetime | None = row.purge_at
        if deleted_at is None:
            deleted_at, purge_at = now, now + purge_after
            conn.execute(files.update().where(files.c.id == file_id).values(deleted_at=deleted_at, purge_at=purge_at))
        delay = max((purge_at or deleted_at + purge_after) - now, timedelta(0))
        job = CleanupDeletedFile(file_id=file_id, deleted_at=deleted_at)
        return store.enqueue(conn, job, delay=delay, job_id=_cleanup_job_id(file_id, deleted_at))


def restore_file(store: Store, file_id: str) -> bool:
    """Undo a soft delete. True if the file was deleted and is now restored, False if it was not deleted.

    Raises `FileNotFound`, and `FileAlreadyPurged` once its cleanup has run.
    The pending cleanup job is left queued: it sees the restore and skips.
    """
    with store.begin() as conn:
        restored = conn.execute(
            files.update()
            .where(files.c.id == file_id, files.c.deleted_at.is_not(None), files.c.purged_at.is_(None))
            .values(deleted_at=None, purge_at=None)
        ).rowcount
        if restored:
            return True
        row = conn.execute(sa.select(files.c.purged_at).where(files.c.id == file_id)).one_or_none()
    if row is None:
        raise FileNotFound(f"no file {file_id!r}")
    if row.purged_at is not None:
        raise FileAlreadyPurged(f"file {file_id!r} was purged at {row.purged_at.isoformat()}; it cannot be restored")
    return False


def purge_deletion(store: Store, storage: Storage, file_id: str, deleted_at: datetime) -> CleanupResult:
    """Delete the object of `file_id` and stamp `purged_at`, if the row is still deleted at `deleted_at`.

    The conditional update claims the row first, so a concurrent restore either
    happens before (and the update matches nothing) or waits and then finds
    the file purged. The object is deleted inside that transaction: if deleting
    it fails, `purged_at` is rolled back and a retry tries again.
    """
    with store.begin() as conn:
        claimed = conn.execute(
            files.update()
            .where(files.c.id == file_id, files.c.deleted_at == deleted_at, files.c.purged_at.is_(None))
            .values(purged_at=utcnow())
            .returning(files.c.storage_key)
        ).one_or_none()
        if claimed is not None:
            existed = storage.delete(claimed.storage_key)
            return CleanupResult(file_id=file_id, outcome="purged", object_deleted=existed)
        row = conn.execute(sa.select(files.c.deleted_at, files.c.purged_at).where(files.c.id == file_id)).one_or_none()
    outcome: CleanupOutcome
    if row is None:
        outcome = "missing"
    elif row.purged_at is not None:
        outcome = "already_purged"
    elif row.deleted_at is None:
        outcome = "not_deleted"
    else:
        outcome = "superseded"
    return CleanupResult(file_id=file_id, outcome=outcome)


class CleanupDeletedFile(Job, queue="files", attempts=10, backoff=backoff.exponential(60, max_seconds=3600)):
    """Remove the stored object of a soft-deleted file once its grace period is over.

    Enqueued by `soft_delete_file()` with a delay. Nothing happens unless the
    row is still deleted with this very `deleted_at` and not purged yet; the
    result's `outcome` says which case applied.
    """

    file_id: str
    deleted_at: AwareDatetime

    def perform(self, ctx: Context[Resources]) -> CleanupResult:
        result = purge_deletion(ctx.resources.db, ctx.resources.storage, self.file_id, self.deleted_at)
        ctx.logger.info("file %s: %s", self.file_id, result.outcome)
        return result


def _batches(items: Iterator[tuple[str, datetime]], size: int) -> Iterator[list[tuple[str, datetime]]]:
    while batch := list(islice(items, size)):
        yield batch


class SweepOrphanFiles(
    Job, queue="files", timeout="1h", backoff=backoff.exponential(300), schedule=cron("30 3 * * *", tz="UTC")
):
    """Daily safety net for stored objects.

    (a) Deletes stored objects that no live (unpurged) `files` row refers to
    and that are older than `ORPHAN_MIN_AGE`. (b) Purges soft-deleted rows
    whose cleanup never happened: those whose purge time (`purge_at`, set by
    `soft_delete_file` from its `purge_after`) passed more than `grace_hours`
    ago, or, for rows deleted without one, whose deletion did. A file deleted
    with a 30-day grace period is therefore never purged by the sweep before
    those 30 days are over.
    """

    grace_hours: int = Field(default=24, ge=0)

    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Stored keys looked up in the database per query."""

    def perform(self, ctx: Context[Resources]) -> SweepResult:
        db, storage = ctx.resources.db, ctx.resources.storage
        now = utcnow()  # compared with object mtimes and deleted_at: real time, not the job's tick
        result = SweepResult()
        for batch in _batches(storage.list(), self.batch_size):
            keys = [key for key, _ in batch]
            with db.begin() as conn:
                live = set(
                    conn.scalars(
                        sa.select(files.c.storage_key).where(files.c.storage_key.in_(keys), files.c.purged_at.is_(None))
                    )
                )
            for key, mtime in batch:
                result.objects_checked += 1
                if key in live:
                    continue
                if now - mtime < ORPHAN_MIN_AGE:
                    result.young_orphans_kept += 1
                elif storage.delete(key):
                    result.orphans_deleted += 1
            ctx.progress({"objects_checked": result.objects_checked, "orphans_deleted": result.orphans_deleted})

        cutoff = now - timedelta(hours=self.grace_hours)
        with db.begin() as conn:
            lost = conn.execute(
                sa.select(files.c.id, files.c.deleted_at)
                .where(
                    files.c.deleted_at.is_not(None),
                    sa.func.coalesce(files.c.purge_at, files.c.deleted_at) < cutoff,
                    files.c.purged_at.is_(None),
                )
                .order_by(files.c.deleted_at)
            ).all()
        for done, row in enumerate(lost, start=1):
            if purge_deletion(db, storage, row.id, row.deleted_at).outcome == "purged":
                result.lost_cleanups_purged += 1
            ctx.progress({"lost_cleanups": len(lost), "purged": done})
        ctx.logger.info("sweep: %s", result.model_dump())
        return result
