"""Reading jobs back: one job in full (`Inspector.job`) and jobs by state (`Inspector.jobs`), on a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from forgejobs import Client, NoSuchJob, Settings, Status
from forgejobs.errors import UnknownJob
from forgejobs.inspection import Inspector, JobSummary, State, parse_state
from forgejobs.keys import Keys
from forgejobs.worker import Worker
from tests.conftest import WorkerProcess, wait_for
from tests.samplejobs.basic import Doomed, Echo, Progressing
from tests.samplejobs.limits import OrgTask

pytestmark = pytest.mark.redis


@pytest.fixture
def inspector(client: Client) -> Inspector:
    return Inspector(client.backend, client.registry)


def work(settings: Settings, client: Client, conn: redis.Redis, queues: list[str]) -> None:
    """Run every waiting job of `queues` in this process, then stop."""
    Worker(settings, client.registry, queues=queues, connection=conn).run(burst=True, horizon=0)


def ids(jobs: list[JobSummary]) -> list[str]:
    return [j.id for j in jobs]


def test_waiting_jobs_are_listed_in_the_order_workers_take_them(inspector: Inspector) -> None:
    low = Echo.with_options(priority=7).enqueue(text="low")
    first = Echo.enqueue(text="first")
    second = Echo.enqueue(text="second")
    urgent = Echo.with_options(priority=1).enqueue(text="urgent")

    listed = inspector.jobs("fast", "waiting")

    assert ids(listed) == [urgent.id, first.id, second.id, low.id]
    assert [j.priority for j in listed] == [1, 5, 5, 7]
    assert all(j.state is State.WAITING and j.name == "fast.echo" and j.attempt == 1 for j in listed)
    detail = inspector.job(second.id)
    assert detail.status is Status.QUEUED and detail.state is State.WAITING
    assert detail.position == 1  # `first` is ahead of it on the priority-5 list
    assert detail.payload == {"text": "second"}
    assert detail.options["priority"] == 5 and detail.options["queue"] == "fast"
    assert detail.declared is not None and detail.declared["attempts"] == 1


def test_delayed_jobs_show_their_due_time_soonest_first(inspector: Inspector) -> None:
    later = Echo.with_options(delay=600).enqueue(text="later")
    sooner = Echo.with_options(delay=60).enqueue(text="sooner")
    listed = inspector.jobs("fast", "scheduled")  # an alias of delayed
    assert ids(listed) == [sooner.id, later.id]
    assert listed[0].due_at is not None and listed[1].due_at is not None
    assert 530 < (listed[1].due_at - listed[0].due_at).total_seconds() < 550
    detail = inspector.job(later.id)
    assert detail.state is State.DELAYED and detail.status is Status.SCHEDULED and detail.due_at == listed[1].due_at


def test_finished_jobs_show_result_progress_log_errors_and_dead_letter(
    settings: Settings, client: Client, conn: redis.Redis, inspector: Inspector, tmp_path: Path
) -> None:
    echo = Echo.enqueue(text="hello")
    progressing = Progressing.enqueue()
    doomed = Doomed.enqueue(path=str(tmp_path / "doomed.jsonl"))
    work(settings, client, conn, ["fast"])

    done = inspector.job(echo.id)
    assert done.state is State.SUCCEEDED and done.status is Status.SUCCEEDED
    assert done.result == {"text": "hello", "attempt": 1}
    assert done.finished_at is not None and done.expires_at is not None and done.finished_at < done.expires_at
    assert done.dead_letter is None and done.error is None

    shown = inspector.job(progressing.id)
    assert shown.progress == {"done": 2, "total": 2}
    assert [line.split(" #1 ")[1] for line in shown.logs] == ["halfway", "done"]

    dead = inspector.job(doomed.id)
    assert dead.state is State.FAILED and dead.status is Status.FAILED
    assert dead.error == "Unrecoverable: the account was deleted"
    assert dead.dead_letter is not None and dead.dead_letter.reason.value == "unrecoverable"
    assert dead.traceback is not None and "Unrecoverable: the account was deleted" in dead.traceback
    assert [a.attempt for a in dead.attempts] == [1] and "the account was deleted" in dead.attempts[0].error

    assert set(ids(inspector.jobs("fast", "done"))) == {echo.id, progressing.id}
    assert ids(inspector.jobs("fast", "failed")) == [doomed.id]
    assert ids(inspector.jobs("fast", "dead")) == [doomed.id]
    everything = inspector.jobs("fast")
    assert sorted(ids(everything)) == sorted([echo.id, progressing.id, doomed.id])  # the dead letter once
    assert ids(inspector.jobs(name="fast.echo")) == [echo.id]
    assert len(inspector.jobs("fast", limit=2)) == 2


def test_a_job_known_only_by_its_dead_letter(client: Client, conn: redis.Redis, inspector: Inspector) -> None:
    """A failed job's record expires after its failure TTL; its dead letter is kept longer."""
    doomed = Echo.enqueue(text="x")
    from forgejobs import DeadLetter, Reason

    client.backend.dead_letters.add(
        DeadLetter(id=doomed.id, name="fast.echo", queue="fast", reason=Reason.EXHAUSTED, error="boom", traceback="tb")
    )
    client.backend.forget(doomed.id)
    detail = inspector.job(doomed.id)
    assert detail.state is State.DEAD and detail.status is Status.FAILED
    assert detail.error == "boom" and detail.traceback == "tb" and detail.queue == "fast"
    assert ids(inspector.jobs("fast", "dead")) == [doomed.id]


