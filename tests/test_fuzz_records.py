"""Property tests: hostile job records written straight into a queue's keys.

Hypothesis builds records no client would write (random bytes as the envelope, truncated envelopes, fields of
the wrong type, hashes without an envelope, job keys of the wrong Redis type, ids with odd bytes), pushes them
onto the "fast" queue's wait list and runs an in-process burst worker over them. Every one must end as a dead
letter with a reason that fits, a normal job queued behind them must succeed, nothing may be left in flight,
and the worker must return. `execute` itself is fuzzed without Redis: it never raises on stored bytes.
"""

from __future__ import annotations

import itertools
import json
import logging
import string
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from forgejobs import Client, Reason, Registry, Settings, Status
from forgejobs.deadletter import MemoryDeadLetters
from forgejobs.envelope import Envelope
from forgejobs.execution import DeadLettered, Runtime, execute
from forgejobs.keys import QueueKeys
from forgejobs.runtime.corrupt import shown_id
from forgejobs.worker import Worker
from tests.conftest import SAMPLE_JOBS, SAMPLE_SPECS, leftovers
from tests.helpers import burst
from tests.samplejobs.basic import Echo

FAST = QueueKeys("forgejobs", "fast")
ECHO = Echo.job_name()
CORRUPT = frozenset({Reason.CORRUPT})

_serial = itertools.count()

# -- what a hostile record is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One record to write: how the job key is filled, and which dead-letter reasons fit it."""

    kind: str  # hash, string, list, set, zset, stream, none
    content: Any  # hash: {field: bytes}; string: bytes; list/set: [bytes]; zset: {bytes: float}; stream: [{}]
    reasons: frozenset[Reason]
    what: str


def echo_envelope(**changes: Any) -> dict[str, Any]:
    """A valid Echo envelope as JSON data, with `changes` applied (a value of `...` removes the field)."""
    data = Envelope(id="placeholder", name=ECHO, payload={"text": "x"}).model_dump(mode="json")
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
letters = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
not_an_object = st.one_of(json_scalars, st.lists(json_values, max_size=3))

# Values the envelope's model refuses for each field (no lax coercion can turn them into the right type).
WRONG_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "attempt": st.one_of(letters, st.integers(max_value=0), st.lists(st.integers(), max_size=2), st.none()),
    "payload": not_an_object,
    "name": st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.booleans()),
    "id": st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
    "history": st.one_of(
        st.text(max_size=6),
        st.integers(),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
        st.lists(
            st.one_of(st.integers(), st.text(max_size=4), st.dictionaries(st.text(max_size=4), st.integers())),
            min_size=1,
            max_size=3,
        ),
    ),
    "options": st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=4)),
    "enqueued_at": st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers())),
    "v": st.one_of(letters, st.lists(st.integers(), max_size=2), st.none()),
}
REQUIRED = ("id", "name", "payload")


@st.composite
def wrong_type_envelopes(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.sampled_from(sorted(WRONG_TYPES)), min_size=1, max_size=3, unique=True))
    changes = {field: draw(WRONG_TYPES[field]) for field in fields}
    return json.dumps(echo_envelope(**changes)).encode()


@st.composite
def truncated_envelopes(draw: st.DrawFn) -> bytes:
    whole = json.dumps(echo_envelope(payload={"text": draw(st.text(max_size=20))})).encode()
    return whole[: draw(st.integers(0, len(whole) - 1))]


@st.composite
def missing_field_envelopes(draw: st.DrawFn) -> bytes:
    gone = draw(st.lists(st.sampled_from(REQUIRED), min_size=1, max_size=3, unique=True))
    return json.dumps(echo_envelope(**dict.fromkeys(gone, ...))).encode()


@st.composite
def invalid_payload_envelopes(draw: st.DrawFn) -> bytes:
    """Envelopes that are fine as envelopes, whose payload Echo refuses (no text, text not a string, extras)."""
    payload = draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "text"), json_values, max_size=3))
    mode = draw(st.sampled_from(["no text", "wrong text", "extra"]))
    if mode == "wrong text":
        payload["text"] = draw(st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)))
    elif mode == "extra":
        payload = {"text": "x", draw(st.text(min_size=1, max_size=6).filter(lambda k: k != "text")): 1}
    return json.dumps(echo_envelope(payload=payload)).encode()


@st.composite
def unknown_job_envelopes(draw: st.DrawFn) -> bytes:
    name = draw(st.text(max_size=20).filter(lambda n: n != ECHO))
    return json.dumps(
        echo_envelope(name=name, payload=draw(st.dictionaries(st.text(max_size=4), json_values)))
    ).encode()


