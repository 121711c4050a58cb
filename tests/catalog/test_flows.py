"""The app-side sign-up flow: validated before anything is written, enqueued after the commit or through an outbox."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from forgejobs.outbox import Outbox, OutboxRelay
from forgejobs.testing import FakeQueue
from jobs.activity import CreateActivity
from jobs.audit import RecordAuditEvent
from jobs.email import WelcomeEmail
from jobs.flows import sign_up
from jobs.store import Store, memberships, users
from jobs.usage import record_usage


def count(store: Store, table: sa.Table) -> int:
    with store.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_sign_up_writes_the_user_and_enqueues_its_three_jobs(
    store: Store, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    user_id = sign_up(store, email=" Cy@Example.com ", name="Cy", org_id=org["org_id"], request_id="req-1")

    with store.begin() as conn:
        assert conn.execute(sa.select(users.c.email).where(users.c.id == user_id)).scalar_one() == "Cy@example.com"
        role = conn.execute(sa.select(memberships.c.role).where(memberships.c.user_id == user_id)).scalar_one()
    assert role == "member"
    fake_queue.assert_enqueued(WelcomeEmail, count=1, user_id=user_id)
    fake_queue.assert_enqueued(RecordAuditEvent, count=1, actor_id=user_id, action="user.signed_up", request_id="req-1")
    fake_queue.assert_enqueued(CreateActivity, count=1, org_id=org["org_id"], summary="Cy joined")


@pytest.mark.parametrize(
    ("email", "name", "error"),
    [
        ("not-an-address", "Cy", "not an email address"),
        ("cy@example.com", "Cy\r\nBcc: all@example.com", "on one line"),
        ("cy@example.com", "", "1 to 200 characters"),
        ("cy@example.com", "C" * 201, "1 to 200 characters"),
        *[
            ("cy@example.com", f"Cy{c}Bcc: all@example.com", "without control characters")
            for c in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\t", "\x7f")
        ],
    ],
)
def test_sign_up_refuses_bad_input_before_writing_anything(
    store: Store, fake_queue: FakeQueue, org: dict[str, str], email: str, name: str, error: str
) -> None:
    before = count(store, users)
    with pytest.raises(ValueError, match=error):
        sign_up(store, email=email, name=name, org_id=org["org_id"])
    assert count(store, users) == before
    assert fake_queue.backend.log == []


def test_sign_up_rolled_back_enqueues_nothing(store: Store, fake_queue: FakeQueue, org: dict[str, str]) -> None:
    sign_up(store, email="dup@example.com", name="First", org_id=org["org_id"])
    fake_queue.clear()
    with pytest.raises(sa.exc.IntegrityError):
        sign_up(store, email="dup@example.com", name="Second", org_id=org["org_id"])  # the email is taken
    assert fake_queue.all_enqueued() == []


def test_sign_up_through_an_outbox_writes_its_jobs_as_rows_of_its_transaction(
    store: Store, fake_queue: FakeQueue, org: dict[str, str]
) -> None:
    box = Outbox(f"outbox_{uuid.uuid4().hex[:8]}")
    with_outbox = Store(store.engine, outbox=box)
    with_outbox.create_all()
    user_id = sign_up(with_outbox, email="cy@example.com", name="Cy", org_id=org["org_id"])
    with pytest.raises(sa.exc.IntegrityError):
        sign_up(with_outbox, email="cy@example.com", name="Cy again", org_id=org["org_id"])
    assert fake_queue.all_enqueued() == [] and count(store, box.table) == 3  # the failed sign-up wrote none

    OutboxRelay(store.engine, fake_queue.client, box).run_once()

    assert count(store, box.table) == 0
    fake_queue.assert_enqueued(WelcomeEmail, count=1, user_id=user_id)
    fake_queue.assert_enqueued(RecordAuditEvent, count=1, actor_id=user_id)
    fake_queue.assert_enqueued(CreateActivity, count=1, org_id=org["org_id"])


def test_record_usage_refuses_a_metric_longer_than_its_column(store: Store, org: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metric must be 1 to 60 characters, got 61"):
        record_usage(store, org_id=org["org_id"], metric="m" * 61, quantity=1)
