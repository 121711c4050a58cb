"""Queue `files`: soft delete, delayed cleanup, restore, and the orphan sweep (SQLite and PostgreSQL, real files)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from forgejobs import Status
from forgejobs.testing import FakeQueue, make_context
from jobs.files import (
    CleanupDeletedFile,
    CleanupResult,
    FileAlreadyPurged,
    FileNotFound,
    SweepOrphanFiles,
    SweepResult,
    restore_file,
    soft_delete_file,
)
from jobs.resources import Resources
from jobs.store import Store, files, new_id, utcnow


def object_path(resources: Resources, key: str) -> Path:
    return resources.settings.storage_dir / key


def make_file(resources: Resources, org_id: str, *, stored: bool = True) -> tuple[str, str]:
    """A files row and (unless `stored=False`) its stored object; returns (file id, storage key)."""
    file_id = new_id("fil")
    key = f"{org_id}/{file_id}/report.pdf"
    if stored:
        resources.storage.put(key, b"%PDF-1.7 test")
    with resources.db.begin() as conn:
        conn.execute(files.insert().values(id=file_id, org_id=org_id, storage_key=key, name="report.pdf", size=13))
    return file_id, key


def row(store: Store, file_id: str) -> sa.Row[tuple[datetime | None, datetime | None]]:
    with store.begin() as conn:
        return conn.execute(sa.select(files.c.deleted_at, files.c.purged_at).where(files.c.id == file_id)).one()


def age(resources: Resources, key: str, by: timedelta) -> None:
    """Make the stored object look `by` old."""
    when = (utcnow() - by).timestamp()
    os.utime(object_path(resources, key), (when, when))


@pytest.fixture
def queue(fake_queue: FakeQueue, resources: Resources) -> FakeQueue:
    fake_queue.resources = resources
    return fake_queue


# -- soft delete and its delayed cleanup -------------------------------------------------------------


def test_soft_delete_marks_the_row_and_enqueues_the_cleanup_24_hours_later(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, key = make_file(resources, org["org_id"])
    enqueued_at = queue.clock.now()

    handle = soft_delete_file(resources.db, file_id)

    deleted_at, purged_at = row(resources.db, file_id)
    assert deleted_at is not None and purged_at is None
    (job,) = queue.assert_enqueued(CleanupDeletedFile, count=1, file_id=file_id)
    assert job.deleted_at == deleted_at
    (prepared,) = queue.backend.log
    assert prepared.due_at == enqueued_at + timedelta(hours=24)
    assert handle.status() is Status.SCHEDULED
    assert resources.storage.exists(key)


def test_the_cleanup_removes_the_object_after_the_grace_period(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, key = make_file(resources, org["org_id"])
    start = queue.clock.now()
    handle = soft_delete_file(resources.db, file_id)

    assert queue.drain().succeeded == 1

    assert queue.clock.now() - start == timedelta(hours=24)
    assert handle.result() == CleanupResult(file_id=file_id, outcome="purged", object_deleted=True)
    assert not resources.storage.exists(key)
    assert not object_path(resources, key).exists()
    assert row(resources.db, file_id).purged_at is not None


def test_a_shorter_purge_after_delays_less(queue: FakeQueue, resources: Resources, org: dict[str, str]) -> None:
    file_id, _ = make_file(resources, org["org_id"])
    start = queue.clock.now()

    soft_delete_file(resources.db, file_id, purge_after=timedelta(minutes=5))

    (prepared,) = queue.backend.log
    assert prepared.due_at == start + timedelta(minutes=5)
    with pytest.raises(ValueError, match="must not be negative"):
        soft_delete_file(resources.db, file_id, purge_after=timedelta(seconds=-1))


def test_a_restore_before_the_cleanup_keeps_the_object(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, key = make_file(resources, org["org_id"])
    handle = soft_delete_file(resources.db, file_id)

    assert restore_file(resources.db, file_id) is True
    queue.drain()

    assert handle.result() == CleanupResult(file_id=file_id, outcome="not_deleted")
    assert resources.storage.exists(key)
    assert tuple(row(resources.db, file_id)) == (None, None)


def test_delete_restore_delete_only_the_second_cleanup_purges(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, key = make_file(resources, org["org_id"])
    first = soft_delete_file(resources.db, file_id)
    restore_file(resources.db, file_id)
    queue.clock.advance(timedelta(hours=12))
    second = soft_delete_file(resources.db, file_id)
    assert first.id != second.id

    # Run the first cleanup alone, at its due time: the newer deletion is not its business.
    queue.clock.advance(timedelta(hours=12))
    assert queue.perform(queue.enqueued(CleanupDeletedFile)[0]).outcome == "superseded"
    assert resources.storage.exists(key)

    assert queue.drain().succeeded == 2
    assert first.result().outcome == "superseded"
    assert second.result() == CleanupResult(file_id=file_id, outcome="purged", object_deleted=True)
    assert not resources.storage.exists(key)


def test_deleting_twice_keeps_the_first_deletion_and_its_job(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, _ = make_file(resources, org["org_id"])
    first = soft_delete_file(resources.db, file_id)
    deleted_at = row(resources.db, file_id).deleted_at

    again = soft_delete_file(resources.db, file_id)

    assert (again.id, again.existing) == (first.id, True)
    assert row(resources.db, file_id).deleted_at == deleted_at
    assert len(queue.backend.log) == 1


def test_cleanup_edge_cases(resources: Resources, org: dict[str, str]) -> None:
    gone = CleanupDeletedFile(file_id="fil_missing", deleted_at=utcnow())
    assert gone.perform(make_context(gone, resources=resources)).outcome == "missing"

    file_id, key = make_file(resources, org["org_id"], stored=False)  # the object was never stored
    with resources.db.begin() as conn:
        conn.execute(files.update().where(files.c.id == file_id).values(deleted_at=utcnow() - timedelta(days=2)))
    job = CleanupDeletedFile(file_id=file_id, deleted_at=row(resources.db, file_id).deleted_at)

    first = job.perform(make_context(job, resources=resources))
    again = job.perform(make_context(job, resources=resources))

    assert (first.outcome, first.object_deleted) == ("purged", False)
    assert again.outcome == "already_purged"


def test_the_cleanup_payload_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        CleanupDeletedFile(file_id="fil_1", deleted_at=datetime(2026, 11, 1))


def test_restore_and_delete_refuse_missing_and_purged_files(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    with pytest.raises(FileNotFound, match="fil_nope"):
        soft_delete_file(resources.db, "fil_nope")
    with pytest.raises(FileNotFound, match="fil_nope"):
        restore_file(resources.db, "fil_nope")

    file_id, _ = make_file(resources, org["org_id"])
    assert restore_file(resources.db, file_id) is False  # not deleted: nothing to restore

    soft_delete_file(resources.db, file_id)
    queue.drain()
    with pytest.raises(FileAlreadyPurged, match="cannot be restored"):
        restore_file(resources.db, file_id)
    with pytest.raises(FileAlreadyPurged):
        soft_delete_file(resources.db, file_id)


# -- the sweep ---------------------------------------------------------------------------------------


def test_the_sweep_removes_old_orphans_only(resources: Resources, org: dict[str, str]) -> None:
    old_orphan, young_orphan = "tmp/abandoned-upload.bin", "tmp/uploading-now.bin"
    resources.storage.put(old_orphan, b"x")
    resources.storage.put(young_orphan, b"x")
    age(resources, old_orphan, timedelta(hours=2))
    age(resources, young_orphan, timedelta(minutes=10))
    _, referenced = make_file(resources, org["org_id"])
    age(resources, referenced, timedelta(days=30))
    purged_id, purged_key = make_file(resources, org["org_id"])  # purged row, yet its object came back
    with resources.db.begin() as conn:
        conn.execute(files.update().where(files.c.id == purged_id).values(deleted_at=utcnow(), purged_at=utcnow()))
    age(resources, purged_key, timedelta(hours=3))

    job = SweepOrphanFiles(batch_size=2)  # several batches
    ctx = make_context(job, resources=resources)
    result = job.perform(ctx)

    assert result == SweepResult(objects_checked=4, orphans_deleted=2, young_orphans_kept=1, lost_cleanups_purged=0)
    assert not resources.storage.exists(old_orphan) and not resources.storage.exists(purged_key)
    assert resources.storage.exists(young_orphan) and resources.storage.exists(referenced)
    assert ctx.last_progress == {"objects_checked": 4, "orphans_deleted": 2}


def test_the_sweep_purges_deletions_whose_cleanup_was_lost(resources: Resources, org: dict[str, str]) -> None:
    lost_id, lost_key = make_file(resources, org["org_id"])
    recent_id, recent_key = make_file(resources, org["org_id"])
    with resources.db.begin() as conn:
        conn.execute(files.update().where(files.c.id == lost_id).values(deleted_at=utcnow() - timedelta(hours=25)))
        conn.execute(files.update().where(files.c.id == recent_id).values(deleted_at=utcnow() - timedelta(hours=23)))

    job = SweepOrphanFiles()
    ctx = make_context(job, resources=resources)
    result = job.perform(ctx)
    again = job.perform(make_context(job, resources=resources))

    assert result.lost_cleanups_purged == 1 and result.orphans_deleted == 0
    assert again.lost_cleanups_purged == 0
    assert not resources.storage.exists(lost_key) and row(resources.db, lost_id).purged_at is not None
    assert resources.storage.exists(recent_key) and row(resources.db, recent_id).purged_at is None
    assert ctx.last_progress == {"lost_cleanups": 1, "purged": 1}


def test_the_sweep_waits_out_a_long_grace_period(
    fake_queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, key = make_file(resources, org["org_id"])
    soft_delete_file(resources.db, file_id, purge_after=timedelta(days=30))
    two_days = timedelta(days=2)
    with resources.db.begin() as conn:  # the deletion happened two days ago
        deleted = conn.execute(sa.select(files).where(files.c.id == file_id)).one()
        conn.execute(
            files.update()
            .where(files.c.id == file_id)
            .values(deleted_at=deleted.deleted_at - two_days, purge_at=deleted.purge_at - two_days)
        )
    job = SweepOrphanFiles()

    assert job.perform(make_context(job, resources=resources)).lost_cleanups_purged == 0
    assert resources.storage.exists(key)
    assert restore_file(resources.db, file_id) is True


def test_the_sweep_grace_is_a_payload_field(resources: Resources, org: dict[str, str]) -> None:
    file_id, key = make_file(resources, org["org_id"])
    with resources.db.begin() as conn:
        conn.execute(files.update().where(files.c.id == file_id).values(deleted_at=utcnow() - timedelta(hours=2)))
    job = SweepOrphanFiles(grace_hours=1)

    assert job.perform(make_context(job, resources=resources)).lost_cleanups_purged == 1
    assert not resources.storage.exists(key)


def test_deleting_again_after_the_job_was_lost_enqueues_it_for_the_time_left(
    queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    file_id, _ = make_file(resources, org["org_id"])
    first = soft_delete_file(resources.db, file_id)
    queue.clear()  # the job is forgotten (e.g. its Redis data was lost)

    again = soft_delete_file(resources.db, file_id)

    assert again.id == first.id and not again.existing
    (prepared,) = queue.backend.log
    assert prepared.due_at is not None
    assert timedelta(hours=23, minutes=59) < prepared.due_at - queue.clock.now() <= timedelta(hours=24)