random_bytes = st.binary(max_size=64)
not_envelope_json = st.builds(lambda v: json.dumps(v).encode(), not_an_object)

# (strategy for the `d` bytes, the reasons that fit)
ENVELOPES: list[tuple[st.SearchStrategy[bytes], frozenset[Reason], str]] = [
    (random_bytes, CORRUPT, "random bytes"),
    (truncated_envelopes(), CORRUPT, "truncated envelope"),
    (wrong_type_envelopes(), CORRUPT, "wrong field types"),
    (missing_field_envelopes(), CORRUPT, "missing envelope fields"),
    (not_envelope_json, CORRUPT, "JSON that is not an object"),
    (invalid_payload_envelopes(), frozenset({Reason.INVALID_PAYLOAD}), "payload Echo refuses"),
    (unknown_job_envelopes(), frozenset({Reason.UNKNOWN_JOB}), "unknown job name"),
]
hostile_envelopes = st.one_of(
    *[st.tuples(strategy, st.just(reasons), st.just(what)) for strategy, reasons, what in ENVELOPES]
)

# Not "d" (the envelope) nor "x" (a cancel asked for while the job ran: fetch.lua records such a record as
# cancelled when it is taken, before looking at its envelope, so it is not dead-lettered).
field_names = st.binary(min_size=1, max_size=6).filter(lambda f: f not in (b"d", b"x"))
members = st.binary(min_size=1, max_size=12)


@st.composite
def hostile_records(draw: st.DrawFn) -> Hostile:
    kind = draw(st.sampled_from(["envelope", "no d", "string", "list", "set", "zset", "stream", "none"]))
    if kind == "envelope":
        d, reasons, what = draw(hostile_envelopes)
        extra = draw(st.dictionaries(field_names.filter(lambda f: f not in (b"ck", b"cl")), members, max_size=2))
        return Hostile("hash", {b"p": b"5", b"s": b"queued", **extra, b"d": d}, reasons, what)
    if kind == "no d":
        fields = draw(st.dictionaries(field_names.filter(lambda f: f not in (b"ck", b"cl")), members, max_size=4))
        return Hostile("hash", {b"p": b"5", b"s": b"queued", **fields}, CORRUPT, "hash without d")
    if kind == "string":
        return Hostile("string", draw(st.binary(max_size=40)), CORRUPT, "a string at the job key")
    if kind in ("list", "set"):
        return Hostile(kind, draw(st.lists(members, min_size=1, max_size=4)), CORRUPT, f"a {kind} at the job key")
    if kind == "zset":
        scores = st.floats(allow_nan=False, allow_infinity=False, width=32)
        return Hostile(kind, draw(st.dictionaries(members, scores, min_size=1, max_size=4)), CORRUPT, "a zset")
    if kind == "stream":
        entries = st.dictionaries(members, members, min_size=1, max_size=3)
        return Hostile(kind, draw(st.lists(entries, min_size=1, max_size=3)), CORRUPT, "a stream")
    return Hostile("none", None, CORRUPT, "an id with no record")


# Odd bytes for ids: anything but a backslash (b"\\xff" and b"\xff" would both be shown as "\\xff").
odd_id_bytes = st.binary(max_size=12).map(lambda b: b.replace(b"\\", b""))


def write(connection: redis.Redis, key: bytes, record: Hostile) -> None:
    conn: Any = connection  # redis-py's stubs want str keys; these are bytes on purpose
    if record.kind == "hash":
        conn.hset(key, mapping=record.content)
    elif record.kind == "string":
        conn.set(key, record.content)
    elif record.kind == "list":
        conn.rpush(key, *record.content)
    elif record.kind == "set":
        conn.sadd(key, *record.content)
    elif record.kind == "zset":
        conn.zadd(key, record.content)
    elif record.kind == "stream":
        for entry in record.content:
            conn.xadd(key, entry)


# -- 1. through a real worker ----------------------------------------------------------------------------


