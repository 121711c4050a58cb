"""The worked example of docs/testing.md (quoted there in full): testing jobs.email.WelcomeEmail."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from forgejobs import Reason, Registry, Settings, Status
from forgejobs.testing import FakeQueue, make_context
from jobs.email import WelcomeEmail
from jobs.flows import sign_up
from jobs.mail import TransientMailError
from jobs.resources import CatalogSettings, Resources, build
from jobs.store import users

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def resources(tmp_path: Path) -> Iterator[Resources]:
    """What handlers find in ctx.resources: a SQLite file and an email outbox in a temporary directory."""
    catalog = CatalogSettings(
        database_url=f"sqlite:///{tmp_path / 'catalog.db'}",
        outbox_dir=tmp_path / "outbox",
        storage_dir=tmp_path / "storage",
    )
    built = build(catalog=catalog)
    yield built
    built.close()


class DownMailer:
    """A mail server that is down: every send fails in a way worth retrying."""

    def send(self, message: EmailMessage) -> None:
        raise TransientMailError("SMTP 127.0.0.1:25: connection refused")


def outbox_messages(resources: Resources) -> list[EmailMessage]:
    parser = BytesParser(policy=policy.default)
    return [parser.parsebytes(p.read_bytes()) for p in sorted(resources.settings.outbox_dir.glob("*.eml"))]


def test_the_handler_writes_the_message(resources: Resources) -> None:
    with resources.db.begin() as conn:
        conn.execute(users.insert().values(id="usr_1", email="ada@example.com", name="Ada Lovelace"))
    job = WelcomeEmail(user_id="usr_1")

    result = job.perform(make_context(job, resources=resources, job_id="job-1"))

    assert result.to == "ada@example.com"
    (message,) = outbox_messages(resources)
    assert message["Subject"] == "Welcome to ForgeStack"
    assert message["Message-ID"] == result.message_id
    text = message.get_body(("plain",))
    assert text is not None and "Ada Lovelace" in text.get_content()


def test_sign_up_enqueues_one_welcome_email(fake_queue: FakeQueue, resources: Resources) -> None:
    user_id = sign_up(resources.db, email="ada@example.com", name="Ada Lovelace")

    (job,) = fake_queue.assert_enqueued(WelcomeEmail, count=1, user_id=user_id)
    assert job.user_id == user_id
    fake_queue.refute_enqueued(WelcomeEmail, user_id="usr_someone_else")


def test_draining_runs_the_enqueued_jobs(fake_queue: FakeQueue, resources: Resources) -> None:
    fake_queue.resources = resources
    sign_up(resources.db, email="ada@example.com", name="Ada Lovelace")

    result = fake_queue.drain()

    # the welcome email and the audit event (no organisation given: no activity entry)
    assert (result.succeeded, result.failed, result.retried) == (2, 0, 0)
    (message,) = outbox_messages(resources)
    assert message["To"] == "Ada Lovelace <ada@example.com>"


def test_failed_attempts_wait_out_the_backoff_on_the_fake_clock(fake_queue: FakeQueue, resources: Resources) -> None:
    fake_queue.resources = dataclasses.replace(resources, mailer=DownMailer())
    with resources.db.begin() as conn:
        conn.execute(users.insert().values(id="usr_1", email="ada@example.com", name="Ada Lovelace"))
    start = fake_queue.clock.now()
    handle = WelcomeEmail.enqueue(user_id="usr_1")

    result = fake_queue.drain(raise_on_failure=False)

    # specs/queues.yaml gives it 4 attempts; the backoff waits 30 s, 60 s, 120 s between them, each ±20 %.
    assert (result.succeeded, result.failed, result.retried) == (0, 1, 3)
    assert timedelta(seconds=0.8 * 210) <= fake_queue.clock.now() - start <= timedelta(seconds=1.2 * 210)
    assert handle.status() is Status.FAILED
    (dead,) = fake_queue.dead_letters()
    assert (dead.id, dead.reason) == (handle.id, Reason.EXHAUSTED)
    assert [a.attempt for a in dead.attempts] == [1, 2, 3, 4]
    assert dead.error.startswith("TransientMailError")

    # The server is back: requeue the dead letter (same id, from attempt 1) and run it again.
    fake_queue.resources = resources
    fake_queue.client.requeue(dead.id)

    assert fake_queue.drain().succeeded == 1
    assert handle.status() is Status.SUCCEEDED
    assert handle.result().to == "ada@example.com"
    assert fake_queue.dead_letters() == []


def test_the_project_specs_apply_when_the_fake_queue_gets_the_project_registry(resources: Resources) -> None:
    registry = Registry.load(Settings(jobs="jobs", specs=PROJECT / "specs"))  # specs/queues.yaml: attempts: 4
    with resources.db.begin() as conn:
        conn.execute(users.insert().values(id="usr_1", email="ada@example.com", name="Ada Lovelace"))

    with FakeQueue(registry, resources=dataclasses.replace(resources, mailer=DownMailer())) as queue:
        WelcomeEmail.enqueue(user_id="usr_1")
        result = queue.drain(raise_on_failure=False)

    assert (result.failed, result.retried) == (1, 3)
