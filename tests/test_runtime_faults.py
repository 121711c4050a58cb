"""The runtime under faults: workers SIGKILLed at random points of their loop, delayed jobs falling due
while the only worker is replaced, and hostile records written straight into a queue's keys.

Real `forgejobs worker` processes on a real Redis; the handlers note what they did in files (see
`tests/samplejobs/limits.py`).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import shlex
import signal
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Reason, Status
from forgejobs.deadletter import DeadLetter
from forgejobs.keys import QueueKeys
from forgejobs.runtime.worker import slot_pid
from tests.conftest import WorkerProcess, family, leftovers, wait_for
from tests.samplejobs.basic import Doomed, Echo
from tests.samplejobs.limits import Tally

pytestmark = pytest.mark.redis

StartWorker = Callable[..., WorkerProcess]

CHAOS = QueueKeys("forgejobs", "chaos")
FAST = QueueKeys("forgejobs", "fast")
LEASE_ENV = {"FORGEJOBS_STALL_TIMEOUT": "2"}


def lines(path: Path) -> list[list[str]]:
    """The handler notes: `[event, job id, attempt, pid, time, ...]` per line."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def lease_pids(conn: redis.Redis, keys: QueueKeys) -> set[int]:
    """The processes holding leases on a queue (a slot's id is `<host>.<pid>.<hex6>/<queue>/<index>/<gen>`)."""
    return {slot_pid(m) for m in conn.zrange(keys.workers, 0, -1)}


# -- 1. kills at random points of the loop ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_workers_killed_at_random_points_of_their_loop_lose_no_job(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path, mode: str
) -> None:
    """Two workers (4 slots each, lease 2 s) run 300 short jobs while one of them, chosen at random among
    those serving, is SIGKILLed (every process of it) every 0.2-0.6 s, 8 times, and replaced at once. Every
    job ends SUCCEEDED, nothing is left in flight, every job completed a run at least once (at-least-once:
    a run that finished but whose outcome was not recorded before the kill runs again)."""
    rng = random.Random(f"kills-{mode}")
    path = tmp_path / "tally.log"
    args = ("--queues", "chaos", "--concurrency", "4", *(["--processes"] if mode == "processes" else []))
    workers = [start_worker(*args, env=LEASE_ENV, ready=False) for _ in range(2)]

    def serving() -> list[WorkerProcess]:
        leased = lease_pids(conn, CHAOS)
        return [w for w in workers if family(w.pid) & leased]

    wait_for(lambda: len(serving()) == 2, timeout=20, what="both workers to serve")
    payloads = [{"path": str(path), "seconds": round(rng.uniform(0.0, 0.08), 3)} for _ in range(300)]
    handles = Tally.enqueue_many(payloads)
    ids = {h.id for h in handles}

    kills: list[tuple[float, int, int]] = []  # (seconds since the enqueue, processes killed, jobs unfinished)
    started = time.monotonic()
    for _ in range(8):
        time.sleep(rng.uniform(0.2, 0.6))  # the kill's moment (random), not a synchronisation
        victim = rng.choice(wait_for(serving, timeout=20, what="a worker serving the queue"))  # type: ignore[arg-type]
        doomed = family(victim.pid)  # before the kill: orphaned children would be reparented
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        victim.wait(10)
        kills.append((time.monotonic() - started, len(doomed), 300 - int(conn.zcard(CHAOS.done))))
        workers.remove(victim)
        workers.append(start_worker(*args, env=LEASE_ENV, ready=False))

    wait_for(
        lambda: conn.zcard(CHAOS.done) == 300 and client.backend.pending(["chaos"]) == 0,
        timeout=45,
        what="every job to finish",
    )
    recovered = time.monotonic() - started
    notes = lines(path)
    starts = Counter(n[1] for n in notes if n[0] == "start")
    ends = Counter(n[1] for n in notes if n[0] == "end")
    results = Counter(int(h.result()) for h in handles)  # the attempt that succeeded
    print(
        f"\n{mode}: {len(kills)} kills at {', '.join(f'{t:.1f}s' for t, _, _ in kills)} "
        f"({sum(n for _, n, _ in kills)} processes); jobs unfinished at each kill: {[n for _, _, n in kills]}; "
        f"all done {recovered:.1f}s after the enqueue"
        f"\nstarted more than once: {sum(1 for n in starts.values() if n > 1)}; "
        f"completed more than once: {sum(1 for n in ends.values() if n > 1)}; "
        f"succeeded on attempt: {dict(sorted(results.items()))}"
    )

    assert sum(1 for _, _, unfinished in kills if unfinished > 0) >= 4, "most kills must land while jobs run"
    assert all(h.status() is Status.SUCCEEDED for h in handles)
    assert leftovers(conn, CHAOS) == {}
    assert set(ends) == ids, f"never completed a run: {sorted(ids - set(ends))[:5]}"
    assert set(starts) == ids
    assert client.backend.dead_letters.count() == 0
    assert all(w.process.poll() is None for w in workers)


