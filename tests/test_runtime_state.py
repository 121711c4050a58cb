"""What a worker process's threads share (forgejobs/runtime/state.py): when a slot counts as live, which
idle slot is woken, the server's clock, and the batched event writer."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from forgejobs.keys import QueueKeys
from forgejobs.runtime.state import STUCK_GRACE, EventBuffer, QueueState, ServerClock, Slot
from forgejobs.specs import QueueSpec


def test_a_slot_is_live_while_its_thread_runs_and_it_is_not_stuck_in_a_job(live_thread: threading.Thread) -> None:
    assert not Slot("fast", 0, "a").alive()  # no thread yet
    finished = threading.Thread(target=lambda: None)
    finished.start()
    finished.join()
    assert not Slot("fast", 0, "a", thread=finished).alive()
    assert not Slot("fast", 0, "a", thread=live_thread, retired=True).alive()
    slot = Slot("fast", 0, "a", thread=live_thread, job_timeout=10.0)
    assert slot.alive()
    slot.job_started = time.monotonic() - (10.0 + STUCK_GRACE - 1)
    assert slot.alive()  # past its timeout, within the grace
    slot.job_started = time.monotonic() - (10.0 + STUCK_GRACE + 1)
    assert not slot.alive()  # stuck: its lease lapses and its job is recovered elsewhere
    assert STUCK_GRACE == 30.0


def queue_state() -> QueueState:
    return QueueState("fast", QueueKeys("forgejobs", "fast"), QueueSpec())


def test_waking_one_idle_slot_wakes_the_one_idle_longest() -> None:
    state = queue_state()
    assert not state.has_idle() and state.wake_one() is False
    first, second = Slot("fast", 0, "a"), Slot("fast", 1, "b")
    state.idle.extend([first, second])
    assert state.has_idle()
    assert state.wake_one() is True
    assert first.wake.is_set() and not second.wake.is_set()
    assert list(state.idle) == [second]
    assert state.wake_one() is True and second.wake.is_set()
    assert not state.has_idle() and state.wake_one() is False


def test_the_server_clock_is_this_host_s_clock_plus_the_offset_last_measured() -> None:
    clock = ServerClock()
    assert abs(clock.now_ms() - time.time() * 1000) < 50
    clock.set_server_ms(time.time() * 1000 + 5000)
    assert abs(clock.now_ms() - (time.time() * 1000 + 5000)) < 50
    clock.set_server_ms(time.time() * 1000 - 2000)
    assert abs(clock.now_ms() - (time.time() * 1000 - 2000)) < 50


class Stream:
    """An event stream that refuses writes while `down` is set, and keeps what it was given."""

    def __init__(self) -> None:
        self.written: list[list[str]] = []
        self.down = False

    def append_many(self, events: list[str]) -> None:
        if self.down:
            raise redis.ConnectionError("Redis went away")
        self.written.append(list(events))


def test_buffered_events_are_written_in_one_batch_in_order() -> None:
    stream = Stream()
    buffer = EventBuffer(stream)  # type: ignore[arg-type]
    buffer.flush()
    buffer.emit([])
    buffer.flush()
    assert stream.written == []  # nothing to write: no call
    buffer.emit(["a", "b"])  # type: ignore[list-item]
    buffer.emit(["c"])  # type: ignore[list-item]
    buffer.flush()
    buffer.flush()
    assert stream.written == [["a", "b", "c"]]


def test_events_a_refused_write_held_go_out_first_with_the_next_flush() -> None:
    stream = Stream()
    buffer = EventBuffer(stream)  # type: ignore[arg-type]
    buffer.emit(["a", "b"])  # type: ignore[list-item]
    stream.down = True
    with pytest.raises(redis.ConnectionError):
        buffer.flush()
    buffer.emit(["c"])  # type: ignore[list-item]
    stream.down = False
    buffer.flush()
    assert stream.written == [["a", "b", "c"]]


def test_events_emitted_while_a_refused_write_was_under_way_are_kept_behind_the_held_ones() -> None:
    stream = Stream()
    buffer = EventBuffer(stream)  # type: ignore[arg-type]

    def refuse_while_a_slot_emits(events: list[str]) -> None:
        buffer.emit(["c"])  # type: ignore[list-item] - another thread's event, during the failed write
        raise redis.ConnectionError("Redis went away")

    buffer.emit(["a", "b"])  # type: ignore[list-item]
    stream.append_many = refuse_while_a_slot_emits  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        buffer.flush()
    del stream.append_many
    buffer.flush()
    assert stream.written == [["a", "b", "c"]]
