"""The event stream: round trips, a capped length, resuming from an id, following through outages; hooks.

The stream tests run against Redis and against the in-memory stream, so the
fake queue's events behave like the real ones.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from forgejobs.events import (
    ZERO_ID,
    BaseEventStream,
    Event,
    EventKind,
    EventStream,
    Hooks,
    MemoryEventStream,
)
from tests.conftest import wait_for

KEY = "forgejobs:events"
NODE_SLACK = 100
"""Redis trims `MAXLEN ~` streams by whole nodes of `stream-node-max-entries` (100 by default) entries."""


def event(n: int, name: str = "WelcomeEmail", kind: EventKind = EventKind.COMPLETED, **data: object) -> Event:
    return Event(kind=kind, job_id=f"job-{n}", name=name, queue="email", attempt=1, data=data)


def appended(stream: BaseEventStream, e: Event) -> str:
    entry_id = stream.append(e)
    assert entry_id is not None
    return entry_id


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "memory"])
def make_stream(request: pytest.FixtureRequest) -> Callable[..., BaseEventStream]:
    """Builds the stream under test: on the test's Redis database, or in memory."""
    conn = request.getfixturevalue("conn") if request.param == "redis" else None

    def make(maxlen: int = 100_000) -> BaseEventStream:
        return MemoryEventStream(maxlen=maxlen) if conn is None else EventStream(conn, KEY, maxlen=maxlen)

    return make


class Follower:
    """Runs `follow` in a thread and keeps what it yields."""

    def __init__(self, events: Iterator[Event]) -> None:
        self.events = events
        self.received: list[Event] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for e in self.events:
                self.received.append(e)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def job_ids(self) -> list[str]:
        return [e.job_id for e in self.received]

    def wait_for_count(self, n: int) -> None:
        wait_for(lambda: len(self.received) >= n or self.error, timeout=3, what=f"{n} events, got {self.job_ids()}")
        assert self.error is None, self.error


@contextmanager
def following(stream: BaseEventStream, after: str | None = None, job_name: str | None = None) -> Iterator[Follower]:
    stop = threading.Event()
    follower = Follower(stream.follow(after=after, block_ms=50, job_name=job_name, stop=stop))
    try:
        yield follower
    finally:
        stop.set()
        follower.thread.join(timeout=2)
    assert not follower.thread.is_alive(), "follow did not stop when told to"
    assert follower.error is None, follower.error


