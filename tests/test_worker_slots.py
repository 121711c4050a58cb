"""What a worker's slot records for a job it takes, run in this process: a record it cannot read is
dead-lettered with what it held, counted and logged, and never run; a job interrupted outside its
handler's outcome is counted under the name its envelope gives."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forgejobs import Client, Reason, Registry, Settings
from forgejobs.keys import QueueKeys
from forgejobs.metrics import MetricsReader
from forgejobs.runtime.worker import Worker
from tests.helpers import wait_for
from tests.samplejobs.basic import Echo

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")
WEEK_MS = 7 * 86_400_000


@pytest.fixture
def worker(settings: Settings, registry: Registry, conn: redis.Redis) -> Iterator[Worker]:
    """A started worker of the fast queue (one slot), stopped at the end."""
    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    worker.start(give_up_after=10)
    yield worker
    worker.stop()
    assert worker.join(30), "the worker did not stop"


def counters(conn: redis.Redis, queue: str) -> dict[tuple[str, str, str | None], int]:
    snapshot = MetricsReader(conn, queues=[queue]).snapshot()
    return {(c.name, c.job_name, c.reason): c.value for c in snapshot.counters if c.name not in ("started", "failed")}


def failed_this_minute(conn: redis.Redis, queue: str) -> int:
    return sum(m.failed for m in MetricsReader(conn, queues=[queue]).per_minute(queue, minutes=2))


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "forgejobs.worker" and r.levelno >= logging.ERROR]


def server_ms(conn: redis.Redis) -> int:
    seconds, micros = conn.time()
    return int(seconds) * 1000 + int(micros) // 1000


def push(conn: redis.Redis, job_id: str) -> None:
    """Put `job_id` on the fast queue's wait list and tell idle slots."""
    conn.rpush(FAST.wait(5), job_id)
    conn.zadd(FAST.marker, {"0": 0})


@pytest.mark.parametrize(
    ("write", "error", "raw"),
    [
        (lambda c, k: c.set(k, "not a hash"), "corrupt record: a string, not a hash", "not a hash"),
        (lambda c, k: c.hset(k, mapping={"s": "queued"}), "corrupt record: no envelope", '{"s": "queued"}'),
        (lambda c, k: None, "corrupt record: no envelope (an id on a wait list with no record)", ""),
    ],
    ids=["string", "hash-without-envelope", "missing"],
)
def test_a_record_a_slot_cannot_read_is_dead_lettered_with_what_it_held_and_the_slot_goes_on(
    worker: Worker,
    client: Client,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    write: Any,
    error: str,
    raw: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    write(conn, FAST.job("garbled"))
    before = server_ms(conn)
    push(conn, "garbled")
    after = Echo.enqueue(text="after")

    assert after.result(timeout=10).text == "after"  # the slot went on
    letter = client.dead_letter("garbled")
    assert (letter.id, letter.queue, letter.reason, letter.error, letter.raw) == (
        "garbled",
        "fast",
        Reason.CORRUPT,
        error,
        raw,
    )
    assert messages(caplog) == [f"dead-lettered garbled from fast: {error}"]
    assert counters(conn, "fast") == {
        ("dead_lettered", "?", "corrupt"): 1,
        ("enqueued", "fast.echo", None): 1,
        ("succeeded", "fast.echo", None): 1,
    }
    assert failed_this_minute(conn, "fast") == 1
    assert worker.stats.counts == {"dead": 1, "succeeded": 1}
    # kept as failed for a week (the failure TTL of a job whose type is not known): scored by when it expires
    expires = conn.zscore(FAST.failed, "garbled")
    assert expires is not None and before + WEEK_MS <= expires <= server_ms(conn) + WEEK_MS
    assert conn.hlen(FAST.active) == 0


def test_a_record_redis_refuses_to_show_is_dead_lettered_with_the_error_in_its_place(
    worker: Worker, client: Client, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forgejobs.runtime.worker as module

    def refuse(connection: Any, key: Any) -> tuple[str, str]:
        raise redis.ResponseError("READONLY You can't read against a read only replica.")

    monkeypatch.setattr(module, "read_record", refuse)
    conn.set(FAST.job("unreadable"), "x")
    push(conn, "unreadable")
    letter = wait_for(lambda: client.backend.dead_letters.get("unreadable"), what="the dead letter")
    assert letter.error == "corrupt record: a ?, not a hash"  # type: ignore[attr-defined]
    assert letter.raw == "<unreadable: READONLY You can't read against a read only replica.>"  # type: ignore[attr-defined]


class Late(BaseException):
    """Raised by a guard as the handler returns (a timeout firing just too late), outside what execution
    turns into an outcome."""


def late_on_the_first_run() -> Any:
    runs: list[float] = []

    @contextlib.contextmanager
    def guard(seconds: float) -> Iterator[None]:
        yield
        runs.append(seconds)
        if len(runs) == 1:
            raise Late()

    return guard


def test_a_job_that_fails_outside_its_handler_runs_again_as_the_same_attempt_a_second_later_counted_by_its_name(
    settings: Settings, registry: Registry, client: Client, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="forgejobs.worker")
    worker = Worker(
        settings, registry, queues=["fast"], connection=conn, resources=object(), guard=late_on_the_first_run()
    )
    handle = Echo.enqueue(text="twice")
    worker.start(give_up_after=10)
    try:
        assert handle.result(timeout=15).attempt == 1
    finally:
        worker.stop()
        assert worker.join(30), "the worker did not stop"
    assert messages(caplog) == [f"fast {handle.id}: failed outside its handler; running it again in 1 s"]
    assert counters(conn, "fast") == {
        ("enqueued", "fast.echo", None): 1,
        ("retried", "fast.echo", None): 1,
        ("succeeded", "fast.echo", None): 1,
    }
    assert failed_this_minute(conn, "fast") == 1
    started = [e.at for e in client.backend.events.read() if e.job_id == handle.id and e.kind.value == "started"]
    assert len(started) == 2 and (started[1] - started[0]).total_seconds() >= 1.0