# -- 2. delayed jobs due while the only worker is replaced ---------------------------------------------


def test_delayed_jobs_due_while_the_only_worker_is_killed_start_on_time_in_its_replacement(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """The only worker is SIGKILLed 0.25 s before the first of several delayed jobs falls due (its waiter
    is blocked on the queue's marker, holding the next due time); a worker started at once must start
    each job within 1.5 s of its due time, and none before it."""
    path = tmp_path / "delayed.log"
    worker = start_worker("--queues", "chaos", env=LEASE_ENV)
    delays = [1.5, 1.6, 1.8, 2.0, 2.4, 3.0]
    handles = [Tally.with_options(delay=d).enqueue(path=str(path)) for d in delays]
    due = {h.id: float(conn.zscore(CHAOS.delayed, h.id)) / 1000 for h in handles}  # enqueue time + delay
    first = min(due.values())

    time.sleep(max(0.0, first - 0.25 - time.time()))  # the moment of the kill, not a synchronisation
    os.kill(worker.pid, signal.SIGKILL)
    killed = time.time()
    worker.wait(10)
    start_worker("--queues", "chaos", env=LEASE_ENV, ready=False)
    assert killed < first and lines(path) == [], "the kill must come before any job is due"

    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in handles), timeout=20, what="the delayed jobs")
    began = {n[1]: float(n[4]) for n in lines(path) if n[0] == "start"}
    late = {h.id[:8]: round(began[h.id] - due[h.id], 3) for h in handles}
    print(f"\nkilled {first - killed:.2f}s before the first due time; start minus due per job: {late}")
    for h in handles:
        assert began[h.id] >= due[h.id] - 0.005, f"{h.id} started {due[h.id] - began[h.id]:.3f}s before due"
        assert began[h.id] <= due[h.id] + 1.5, f"{h.id} started {began[h.id] - due[h.id]:.3f}s after due"


# -- 3. hostile records --------------------------------------------------------------------------------


class _Boom:
    """Unpickling this runs a shell command (as an RQ job's pickled data could)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def push(conn: redis.Redis, job_id: bytes | str) -> None:
    """Put an id on the fast queue's priority-5 wait list, as enqueue.lua would (list, then marker)."""
    conn.rpush(FAST.wait(5), job_id)
    conn.zadd(FAST.marker, {"0": 0})


def raw_key(job_id: bytes | str) -> bytes:
    return FAST.job_bytes(job_id if isinstance(job_id, bytes) else job_id.encode())


def finish_after(client: Client, worker: WorkerProcess) -> None:
    """Enqueue a normal job behind the hostile ones; it runs and succeeds in the same worker."""
    handle = Echo.enqueue(text="after the hostile records")
    assert handle.result(timeout=20).text == "after the hostile records"
    assert worker.process.poll() is None, f"the worker died:\n{worker.log()}"


def corrupt_letter(client: Client, job_id: str) -> DeadLetter:
    record = client.dead_letter(job_id)
    assert record.reason is Reason.CORRUPT, record
    assert record.queue == "fast"
    assert any(r.id == job_id for r in client.backend.dead_letters.recent())
    return record