@pytest.mark.redis
@fuzz_settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(st.tuples(hostile_records(), odd_id_bytes, st.integers(1, 10)), min_size=30, max_size=30),
)
def test_hostile_records_are_dead_lettered_and_the_worker_goes_on(
    batch: list[tuple[Hostile, bytes, int]],
    client: Client,
    conn: redis.Redis,
    settings: Settings,
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.clear()
    serial = next(_serial)
    written: list[tuple[bytes, Hostile]] = []
    for index, (record, odd, priority) in enumerate(batch):
        job_id = f"hostile-{serial}-{index}-".encode() + odd
        write(conn, FAST.job_bytes(job_id), record)
        conn.rpush(FAST.wait(priority), job_id)
        written.append((job_id, record))
    conn.zadd(FAST.marker, {"0": 0})
    handle = Echo.with_options(priority=10).enqueue(text=f"after batch {serial}")

    worker = Worker(settings, registry, queues=["fast"], connection=conn, resources=object())
    with caplog.at_level(logging.ERROR):
        stats = burst(worker)  # returns: the worker did not crash

    assert handle.status() is Status.SUCCEEDED
    assert handle.result(timeout=5).text == f"after batch {serial}"
    for job_id, record in written:
        shown = shown_id(job_id)
        letter = client.backend.dead_letters.get(shown)
        assert letter is not None, f"{shown!r} ({record.what}) was not dead-lettered"
        assert letter.reason in record.reasons, (shown, record.what, letter.reason, letter.error)
        assert letter.error, (shown, record.what)
        assert letter.queue == "fast"
        assert conn.zscore(FAST.failed, job_id) is not None, (shown, record.what)
    assert leftovers(conn, FAST) == {}
    assert stats.counts["dead"] == len(written), stats.counts
    assert stats.counts["succeeded"] == 1, stats.counts
    crashes = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not crashes, [r.getMessage() for r in crashes]


@pytest.mark.redis
@fuzz_settings(
    max_examples=3,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(limit=st.sampled_from([b"0", b"-1", b"-100"]))
@example(limit=b"0")
def test_a_record_with_a_concurrency_limit_below_one_is_not_stranded(
    limit: bytes, client: Client, conn: redis.Redis, settings: Settings, registry: Registry
) -> None:
    raw: Any = conn  # bytes keys on purpose
    job_id = f"limited-{next(_serial)}".encode()
    envelope = json.dumps(echo_envelope(id=job_id.decode())).encode()
    raw.hset(FAST.job_bytes(job_id), mapping={"d": envelope, "p": "5", "s": "queued", "ck": b"k", "cl": limit})
    conn.rpush(FAST.wait(5), job_id)
    conn.zadd(FAST.marker, {"0": 0})
    burst(Worker(settings, registry, queues=["fast"], connection=conn, resources=object()))
    settled = raw.hget(FAST.job_bytes(job_id), "s") in (b"succeeded", b"failed")
    assert settled or client.backend.dead_letters.get(job_id.decode()) is not None, "neither run nor dead-lettered"
    assert leftovers(conn, FAST) == {}


# -- 2. execute, without Redis -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    registry = Registry.load(Settings(jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS))
    return Runtime(registry=registry, dead_letters=MemoryDeadLetters())


def looks_like_an_envelope(raw: bytes) -> bool:
    try:
        Envelope.model_validate_json(raw)
    except ValueError:
        return False
    return True


@fuzz_settings(max_examples=300, deadline=None, database=None)
@given(raw=st.one_of(random_bytes, st.binary(max_size=400), not_envelope_json, truncated_envelopes()))
def test_execute_dead_letters_any_non_envelope_as_corrupt(raw: bytes, runtime: Runtime) -> None:
    job_id = f"unit-{next(_serial)}"
    outcome = execute(raw, runtime, job_id=job_id, queue="fast")  # never raises
    assert not looks_like_an_envelope(raw)
    assert isinstance(outcome, DeadLettered), outcome
    assert outcome.record.reason is Reason.CORRUPT
    assert outcome.record.id == job_id and outcome.record.queue == "fast"
    assert outcome.record.raw == raw.decode("utf-8", "replace")
    assert runtime.dead_letters.get(job_id) == outcome.record


@fuzz_settings(max_examples=300, deadline=None, database=None)
@given(case=hostile_envelopes, as_text=st.booleans())
def test_execute_dead_letters_hostile_envelopes_with_a_fitting_reason(
    case: tuple[bytes, frozenset[Reason], str], as_text: bool, runtime: Runtime
) -> None:
    raw, reasons, what = case
    job_id = f"unit-{next(_serial)}"
    stored: str | bytes = raw.decode("utf-8", "replace") if as_text else raw
    outcome = execute(stored, runtime, job_id=job_id, queue="fast")  # never raises
    assert isinstance(outcome, DeadLettered), (what, outcome)
    assert outcome.record.reason in reasons, (what, outcome.record.reason, outcome.record.error)
    assert outcome.record.id == job_id, "a dead letter is filed under the id the record is stored under"
    assert runtime.dead_letters.get(job_id) == outcome.record