def test_running_and_parked_jobs_of_a_full_concurrency_key(
    client: Client, inspector: Inspector, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """OrgTask lets 2 jobs of one organisation run at once: of 4 enqueued, 2 run and 2 are parked."""
    start_worker("--queues", "perorg")
    handles = [OrgTask.enqueue(path=str(tmp_path / "n.txt"), org="acme", seconds=5) for _ in range(4)]
    wait_for(
        lambda: len(inspector.jobs("perorg", "active")) == 2 and len(inspector.jobs("perorg", "parked")) == 2,
        timeout=10,
        what="two running and two parked",
    )
    active = inspector.jobs("perorg", "running")
    assert set(ids(active)) == {h.id for h in handles[:2]}
    assert all(j.worker and j.started_at is not None and j.concurrency_key == "acme" for j in active)
    parked = inspector.jobs("perorg", "parked")
    assert ids(parked) == [h.id for h in handles[2:]]
    running = inspector.job(handles[0].id)
    assert running.state is State.ACTIVE and running.status is Status.RUNNING and running.started_at is not None
    waiting = inspector.job(handles[3].id)
    assert waiting.state is State.PARKED and waiting.position == 1 and waiting.concurrency_key == "acme"
    assert waiting.options["concurrency_key"] == "acme" and waiting.options["concurrency_limit"] == 2


def test_stalled_and_corrupt_records(client: Client, conn: redis.Redis, inspector: Inspector) -> None:
    """Written by hand as recover.lua leaves them: a job taken back from a dead worker waits on the stalled
    list for the next worker's decision; a record that is not an envelope is shown as it is stored."""
    keys = Keys().queue("fast")
    handle = Echo.enqueue(text="was running")
    conn.lrem(keys.wait(5), 0, handle.id)
    conn.rpush(keys.stalled, handle.id)
    assert ids(inspector.jobs("fast", "stalled")) == [handle.id]
    assert inspector.job(handle.id).state is State.STALLED

    conn.hset(keys.job("broken"), mapping={"d": "not json", "p": "5", "s": "queued"})
    conn.rpush(keys.wait(5), "broken")
    broken = inspector.job("broken")
    assert broken.name is None and broken.raw == "not json" and broken.state is State.WAITING
    assert [j.name for j in inspector.jobs("fast", "waiting")] == [None]


def test_unknown_ids_queues_and_states_are_refused_by_name(inspector: Inspector) -> None:
    with pytest.raises(NoSuchJob, match="no job with id 'nope'"):
        inspector.job("nope")
    with pytest.raises(UnknownJob, match="no queue named 'fats' \\(did you mean 'fast'\\?\\); declared: chaos, fast"):
        inspector.jobs("fats")
    with pytest.raises(ValueError, match="unknown state 'wating' \\(did you mean 'waiting'\\?\\); valid states: "):
        parse_state("wating")


def test_dead_letters_are_read_a_page_at_a_time_and_filtered_by_queue(client: Client, inspector: Inspector) -> None:
    from forgejobs import DeadLetter, Reason

    letters = client.backend.dead_letters
    for i in range(450):  # more than two pages of 200, alternating queues, newest last
        queue = "fast" if i % 2 else "slow"
        letters.add(DeadLetter(id=f"d{i:03d}", name=f"{queue}.x", queue=queue, reason=Reason.CORRUPT, error="e"))
    fast = inspector.jobs("fast", "dead", limit=1000)
    assert len(fast) == 225 and all(j.queue == "fast" for j in fast)
    assert ids(inspector.jobs("slow", "dead", limit=3)) == ["d448", "d446", "d444"]  # newest first
