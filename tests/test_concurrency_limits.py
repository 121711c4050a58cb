"""Concurrency limits across worker processes: a queue's `global_concurrency`, and a job type's per-key
`concurrency_key`/`concurrency_limit`. Real `forgejobs worker` processes on a real Redis; each handler notes
its start and end (see `tests/samplejobs/limits.py`) and the test replays the notes to find how many ran at
any instant."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Context, Job, OptionsError, Reason, Status
from forgejobs.keys import QueueKeys
from forgejobs.runtime.worker import slot_pid
from tests.conftest import WorkerProcess, wait_for
from tests.samplejobs.limits import Gated, OrgTask

StartWorker = Callable[..., WorkerProcess]

GATE = QueueKeys("forgejobs", "gate")
PERORG = QueueKeys("forgejobs", "perorg")


def notes(path: Path) -> list[list[str]]:
    """`[event, job id, attempt, pid, time, (org)]` per line."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def peak(rows: Iterable[list[str]]) -> int:
    """The most jobs between their start and end notes at any one instant (an end at the same instant as a
    start counts first: the handler's interval lies strictly inside the job's place in the active hash)."""
    changes = sorted((float(r[4]), 0 if r[0] == "end" else 1) for r in rows)
    running = most = 0
    for _, kind in changes:
        running += 1 if kind else -1
        most = max(most, running)
    return most


def lease_pids(conn: redis.Redis, keys: QueueKeys) -> set[int]:
    return {slot_pid(m) for m in conn.zrange(keys.workers, 0, -1)}


def ck_keys(conn: redis.Redis, keys: QueueKeys) -> list[bytes]:
    """The per-key run sets and parked lists still in Redis (none once every keyed job has ended)."""
    return sorted(conn.scan_iter(match=f"{keys.ck_prefix}*"))


# -- global_concurrency --------------------------------------------------------------------------------


@pytest.mark.redis
def test_global_concurrency_holds_across_worker_processes(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """`gate` says concurrency 3, global_concurrency 2. Two workers, one with 3 thread slots and one with 3
    child processes (--processes), share 24 jobs of 0.12 s: never more than 2 run at once, yet 2 do."""
    path = tmp_path / "gate.log"
    start_worker("--queues", "gate")
    start_worker("--queues", "gate", "--processes")
    wait_for(lambda: conn.zcard(GATE.workers) == 6, timeout=20, what="six slots")

    handles = Gated.enqueue_many([{"path": str(path), "seconds": 0.12}] * 24)
    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in handles), timeout=30, what="every job")

    rows = notes(path)
    pids = {r[3] for r in rows}
    print(f"\nat most {peak(rows)} at once; run by {len(pids)} process(es)")
    assert sorted(r[1] for r in rows if r[0] == "end") == sorted(h.id for h in handles)
    assert peak(rows) == 2
    assert conn.hlen(GATE.active) == 0


# -- per-key limits ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_per_key_limit_holds_across_processes_and_no_key_starves(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """OrgTask: at most 2 per org at once. Two workers of 4 slots; 3 orgs x 6 tasks of 0.25 s, enqueued org by
    org (the first org's tasks ahead of every other's). Per org never more than 2 run at once; the orgs run
    side by side (a full org does not block the others: more than 2 run at once overall, and every org's
    first task starts before any org's last task ends); every task finishes; no key is left behind."""
    path = tmp_path / "orgs.log"
    start_worker("--queues", "perorg")
    start_worker("--queues", "perorg")
    wait_for(lambda: conn.zcard(PERORG.workers) == 8, timeout=20, what="eight slots")

    orgs = ["acme", "globex", "initech"]
    handles = OrgTask.enqueue_many([{"path": str(path), "org": org, "seconds": 0.25} for org in orgs for _ in range(6)])
    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in handles), timeout=30, what="every task")

    rows = notes(path)
    by_org: dict[str, list[list[str]]] = defaultdict(list)
    for row in rows:
        by_org[row[5]].append(row)
    first_start = {org: min(float(r[4]) for r in by_org[org] if r[0] == "start") for org in orgs}
    last_end = {org: max(float(r[4]) for r in by_org[org] if r[0] == "end") for org in orgs}
    origin = min(first_start.values())
    firsts = [round(first_start[o] - origin, 2) for o in orgs]
    lasts = [round(last_end[o] - origin, 2) for o in orgs]
    print(
        f"\nper org at most {[peak(by_org[o]) for o in orgs]} at once, {peak(rows)} overall; "
        f"first starts {firsts}, last ends {lasts}"
    )
    assert sorted(r[1] for r in rows if r[0] == "end") == sorted(h.id for h in handles)
    assert all(peak(by_org[org]) <= 2 for org in orgs)
    assert all(peak(by_org[org]) == 2 for org in orgs)  # the limit is 2, not 1
    assert peak(rows) >= 4
    assert max(first_start.values()) < min(last_end.values()), "an org waited for another to finish"
    assert ck_keys(conn, PERORG) == []


