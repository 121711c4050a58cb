"""Assertions on how a job was enqueued, not only on its payload: queue, priority, id, when it is due
(with a tolerance), how many; `all_enqueued` with the options; waiting for an enqueue made by
another thread or task."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from forgejobs import Context, Job, Status
from forgejobs.testing import Enqueued, Expect, FakeQueue


class Invite(Job, queue="invites", priority=3):
    email: str

    def perform(self, ctx: Context) -> None: ...


class Digest(Job, queue="digests"):
    user_id: str

    def perform(self, ctx: Context) -> None: ...


class Nightly(Job, queue="digests", every=timedelta(hours=24)):
    def perform(self, ctx: Context) -> None: ...


# -- options ---------------------------------------------------------------------------------------


def test_queue_priority_and_job_id_are_matched(fake_queue: FakeQueue) -> None:
    Invite.with_options(priority=1, job_id="invite-ada").enqueue(email="ada@example.com")

    fake_queue.assert_enqueued(Invite, email="ada@example.com", options=Expect(queue="invites", priority=1))
    fake_queue.assert_enqueued(Invite, options=Expect(job_id="invite-ada"))
    for wrong in (Expect(queue="digests"), Expect(priority=3), Expect(job_id="invite-bob")):
        with pytest.raises(AssertionError, match="found 0"):
            fake_queue.assert_enqueued(Invite, email="ada@example.com", options=wrong)


def test_options_may_be_a_dict_and_an_unknown_key_is_named(fake_queue: FakeQueue) -> None:
    Invite.enqueue(email="ada@example.com")

    fake_queue.assert_enqueued(Invite, options={"queue": "invites", "priority": 3})
    with pytest.raises(TypeError, match="options: unknown queu; known: delay, delta, job_id"):
        fake_queue.assert_enqueued(Invite, options={"queu": "invites"})


def test_a_delay_matches_within_the_tolerance(fake_queue: FakeQueue) -> None:
    Digest.with_options(delay=timedelta(hours=1)).enqueue(user_id="u1")

    fake_queue.assert_enqueued(Digest, options=Expect(delay=timedelta(hours=1)))
    fake_queue.assert_enqueued(Digest, options=Expect(delay=3600.9))  # within the default second
    fake_queue.assert_enqueued(Digest, options=Expect(delay=timedelta(minutes=59), delta=timedelta(minutes=1)))
    with pytest.raises(AssertionError, match=r"delay=1:00:02 ±0:00:01, found 0"):
        fake_queue.assert_enqueued(Digest, options=Expect(delay=timedelta(hours=1, seconds=2)))
    fake_queue.refute_enqueued(Digest, options=Expect(delay=0))


def test_a_job_due_at_once_has_no_delay(fake_queue: FakeQueue) -> None:
    Digest.enqueue(user_id="u1")

    fake_queue.assert_enqueued(Digest, options=Expect(delay=0))
    fake_queue.refute_enqueued(Digest, options=Expect(delay=timedelta(seconds=5)))


def test_a_moment_matches_within_the_tolerance(fake_queue: FakeQueue) -> None:
    noon = datetime(2030, 1, 1, 12, tzinfo=UTC)
    Digest.with_options(at=noon).enqueue(user_id="u1")

    fake_queue.assert_enqueued(Digest, options=Expect(scheduled_at=noon + timedelta(milliseconds=500)))
    fake_queue.assert_enqueued(Digest, options=Expect(scheduled_at=noon - timedelta(seconds=30), delta=30))
    fake_queue.refute_enqueued(Digest, options=Expect(scheduled_at=noon + timedelta(seconds=2)))


def test_scheduled_within_counts_from_the_fake_clock_now(fake_queue: FakeQueue) -> None:
    Digest.with_options(delay=timedelta(minutes=10)).enqueue(user_id="u1")

    fake_queue.assert_enqueued(Digest, options=Expect(scheduled_within=timedelta(minutes=10)))
    fake_queue.refute_enqueued(Digest, options=Expect(scheduled_within=timedelta(minutes=9)))
    fake_queue.clock.advance(timedelta(minutes=2))
    fake_queue.assert_enqueued(Digest, options=Expect(scheduled_within=timedelta(minutes=8)))


def test_delay_and_moment_together_are_refused() -> None:
    with pytest.raises(TypeError, match="give delay or scheduled_at, not both"):
        Expect(delay=1, scheduled_at=datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(TypeError, match="timezone-aware"):
        Expect(scheduled_at=datetime(2030, 1, 1))


def test_the_count_applies_to_the_jobs_that_match_payload_and_options(fake_queue: FakeQueue) -> None:
    Digest.enqueue(user_id="u1")
    Digest.with_options(priority=1).enqueue(user_id="u1")
    Digest.with_options(priority=1).enqueue(user_id="u2")

    fake_queue.assert_enqueued(Digest, count=2, options=Expect(priority=1))
    fake_queue.assert_enqueued(Digest, count=1, user_id="u1", options=Expect(priority=1))
    with pytest.raises(AssertionError, match=r"expected 1 × digests.digest with \{\} and priority=1, found 2"):
        fake_queue.assert_enqueued(Digest, count=1, options=Expect(priority=1))


def test_a_failure_lists_every_enqueue_with_its_options(fake_queue: FakeQueue) -> None:
    Invite.with_options(job_id="invite-1").enqueue(email="ada@example.com")
    Digest.with_options(delay=timedelta(hours=1), job_id="digest-1").enqueue(user_id="u1")

    with pytest.raises(AssertionError) as info:
        fake_queue.assert_enqueued(Invite, email="bob@example.com", options=Expect(queue="invites"))

    assert str(info.value) == (
        "expected invites.invite with {'email': 'bob@example.com'} and queue='invites', found 0; enqueued:\n"
        "  invites.invite id=invite-1 queue=invites priority=3 due at once [queued] {'email': 'ada@example.com'}\n"
        "  digests.digest id=digest-1 queue=digests priority=5 due 2030-01-01T01:00:00+00:00 (+1:00:00) "
        "[scheduled] {'user_id': 'u1'}"
    )


def test_refute_enqueued_names_what_it_found(fake_queue: FakeQueue) -> None:
    Invite.enqueue(email="ada@example.com")

    with pytest.raises(AssertionError, match=r"expected no invites.invite with \{\} and priority=3, found 1"):
        fake_queue.refute_enqueued(Invite, options=Expect(priority=3))


# -- all_enqueued -------------------------------------------------------------------------------------


def test_all_enqueued_returns_typed_jobs_with_their_options(fake_queue: FakeQueue) -> None:
    start = fake_queue.clock.now()
    Invite.with_options(job_id="invite-1").enqueue(email="ada@example.com")
    Digest.with_options(delay=timedelta(minutes=5), priority=2).enqueue(user_id="u1")

    invite, digest = fake_queue.all_enqueued()

    assert isinstance(invite.job, Invite) and isinstance(digest.job, Digest)
    assert (invite.job_id, invite.queue, invite.priority, invite.scheduled_at) == ("invite-1", "invites", 3, None)
    assert (digest.job.user_id, digest.priority, digest.delay) == ("u1", 2, timedelta(minutes=5))
    assert digest.scheduled_at == start + timedelta(minutes=5)
    assert (digest.enqueued_at, digest.status, digest.scheduled_for) == (start, Status.SCHEDULED, None)


def test_all_enqueued_narrows_to_a_queue_or_a_job_type(fake_queue: FakeQueue) -> None:
    Invite.enqueue(email="ada@example.com")
    Digest.enqueue(user_id="u1")
    Nightly.enqueue()

    assert [e.name for e in fake_queue.all_enqueued(queue="digests")] == ["digests.digest", "digests.nightly"]
    only: list[Enqueued[Digest]] = fake_queue.all_enqueued(job=Digest)
    assert [e.job.user_id for e in only] == ["u1"]
    assert fake_queue.all_enqueued(queue="digests", job=Invite) == []


def test_all_enqueued_shows_the_status_of_jobs_that_ran_and_the_tick_they_were_fired_for(
    fake_queue: FakeQueue,
) -> None:
    tick = datetime(2030, 1, 2, tzinfo=UTC)
    fake_queue.tick(Nightly, at=tick)
    fake_queue.drain()

    (nightly,) = fake_queue.all_enqueued(job=Nightly)
    assert (nightly.status, nightly.scheduled_for, nightly.job_id) == (
        Status.SUCCEEDED,
        tick,
        "digests_nightly-20300102T000000Z",
    )


# -- waiting for an enqueue from elsewhere ----------------------------------------------------------------


def test_assert_enqueued_waits_for_a_job_another_thread_enqueues(fake_queue: FakeQueue) -> None:
    # The test holds the fake backend's lock until assert_enqueued waits on it, so the thread's
    # enqueue can only land while the assertion is already waiting: it must have waited.
    with fake_queue.backend.changed:
        worker = threading.Thread(target=lambda: Invite.enqueue(email="late@example.com"))
        worker.start()
        (found,) = fake_queue.assert_enqueued(Invite, email="late@example.com", timeout=30)
    worker.join()

    assert found.email == "late@example.com"


def test_without_a_timeout_assert_enqueued_does_not_wait(fake_queue: FakeQueue) -> None:
    with fake_queue.backend.changed:
        worker = threading.Thread(target=lambda: Invite.enqueue(email="late@example.com"))
        worker.start()
        with pytest.raises(AssertionError, match="found 0; nothing was enqueued"):
            fake_queue.assert_enqueued(Invite, email="late@example.com")
    worker.join()


def test_a_timed_out_assertion_says_how_long_it_waited(fake_queue: FakeQueue) -> None:
    Invite.enqueue(email="ada@example.com")

    with pytest.raises(AssertionError, match=r"found 0 after waiting 0.05s; enqueued:\n  invites.invite"):
        fake_queue.assert_enqueued(Invite, email="bob@example.com", timeout=0.05)


def test_the_async_assertion_lets_a_task_on_the_same_loop_enqueue(fake_queue: FakeQueue) -> None:
    async def scenario() -> list[Invite]:
        async def later() -> None:
            await asyncio.sleep(0)  # yield once, so the assertion is already waiting
            Invite.enqueue(email="task@example.com")

        task = asyncio.create_task(later())
        found = await fake_queue.aassert_enqueued(Invite, email="task@example.com", timeout=30)
        await task
        return found

    (found,) = asyncio.run(scenario())

    assert found.email == "task@example.com"


def test_the_async_assertion_fails_after_its_timeout_with_the_list(fake_queue: FakeQueue) -> None:
    Invite.enqueue(email="ada@example.com")

    with pytest.raises(AssertionError, match=r"with \{'email': 'bob@example.com'\}, found 0; enqueued"):
        asyncio.run(fake_queue.aassert_enqueued(Invite, email="bob@example.com", timeout=0.05))