def test_hostile_records_end_as_corrupt_dead_letters_and_the_loop_goes_on(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """(a) a non-UTF-8 id with no job hash, (b) job keys of the wrong type, (c) a hash with no envelope,
    (e) an RQ-style hash with pickled data naming os.system: each is dead-lettered as `corrupt`, with the
    bytes it had, none is executed, and the worker goes on to run a normal job queued behind them."""
    worker = start_worker("--queues", "fast")
    marker = tmp_path / "pwned"

    # (a) not UTF-8, nothing stored under it
    push(conn, b"\xff\xfe-bad")
    # (b) a string where the job hash should be
    conn.set(raw_key("as-string"), b"plain text, not a hash")
    push(conn, "as-string")
    # (c) a hash without the `d` (envelope) field
    conn.hset(raw_key("no-envelope"), mapping={"p": "5", "s": "queued", "note": "kept bytes"})
    push(conn, "no-envelope")
    # (c') a `d` field that is not an envelope
    conn.hset(raw_key("junk-envelope"), mapping={"d": b"\x80\x04not json", "p": "5", "s": "queued"})
    push(conn, "junk-envelope")
    # (e) what RQ stored for a job: zlib(pickle(...)) in `data`, and a function to import
    data = zlib.compress(pickle.dumps(_Boom(marker)))
    conn.hset(raw_key("rq-style"), mapping={"data": data, "func": "os.system", "origin": "fast", "status": "queued"})
    push(conn, "rq-style")

    finish_after(client, worker)

    record = corrupt_letter(client, "bytes:" + b"\xff\xfe-bad".hex())  # an id that is not UTF-8, as shown
    assert "no envelope" in record.error
    record = corrupt_letter(client, "as-string")
    assert "string" in record.error and record.raw is not None and "plain text, not a hash" in record.raw
    record = corrupt_letter(client, "no-envelope")
    assert record.raw is not None and "kept bytes" in record.raw and "note" in record.raw
    record = corrupt_letter(client, "junk-envelope")
    assert record.raw is not None and "not json" in record.raw
    record = corrupt_letter(client, "rq-style")
    assert record.raw is not None and "os.system" in record.raw and "data" in record.raw
    assert not marker.exists(), "the RQ-style record was unpickled or executed"

    for job_id in (b"\xff\xfe-bad", b"as-string", b"no-envelope", b"junk-envelope", b"rq-style"):
        assert conn.hget(FAST.job_bytes(job_id), "s") == b"failed", job_id
        assert conn.zscore(FAST.failed, job_id) is not None, job_id
    assert leftovers(conn, FAST) == {}
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize(
    "how",
    [
        "list on the wait list",
        "string via the delayed set",
        "binary hash field",
    ],
)
def test_a_hostile_record_keeps_its_bytes_in_the_dead_letter(
    client: Client, conn: redis.Redis, start_worker: StartWorker, how: str
) -> None:
    """More hostile records: a list at the job key; a string at the job key of an id that falls due on the
    delayed set; a hash without an envelope whose field holds bytes that are not UTF-8 (as RQ's zlib'd
    pickles are). Each is dead-lettered as corrupt (it is), and the dead letter holds the bytes that were
    there, recoverably: text where they are UTF-8, `base64:` where they are not (no U+FFFD replacing any)."""
    worker = start_worker("--queues", "fast")
    if how.startswith("list"):
        conn.rpush(raw_key("hostile"), b"first element", b"second element")
        push(conn, "hostile")
        kept = ["first element", "second element"]
    elif how.startswith("string"):
        conn.set(raw_key("hostile"), b"plain text, not a hash")
        conn.zadd(FAST.delayed, {"hostile": int(time.time() * 1000)})
        conn.zadd(FAST.marker, {"d": int(time.time() * 1000)})
        kept = ["plain text, not a hash"]
    else:
        conn.hset(raw_key("hostile"), mapping={"data": b"x\x9c\xff\xfe\x00binary", "func": "os.system"})
        push(conn, "hostile")
        kept = ["os.system", "base64:" + base64.b64encode(b"x\x9c\xff\xfe\x00binary").decode()]

    wait_for(lambda: client.backend.dead_letters.get("hostile"), timeout=10, what="the dead letter")
    finish_after(client, worker)

    record = corrupt_letter(client, "hostile")
    print(f"\n{how}: error {record.error!r}, raw {record.raw!r}")
    assert record.raw is not None and all(text in record.raw for text in kept)
    assert "\ufffd" not in record.raw, "bytes were replaced, not kept"


def test_an_envelope_stored_under_another_id_runs_as_the_stored_id(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """(d) a record whose envelope names another job's id runs as the id it is stored under: `ctx.job_id`
    is the stored id, its dead letter is filed under the stored id, and the other job's dead letter is
    left as it was."""
    path = tmp_path / "forged.jsonl"
    worker = start_worker("--queues", "fast")
    victim = Doomed.enqueue(path=str(path))
    wait_for(lambda: victim.status() is Status.FAILED, timeout=15, what="the victim's dead letter")
    before = client.dead_letter(victim.id)

    template = json.loads(conn.hget(FAST.job(victim.id), "d"))
    forged_doomed = {**template, "id": victim.id, "payload": {"path": str(path)}}
    conn.hset(FAST.job("forged-doomed"), mapping={"d": json.dumps(forged_doomed), "p": "5", "s": "queued"})
    push(conn, "forged-doomed")
    forged_mark = {**template, "id": victim.id, "name": "fast.mark", "payload": {"path": str(path), "label": "m"}}
    conn.hset(FAST.job("forged-mark"), mapping={"d": json.dumps(forged_mark), "p": "5", "s": "queued"})
    push(conn, "forged-mark")

    finish_after(client, worker)

    notes = [json.loads(line) for line in path.read_text().splitlines()]
    assert [n.get("job_id") for n in notes if "label" in n] == ["forged-mark"]  # Mark notes ctx.job_id
    assert conn.hget(FAST.job("forged-mark"), "s") == b"succeeded"
    assert client.dead_letter(victim.id) == before, "the victim's dead letter was overwritten"
    forged = client.dead_letter("forged-doomed")
    assert forged.reason is Reason.UNRECOVERABLE and forged.payload == {"path": str(path)}
    assert {r.id for r in client.backend.dead_letters.recent()} == {victim.id, "forged-doomed"}


def test_a_deeply_nested_envelope_is_dead_lettered_and_does_not_kill_the_slot(
    client: Client, conn: redis.Redis, start_worker: StartWorker
) -> None:
    """(c'') a `d` field of 4 KB of nested JSON arrays: not a readable envelope, so it must end as a
    `corrupt` dead letter like any other, and the slot must go on."""
    worker = start_worker("--queues", "fast", env=LEASE_ENV)
    deep = "[" * 2000 + "]" * 2000
    conn.hset(raw_key("deep"), mapping={"d": deep, "p": "5", "s": "queued"})
    push(conn, "deep")

    finish_after(client, worker)

    wait_for(lambda: client.backend.dead_letters.get("deep"), timeout=8, what="the dead letter of 'deep'")
    assert corrupt_letter(client, "deep").raw == deep
    assert "Traceback" not in worker.log()


def test_a_job_key_of_the_wrong_type_on_the_stalled_list_does_not_block_recovery(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A slot took a record whose job key is a string (fetch.lua hands it out as `corrupt`, in the active hash)
    and a normal job, and its process was SIGKILLed before it recorded either: recovery moves both to the
    stalled list. The normal job must run again and the hostile record must end as a dead letter."""
    conn.set(CHAOS.job("as-string"), b"plain text, not a hash")
    handle = Tally.enqueue(path=str(tmp_path / "tally.log"))
    conn.lrem(CHAOS.wait(5), 0, handle.id)  # what fetch.lua did for the slot: wait list -> active
    conn.hset(CHAOS.active, "as-string", "dead-slot|0")  # the hostile one first: recovery keeps this order
    conn.hset(CHAOS.active, handle.id, "dead-slot|0")  # "dead-slot" holds no lease: it is dead

    worker = start_worker("--queues", "chaos", env=LEASE_ENV)

    assert handle.result(timeout=6) == 2  # attempt 1 stalled with the dead slot
    wait_for(lambda: client.backend.dead_letters.get("as-string"), timeout=5, what="the hostile record's dead letter")
    assert leftovers(conn, CHAOS) == {}
    assert "unreachable" not in worker.log()
