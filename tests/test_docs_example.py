"""The worked example of docs/testing.md (quoted there in full): testing jobs.email.WelcomeEmail."""

from __future__ import annotations

from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from forgejobs import Reason, Registry, Settings, Status
from forgejobs.testing import FakeQueue, make_context
from jobs.email import WelcomeEmail
from jobs.resources import Resources

PROJECT = Path(__file__).resolve().parent.parent


def signup(user_id: str, email: str, name: str) -> None:
    """The application code under test: create the account (left out here), then send the welcome email."""
    WelcomeEmail.enqueue(user_id=user_id, email=email, name=name)


@pytest.fixture
def resources(tmp_path: Path) -> Resources:
    """What the handler finds in ctx.resources: an outbox in a temporary directory."""
    return Resources(
        outbox_dir=tmp_path / "outbox",
        audit_log=tmp_path / "audit.jsonl",
        mail_from="ForgeStack <no-reply@forgestack.test>",
        http_timeout=1.0,
    )


def test_the_handler_writes_the_message(resources: Resources) -> None:
    job = WelcomeEmail(user_id="u1", email="ada@example.com", name="Ada Lovelace")

    result = job.perform(make_context(job, resources=resources, job_id="job-1"))

    path = resources.outbox_dir / "job-1.eml"
    assert result == {"outbox": str(path)}
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Subject"] == "Welcome to ForgeStack"
    assert "Hi Ada Lovelace" in message.get_content()


def test_signup_enqueues_one_welcome_email(fake_queue: FakeQueue) -> None:
    signup("u1", "ada@example.com", "Ada Lovelace")

    (job,) = fake_queue.assert_enqueued(WelcomeEmail, count=1, email="ada@example.com")
    assert job.user_id == "u1"
    fake_queue.refute_enqueued(WelcomeEmail, email="bob@example.com")


def test_draining_runs_the_enqueued_job(fake_queue: FakeQueue, resources: Resources) -> None:
    fake_queue.resources = resources
    signup("u1", "ada@example.com", "Ada Lovelace")

    result = fake_queue.drain()

    assert (result.succeeded, result.failed, result.retried) == (1, 0, 0)
    (path,) = resources.outbox_dir.glob("*.eml")
    assert "Ada Lovelace <ada@example.com>" in path.read_text()


def test_failed_attempts_wait_out_the_backoff_on_the_fake_clock(fake_queue: FakeQueue, resources: Resources) -> None:
    fake_queue.resources = resources
    resources.outbox_dir.parent.mkdir(parents=True, exist_ok=True)
    resources.outbox_dir.write_text("a file where the outbox directory should be")
    start = fake_queue.clock.now()
    handle = WelcomeEmail.enqueue(user_id="u1", email="ada@example.com", name="Ada Lovelace")

    result = fake_queue.drain(raise_on_failure=False)

    # specs/queues.yaml gives it 4 attempts; backoff.exponential(1) waits 1 s, 2 s, 4 s between them.
    assert (result.succeeded, result.failed, result.retried) == (0, 1, 3)
    assert fake_queue.clock.now() - start == timedelta(seconds=1 + 2 + 4)
    assert handle.status() is Status.FAILED
    (dead,) = fake_queue.dead_letters()
    assert (dead.id, dead.reason) == (handle.id, Reason.EXHAUSTED)
    assert [a.attempt for a in dead.attempts] == [1, 2, 3, 4]
    assert dead.error.startswith("FileExistsError")

    # Fix the cause, requeue the dead letter (same id, from attempt 1) and run it again.
    resources.outbox_dir.unlink()
    fake_queue.client.requeue(dead.id)

    assert fake_queue.drain().succeeded == 1
    assert handle.status() is Status.SUCCEEDED
    assert handle.result() == {"outbox": str(resources.outbox_dir / f"{handle.id}.eml")}
    assert fake_queue.dead_letters() == []


def test_the_project_specs_apply_when_the_fake_queue_gets_the_project_registry(resources: Resources) -> None:
    registry = Registry.load(Settings(jobs="jobs", specs=PROJECT / "specs"))  # specs/queues.yaml: attempts: 4
    resources.outbox_dir.parent.mkdir(parents=True, exist_ok=True)
    resources.outbox_dir.write_text("a file where the outbox directory should be")

    with FakeQueue(registry, resources=resources) as queue:
        start = queue.clock.now()
        WelcomeEmail.enqueue(user_id="u1", email="ada@example.com", name="Ada Lovelace")
        result = queue.drain(raise_on_failure=False)

    assert (result.failed, result.retried) == (1, 3)
    assert queue.clock.now() - start == timedelta(seconds=1 + 2 + 4)