@pytest.mark.redis
def test_a_killed_worker_gives_back_its_places_under_a_per_key_limit(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A worker runs an org's 2 long tasks (the limit) and holds its 4 others parked; it is SIGKILLed. Once
    its lease (2 s) runs out the 2 long tasks are recovered (dead-lettered as stalled: one attempt), their
    places go back, and the 4 parked tasks run in the replacement worker, 2 at a time."""
    path = tmp_path / "orgs.log"
    env = {"FORGEJOBS_STALL_TIMEOUT": "2"}
    worker = start_worker("--queues", "perorg", env=env)
    long = OrgTask.enqueue_many([{"path": str(path), "org": "acme", "seconds": 60}] * 2)
    short = OrgTask.enqueue_many([{"path": str(path), "org": "acme", "seconds": 0.1}] * 4)
    wait_for(lambda: len(notes(path)) == 2, timeout=15, what="the two long tasks to start")
    wait_for(lambda: conn.llen(f"{PERORG.ck_prefix}acme:wait") == 4, timeout=5, what="the four others parked")
    assert worker.pid in lease_pids(conn, PERORG)

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    start_worker("--queues", "perorg", env=env)

    wait_for(lambda: all(h.status() is Status.SUCCEEDED for h in short), timeout=15, what="the parked tasks")
    wait_for(lambda: all(h.status() is Status.FAILED for h in long), timeout=5, what="the long tasks' dead letters")
    assert {client.dead_letter(h.id).reason for h in long} == {Reason.STALLED}
    assert peak(r for r in notes(path) if r[1] in {h.id for h in short}) == 2
    assert ck_keys(conn, PERORG) == []


# -- declarations --------------------------------------------------------------------------------------


def test_a_concurrency_key_needs_a_limit_and_a_field() -> None:
    with pytest.raises(OptionsError, match="NoLimit: give concurrency_key and concurrency_limit together"):

        class NoLimit(Job, queue="perorg", concurrency_key="org"):
            org: str

            def perform(self, ctx: Context) -> None: ...

    with pytest.raises(OptionsError, match="NoKey: give concurrency_key and concurrency_limit together"):

        class NoKey(Job, queue="perorg", concurrency_limit=2):
            org: str

            def perform(self, ctx: Context) -> None: ...

    with pytest.raises(OptionsError, match="NotAField: concurrency_key 'org' is not one of its fields"):

        class NotAField(Job, queue="perorg", concurrency_key="org", concurrency_limit=2):
            organisation: str

            def perform(self, ctx: Context) -> None: ...

    with pytest.raises(OptionsError, match="ZeroLimit: option concurrency_limit=0"):

        class ZeroLimit(Job, queue="perorg", concurrency_key="org", concurrency_limit=0):
            org: str

            def perform(self, ctx: Context) -> None: ...

    class ByFunction(Job, queue="perorg", concurrency_key=lambda job: job.org.lower(), concurrency_limit=1):
        org: str

        def perform(self, ctx: Context) -> None: ...

    assert ByFunction.job_options().concurrency_limit == 1


# -- parked jobs seen from the admin side -------------------------------------------------------------


def park_two(client: Client, conn: redis.Redis, start_worker: StartWorker, path: Path) -> list:  # type: ignore[type-arg]
    """Two acme tasks running (the limit) for 1.5 s, and two more parked behind them; returns the parked ones."""
    start_worker("--queues", "perorg")
    OrgTask.enqueue_many([{"path": str(path), "org": "acme", "seconds": 1.5}] * 2)
    parked = OrgTask.enqueue_many([{"path": str(path), "org": "acme", "seconds": 0}] * 2)
    wait_for(lambda: conn.llen(f"{PERORG.ck_prefix}acme:wait") == 2, timeout=15, what="two tasks parked")
    return parked


@pytest.mark.redis
def test_parked_jobs_count_as_waiting(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    park_two(client, conn, start_worker, tmp_path / "orgs.log")
    row = client.backend.counts(["perorg"])[0]
    assert (row.waiting, row.running) == (2, 2)


@pytest.mark.redis
def test_drain_deletes_parked_jobs_too(
    client: Client, conn: redis.Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    parked = park_two(client, conn, start_worker, tmp_path / "orgs.log")
    drained = client.drain("perorg")
    assert conn.llen(f"{PERORG.ck_prefix}acme:wait") == 0
    assert [h.status() for h in parked] == [Status.UNKNOWN, Status.UNKNOWN]
    assert drained == 2
