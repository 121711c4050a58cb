"""Queues `audit` and `activity`: append-only audit rows and the deduplicated activity feed (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from forgejobs import PayloadTooLarge, Unrecoverable
from forgejobs.testing import FakeQueue, make_context
from jobs.activity import ACTIVITY_UNIQUE_FOR, ActivityResult, CreateActivity
from jobs.audit import AuditResult, RecordAuditEvent
from jobs.resources import Resources
from jobs.store import Store, activity_feed, audit_log, utcnow


def audit_rows(store: Store) -> list[sa.Row[tuple[object, ...]]]:
    with store.begin() as conn:
        return list(conn.execute(sa.select(audit_log).order_by(audit_log.c.id)))


def feed(store: Store) -> list[sa.Row[tuple[object, ...]]]:
    with store.begin() as conn:
        return list(conn.execute(sa.select(activity_feed).order_by(activity_feed.c.id)))


# -- audit ------------------------------------------------------------------------------------------------


def test_an_audit_event_is_recorded_once(resources: Resources, org: dict[str, str]) -> None:
    job = RecordAuditEvent(
        actor_id=org["owner_id"],
        action="member.invited",
        target="inv_123",
        org_id=org["org_id"],
        request_id="req_abc",
        metadata={"email": "new@example.com", "role": "member", "seats": 3},
    )

    first = job.perform(make_context(job, resources=resources))
    again = job.perform(make_context(job, resources=resources, attempt=2))

    assert first == AuditResult(event_id=job.event_id, inserted=True)
    assert again == AuditResult(event_id=job.event_id, inserted=False)
    (row,) = audit_rows(resources.db)
    assert (row.event_id, row.actor_id, row.action, row.target, row.org_id, row.request_id) == (
        job.event_id,
        org["owner_id"],
        "member.invited",
        "inv_123",
        org["org_id"],
        "req_abc",
    )
    assert row.metadata == {"email": "new@example.com", "role": "member", "seats": 3}
    assert row.at == job.at


def test_the_event_time_is_when_the_job_was_created_not_when_it_ran(
    fake_queue: FakeQueue, resources: Resources
) -> None:
    fake_queue.resources = resources
    before = utcnow()
    RecordAuditEvent.with_options(delay=timedelta(hours=6)).enqueue(
        actor_id="usr_1", action="user.signed_up", target="usr_1"
    )
    after = utcnow()
    (enqueued,) = fake_queue.enqueued(RecordAuditEvent)

    fake_queue.drain()  # runs six (fake) hours later

    (row,) = audit_rows(resources.db)
    assert before <= row.at <= after
    assert (row.at, row.event_id) == (enqueued.at, enqueued.event_id)


def test_each_new_event_gets_its_own_id(resources: Resources) -> None:
    a = RecordAuditEvent(actor_id="usr_1", action="file.downloaded", target="fil_1")
    b = RecordAuditEvent(actor_id="usr_1", action="file.downloaded", target="fil_1")
    for job in (a, b):
        job.perform(make_context(job, resources=resources))

    assert a.event_id != b.event_id
    assert [r.event_id for r in audit_rows(resources.db)] == [a.event_id, b.event_id]
    assert all(r.org_id is None and r.metadata == {} for r in audit_rows(resources.db))


def test_a_given_event_time_and_id_are_kept(resources: Resources) -> None:
    when = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    job = RecordAuditEvent(actor_id="usr_1", action="user.signed_up", target="usr_1", event_id="evt-import-1", at=when)
    job.perform(make_context(job, resources=resources))

    (row,) = audit_rows(resources.db)
    assert (row.event_id, row.at) == ("evt-import-1", when)


@pytest.mark.parametrize("action", ["signed_up", "User.SignedUp", "user.", "user signed.up", ".user"])
def test_an_action_is_dotted_lowercase(action: str) -> None:
    with pytest.raises(ValidationError, match="action"):
        RecordAuditEvent(actor_id="usr_1", action=action, target="x")


def test_audit_times_must_be_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        RecordAuditEvent(actor_id="usr_1", action="user.signed_up", target="x", at=datetime(2026, 11, 1))


def test_oversized_metadata_is_refused_at_enqueue(fake_queue: FakeQueue) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        RecordAuditEvent.enqueue(
            actor_id="usr_1", action="export.created", target="exp_1", metadata={"rows": ["x" * 100] * 100}
        )

    assert "metadata" in str(info.value) and "8192" in str(info.value)
    assert fake_queue.backend.log == []


# -- activity -----------------------------------------------------------------------------------------------


def activity(org: dict[str, str], **overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "org_id": org["org_id"],
        "actor_id": org["member_id"],
        "verb": "file.uploaded",
        "object_type": "file",
        "object_id": "fil_1",
        "summary": "Bo uploaded report.pdf",
    }
    return {**fields, **overrides}


def test_an_activity_is_created_once_by_its_default_key(resources: Resources, org: dict[str, str]) -> None:
    job = CreateActivity.model_validate(activity(org))
    twin = CreateActivity.model_validate(activity(org, summary="Bo uploaded report.pdf again"))

    first = job.perform(make_context(job, resources=resources))
    second = twin.perform(make_context(twin, resources=resources))

    assert first == ActivityResult(dedupe_key="file.uploaded:file:fil_1", created=True)
    assert second == ActivityResult(dedupe_key="file.uploaded:file:fil_1", created=False)
    (row,) = feed(resources.db)
    assert (row.org_id, row.actor_id, row.verb, row.object_type, row.object_id, row.summary, row.at) == (
        org["org_id"],
        org["member_id"],
        "file.uploaded",
        "file",
        "fil_1",
        "Bo uploaded report.pdf",
        job.at,
    )


def test_an_explicit_key_lets_the_same_object_appear_again(resources: Resources, org: dict[str, str]) -> None:
    jobs = [
        CreateActivity.model_validate(activity(org, verb="member.joined", object_type="user", object_id="usr_9")),
        CreateActivity.model_validate(
            activity(org, verb="member.joined", object_type="user", object_id="usr_9", dedupe_key="member.joined:2")
        ),
        CreateActivity.model_validate(activity(org, actor_id=None, verb="member.left", object_id="usr_9")),
    ]

    created = [job.perform(make_context(job, resources=resources)).created for job in jobs]

    assert created == [True, True, True]
    assert [r.dedupe_key for r in feed(resources.db)] == [
        "member.joined:user:usr_9",
        "member.joined:2",
        "member.left:file:usr_9",
    ]
    assert feed(resources.db)[2].actor_id is None


def test_an_activity_for_an_unknown_organisation_is_unrecoverable(resources: Resources, org: dict[str, str]) -> None:
    job = CreateActivity.model_validate(activity(org, org_id="org_gone"))

    with pytest.raises(Unrecoverable, match="no organisation 'org_gone'"):
        job.perform(make_context(job, resources=resources))
    assert feed(resources.db) == []


def test_duplicates_within_the_window_are_not_even_enqueued(
    fake_queue: FakeQueue, resources: Resources, org: dict[str, str]
) -> None:
    fake_queue.resources = resources
    first = CreateActivity.enqueue(**activity(org))
    again = CreateActivity.enqueue(**activity(org, summary="different words, same key"))
    other = CreateActivity.enqueue(**activity(org, object_id="fil_2"))

    assert (again.id, again.existing) == (first.id, True)
    assert not other.existing
    assert len(fake_queue.backend.log) == 2

    # After the window a duplicate is enqueued again, and the feed's unique key still keeps it out.
    fake_queue.clock.advance(timedelta(minutes=10, seconds=1))
    late = CreateActivity.enqueue(**activity(org))
    assert not late.existing and late.id != first.id
    assert fake_queue.drain().succeeded == 3
    assert late.result() == ActivityResult(dedupe_key="file.uploaded:file:fil_1", created=False)
    assert [r.object_id for r in feed(resources.db)] == ["fil_1", "fil_2"]
    assert ACTIVITY_UNIQUE_FOR == "10m"