class FlakyProxy:
    """A TCP proxy to Redis that a test can cut: open connections drop and new ones are refused until `restore`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.up:
                    _close(client)
                    continue
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)

    def cut(self) -> None:
        with self.lock:
            self.up = False
            cut, self.sockets = self.sockets, []
        for s in cut:
            _close(s)

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.cut()
        _close(self.listener)


def _close(s: socket.socket) -> None:
    with suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it, which close() alone does not
    s.close()


# Events and their fields


def test_an_event_becomes_flat_string_fields_and_back() -> None:
    original = event(1, kind=EventKind.RETRYING, error="SMTP 451", delay=2.5, progress={"done": 1, "total": 3})

    fields = original.to_fields()

    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert Event.from_fields(b"1-0", {k.encode(): v.encode() for k, v in fields.items()}) == original.model_copy(
        update={"id": "1-0"}
    )


def test_event_times_are_kept_in_utc() -> None:
    plus_two = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    assert event(1).at.tzinfo is UTC
    assert Event(kind="started", job_id="j", name="N", queue="q", attempt=1, at=plus_two).at == datetime(
        2026, 3, 1, 10, 0, tzinfo=UTC
    )


def test_fields_that_are_not_an_event_are_refused() -> None:
    with pytest.raises(ValueError):
        Event.from_fields("1-0", {"kind": "exploded", "job_id": "j", "name": "N", "queue": "q", "attempt": "1"})


# The stream, on Redis and in memory


def test_append_then_read_returns_every_field(make_stream: Callable[..., BaseEventStream]) -> None:
    stream = make_stream()
    sent = Event(
        kind=EventKind.DEAD_LETTERED,
        job_id="job-7",
        name="DeliverWebhook",
        queue="webhooks",
        attempt=5,
        at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        data={"reason": "exhausted", "error": "HTTP 503", "delay": 0.25},
    )

    entry_id = appended(stream, sent)
    (received,) = stream.read()

    assert received == sent.model_copy(update={"id": entry_id})


def test_trimming_keeps_the_stream_capped_at_about_maxlen(make_stream: Callable[..., BaseEventStream]) -> None:
    stream = make_stream(maxlen=50)

    for n in range(500):
        stream.append(event(n))

    kept = stream.read(count=1000)
    assert 50 <= len(kept) <= 50 + NODE_SLACK
    assert [e.job_id for e in kept[-3:]] == ["job-497", "job-498", "job-499"]  # the newest are the ones kept


def test_reading_after_an_id_returns_only_later_events(make_stream: Callable[..., BaseEventStream]) -> None:
    stream = make_stream()
    ids = [appended(stream, event(n)) for n in range(10)]

    later = stream.read(after=ids[3])

    assert [e.job_id for e in later] == [f"job-{n}" for n in range(4, 10)]
    assert [e.id for e in later] == ids[4:]
    assert [e.job_id for e in stream.read(after=ids[3], count=2)] == ["job-4", "job-5"]
    assert stream.read(after=ids[-1]) == []


def test_latest_id_is_where_new_events_start(make_stream: Callable[..., BaseEventStream]) -> None:
    stream = make_stream()
    assert stream.latest_id() == ZERO_ID
    stream.append(event(1))
    latest = stream.latest_id()

    assert stream.read(after=latest, block_ms=20) == []  # waits briefly, finds nothing
    stream.append(event(2))
    assert [e.job_id for e in stream.read(after=latest)] == ["job-2"]


def test_follow_yields_events_appended_after_it_started_for_one_job_name(
    make_stream: Callable[..., BaseEventStream],
) -> None:
    stream = make_stream()
    stream.append(event(0))  # before follow: not yielded

    with following(stream, job_name="WelcomeEmail") as follower:
        for n in range(1, 7):
            stream.append(event(n, name="WelcomeEmail" if n % 2 else "SendInvoice"))
        follower.wait_for_count(3)

    assert follower.job_ids() == ["job-1", "job-3", "job-5"]


def test_follow_from_an_id_replays_what_came_after_it(make_stream: Callable[..., BaseEventStream]) -> None:
    stream = make_stream()
    ids = [appended(stream, event(n)) for n in range(3)]

    with following(stream, after=ids[0]) as follower:
        stream.append(event(3))
        follower.wait_for_count(3)

    assert follower.job_ids() == ["job-1", "job-2", "job-3"]


# Redis only


@pytest.mark.redis
def test_append_rides_the_callers_pipeline(conn: redis.Redis) -> None:
    stream = EventStream(conn, KEY)
    pipe = conn.pipeline()
    pipe.set("state", "done")

    assert stream.append(event(1), pipeline=pipe) is None
    assert conn.xlen(KEY) == 0  # nothing sent until the caller executes its pipeline

    pipe.execute()
    assert conn.get("state") == b"done"
    assert [e.job_id for e in stream.read()] == ["job-1"]


@pytest.mark.redis
def test_a_connection_that_decodes_responses_reads_the_same_events(redis_url: str) -> None:
    sent = event(1, error="boom")
    with redis.Redis.from_url(redis_url, decode_responses=True) as text_conn:
        stream = EventStream(text_conn, KEY)
        entry_id = stream.append(sent)

        assert stream.read() == [sent.model_copy(update={"id": entry_id})]
        assert stream.latest_id() == entry_id


@pytest.mark.redis
def test_entries_that_are_not_events_are_skipped_by_readers(
    conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    stream = EventStream(conn, KEY)
    stream.append(event(1))
    conn.xadd(KEY, {"kind": "from-a-newer-version"})
    stream.append(event(2))

    assert [e.job_id for e in stream.read()] == ["job-1", "job-2"]
    assert "not an event" in caplog.text
    with following(stream, after=ZERO_ID) as follower:
        follower.wait_for_count(2)
    assert follower.job_ids() == ["job-1", "job-2"]


@pytest.mark.redis
def test_follow_carries_on_after_its_connections_are_dropped(conn: redis.Redis, redis_url: str) -> None:
    # Iterated here, not in a thread: redis-py cannot disconnect a pool while another thread reads from it.
    writer = EventStream(conn, KEY)
    with redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0)) as reader_conn:
        events = EventStream(reader_conn, KEY).follow(block_ms=50)
        received = []
        for batch in range(3):
            for n in range(batch * 4, batch * 4 + 4):
                writer.append(event(n))
            received += [next(events).job_id for _ in range(3)]  # stop mid-batch, then drop the connection
            reader_conn.connection_pool.disconnect()
            received.append(next(events).job_id)

    assert received == [f"job-{n}" for n in range(12)]


@pytest.mark.redis
def test_follow_resumes_after_redis_was_unreachable_without_gaps_or_repeats(
    conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forgejobs.events")
    kwargs = conn.connection_pool.connection_kwargs
    proxy = FlakyProxy(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379))
    writer = EventStream(conn, KEY)
    reader_conn = redis.Redis(port=proxy.port, db=kwargs.get("db", 0), retry=Retry(NoBackoff(), 0))
    try:
        with following(EventStream(reader_conn, KEY)) as follower:
            for n in range(5):
                writer.append(event(n))
            follower.wait_for_count(5)

            proxy.cut()
            wait_for(lambda: "connection lost" in caplog.text, timeout=3, what="follow to notice the outage")
            for n in range(5, 10):
                writer.append(event(n))  # while the reader cannot reach Redis
            proxy.restore()
            for n in range(10, 15):
                writer.append(event(n))
            follower.wait_for_count(15)
    finally:
        reader_conn.close()
        proxy.close()

    assert follower.job_ids() == [f"job-{n}" for n in range(15)]
    ids = [e.id for e in follower.received]
    assert ids == sorted(set(ids), key=lambda i: tuple(map(int, str(i).split("-"))))
    assert "reconnected" in caplog.text


# Hooks


def test_hooks_run_in_process_for_their_kind_in_registration_order() -> None:
    hooks = Hooks()
    calls: list[str] = []

    @hooks.on_completed
    def first(e: Event) -> None:
        calls.append(f"first {e.job_id}")

    hooks.on(EventKind.COMPLETED, lambda e: calls.append(f"second {e.job_id}"))
    hooks.on_failed(lambda e: calls.append(f"failed {e.job_id}"))
    hooks.on_any(lambda e: calls.append(f"any {e.kind}"))

    hooks.emit(event(1, kind=EventKind.COMPLETED))
    hooks.emit(event(2, kind=EventKind.STARTED))

    assert calls == ["first job-1", "second job-1", "any completed", "any started"]
    assert first(event(3)) is None  # the decorator returns the function itself


def test_a_hook_that_raises_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    seen: list[str] = []

    @hooks.on_dead_lettered
    def broken(e: Event) -> None:
        raise RuntimeError("pager is down")

    hooks.on_dead_lettered(lambda e: seen.append(e.job_id))

    hooks.emit(event(1, kind=EventKind.DEAD_LETTERED))

    assert seen == ["job-1"]
    assert "broken failed on dead_lettered of WelcomeEmail job-1" in caplog.text
    assert "pager is down" in caplog.text


def test_a_hook_for_an_unknown_kind_is_refused_when_registered() -> None:
    with pytest.raises(ValueError):
        Hooks().on("complete", print)
