"""Workflows on Redis with real worker subprocesses: a diamond, fan-out and fan-in, each failure policy,
cancel mid-run, a second start with the same key, and workers SIGKILLed while a wide fan-out runs; then
the recovery pass, which repairs each half-done state a killed worker can leave (an outcome left in the
outbox, a released step never enqueued, a step job that ended or vanished without reporting, a timeout).

The job and workflow classes are this module's own (FORGEJOBS_JOBS=tests.test_workflow_redis), on queues
the test's own spec folder declares. Each job appends a line to a notes file, so a test counts runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from forgejobs import Client, Context, Job, Registry, Settings, Unrecoverable, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.events import EventStream
from forgejobs.keys import QueueKeys
from forgejobs.runtime.cancel import cancel
from forgejobs.runtime.worker import Worker
from forgejobs.workflows import Step, Workflow, chain, group
from forgejobs.workflows.engine import Engine, job_id
from forgejobs.workflows.run import WorkflowRun
from forgejobs.workflows.worker import WorkerWorkflows
from tests.conftest import WorkerProcess
from tests.helpers import ROOT, notes, wait_for

pytestmark = pytest.mark.redis


def note(path: str, what: str, value: object = None) -> None:
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"what": what, "value": value, "pid": os.getpid()}) + "\n")


class Order(BaseModel):
    notes: str
    org_ids: list[str] = []
    fail_org: str = ""
    hold: float = 0.0


class Account(BaseModel):
    org: str
    seats: int


class Open(Job, queue="wfr"):
    notes: str

    def perform(self, ctx: Context[None]) -> Account:
        note(self.notes, "open")
        return Account(org="org_1", seats=3)


class Greet(Job, queue="wfr-mail"):
    notes: str
    org: str

    def perform(self, ctx: Context[None]) -> str:
        note(self.notes, "greet", self.org)
        return f"hello {self.org}"


class Count(Job, queue="wfr"):
    notes: str
    seats: int

    def perform(self, ctx: Context[None]) -> int:
        note(self.notes, "count", self.seats)
        return self.seats * 10


class Close(Job, queue="wfr"):
    notes: str
    greeting: str
    total: int

    def perform(self, ctx: Context[None]) -> str:
        note(self.notes, "close", [self.greeting, self.total])
        return f"{self.greeting}: {self.total}"


class Charge(Job, queue="wfr", attempts=1):
    notes: str
    org_id: str
    fail_org: str = ""
    hold: float = 0.0

    def perform(self, ctx: Context[None]) -> int:
        note(self.notes, "charge", self.org_id)
        if self.hold and ctx.wait_cancelled(self.hold):
            return -1
        if self.org_id == self.fail_org:
            raise Unrecoverable(f"card declined for {self.org_id}")
        return int(self.org_id.rsplit("_", 1)[-1])


class Refund(Job, queue="wfr"):
    notes: str
    org_id: str

    def perform(self, ctx: Context[None]) -> None:
        note(self.notes, "refund", self.org_id)


class Sum(Job, queue="wfr"):
    notes: str
    amounts: list[int | None]

    def perform(self, ctx: Context[None]) -> int:
        note(self.notes, "sum", self.amounts)
        return sum(a or 0 for a in self.amounts)


class Strict(Job, queue="wfr"):
    notes: str
    amounts: list[int]

    def perform(self, ctx: Context[None]) -> int:
        note(self.notes, "strict", len(self.amounts))
        return sum(self.amounts)


class Diamond(Workflow, input=Order, name="redis_diamond"):
    open = Step(Open, {"notes": "input.notes"})
    greet = Step(Greet, {"notes": "input.notes", "org": "steps.open.output.org"})
    count = Step(Count, {"notes": "input.notes", "seats": "steps.open.output.seats"})
    close = Step(Close, {"notes": "input.notes", "greeting": "steps.greet.output", "total": "steps.count.output"})
    flow = chain(open, group(greet, count), close)


def _charge(policy: str = "fail", *, compensate: bool = False) -> Step:
    return Step(
        Charge,
        {"notes": "input.notes", "org_id": "item", "fail_org": "input.fail_org", "hold": "input.hold"},
        for_each="input.org_ids",
        on_failure=policy,  # type: ignore[arg-type]
        compensate=Refund if compensate else None,
    )


class Pay(Charge, queue="wfr", attempts=5, max_stalled=50):
    """`Charge` that survives its worker being killed, however often: a stalled job runs again."""


class Chaos(Workflow, input=Order, name="redis_chaos"):
    pay = Step(Pay, {"notes": "input.notes", "org_id": "item", "hold": "input.hold"}, for_each="input.org_ids")
    total = Step(Strict, {"notes": "input.notes", "amounts": "steps.pay.output"}, after=[pay])


class FanIn(Workflow, input=Order, name="redis_fan_in"):
    charge = _charge()
    total = Step(Strict, {"notes": "input.notes", "amounts": "steps.charge.output"}, after=[charge])


class Lenient(Workflow, input=Order, name="redis_lenient"):
    charge = _charge("continue")
    total = Step(Sum, {"notes": "input.notes", "amounts": "steps.charge.output"}, after=[charge])


class Saga(Workflow, input=Order, name="redis_saga"):
    charge = _charge(compensate=True)
    total = Step(Strict, {"notes": "input.notes", "amounts": "steps.charge.output"}, after=[charge])


MODULE = "tests.test_workflow_redis"


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "queues.yaml").write_text("queues:\n  wfr: {concurrency: 6}\n  wfr-mail: {concurrency: 2}\n")
    return folder


@pytest.fixture
def wf_settings(redis_url: str, specs: Path) -> Settings:
    return Settings(redis_url=redis_url, jobs=MODULE, specs=specs, stall_timeout=2)


@pytest.fixture
def wf_client(conn: redis.Redis, wf_settings: Settings) -> Iterator[Client]:
    c = Client(RedisBackend(conn), Registry.load(wf_settings))
    previous = set_client(c)
    yield c
    set_client(previous)


@pytest.fixture
def start_worker(redis_url: str, specs: Path, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    env = {
        **os.environ,
        "FORGEJOBS_REDIS_URL": redis_url,
        "FORGEJOBS_JOBS": MODULE,
        "FORGEJOBS_SPECS": str(specs),
        "FORGEJOBS_STALL_TIMEOUT": "2",
        "PYTHONUNBUFFERED": "1",
    }
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "forgejobs.cli", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        started.append(WorkerProcess(process, log_path))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def finished(run: WorkflowRun, timeout: float = 60) -> str:
    return str(wait_for(lambda: run.status() if run.done() else None, timeout=timeout, what=f"run {run.id} to end"))


def whats(path: Path) -> Counter[str]:
    return Counter(str(n["what"]) for n in notes(path))


def test_a_diamond_passes_outputs_along_across_queues(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = Diamond.start(notes=str(path))
    start_worker()
    assert finished(run) == "succeeded"
    assert run.outputs() == {
        "open": {"org": "org_1", "seats": 3},
        "greet": "hello org_1",
        "count": 30,
        "close": "hello org_1: 30",
    }
    assert whats(path) == Counter({"open": 1, "greet": 1, "count": 1, "close": 1})
    seen = [n["what"] for n in notes(path)]
    assert seen[0] == "open" and seen[-1] == "close"


def test_fan_out_of_200_fans_in_once_with_every_output(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    orgs = [f"org_{i}" for i in range(200)]
    run = FanIn.start(notes=str(path), org_ids=orgs)
    start_worker()
    start_worker()
    assert finished(run, 120) == "succeeded"
    assert run.output("total") == sum(range(200))
    assert run.output("charge") == list(range(200))
    strict = [n for n in notes(path) if n["what"] == "strict"]
    assert [n["value"] for n in strict] == [200]
    assert run.steps()["charge"].instances == 200 and run.steps()["charge"].finished == 200


def test_fail_stops_the_run_and_never_releases_the_fan_in(
    wf_client: Client, conn: redis.Redis, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = FanIn.start(notes=str(path), org_ids=["org_1", "org_2", "org_3"], fail_org="org_2")
    start_worker()
    assert finished(run) == "failed"
    assert "step charge[1] failed" in (run.error() or "") and "card declined for org_2" in (run.error() or "")
    assert not conn.exists(QueueKeys("forgejobs", "wfr").job(job_id(run.id, "total", 0)))  # never enqueued
    assert whats(path)["strict"] == 0
    assert run.steps()["total"].status == "cancelled"


def test_continue_gives_the_fan_in_none_for_the_failed_instance(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = Lenient.start(notes=str(path), org_ids=["org_1", "org_2", "org_3"], fail_org="org_2")
    start_worker()
    assert finished(run) == "succeeded"
    assert [n["value"] for n in notes(path) if n["what"] == "sum"] == [[1, None, 3]]
    assert run.output("total") == 4


def test_compensate_undoes_completed_steps_newest_first(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = Saga.start(notes=str(path), org_ids=["org_1", "org_2", "org_3"], fail_org="org_3")
    worker = start_worker()
    assert finished(run) == "failed", worker.log()
    comps = run.compensations()
    assert sorted(c for c, _ in comps) == ["charge:0", "charge:1"]
    assert all(outcome == "done" for _, outcome in comps)
    charged = [n["value"] for n in notes(path) if n["what"] == "charge" and n["value"] != "org_3"]
    refunded = [n["value"] for n in notes(path) if n["what"] == "refund"]
    completed = [f"org_{int(c.split(':')[1]) + 1}" for c, _ in reversed(comps)]
    assert sorted(charged) == sorted(refunded) == ["org_1", "org_2"]
    assert refunded == list(reversed(completed))  # the newest completed is refunded first
    assert whats(path)["strict"] == 0


def test_cancel_mid_run_stops_running_steps_and_releases_nothing(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = FanIn.start(notes=str(path), org_ids=["org_1", "org_2"], hold=60)
    start_worker()
    wait_for(lambda: whats(path)["charge"] == 2, timeout=30, what="both charges to start")
    assert run.cancel() is True
    assert run.cancel() is False
    assert run.status() == "stopping"  # until the running charges report
    # the running charges see ctx.cancelled and end; the fan-in is never released
    assert finished(run) == "cancelled"
    assert run.steps()["charge"].finished == 2
    assert whats(path)["strict"] == 0
    assert {s.status for s in run.steps().values()} == {"cancelled"}


def test_a_second_start_with_the_same_key_returns_the_first_run(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    first = Diamond.start(key="order-42", notes=str(path))
    second = Diamond.start(key="order-42", notes=str(tmp_path / "other"))
    assert second.id == first.id and second.existing and not first.existing
    start_worker()
    assert finished(first) == "succeeded"
    assert whats(path)["open"] == 1 and not (tmp_path / "other").exists()
    third = Diamond.start(key="order-42", notes=str(path))
    assert third.id == first.id and third.status() == "succeeded"


def test_workers_sigkilled_at_random_during_a_500_wide_fan_out_lose_nothing(
    wf_client: Client, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    orgs = [f"org_{i}" for i in range(500)]
    run = Chaos.start(notes=str(path), org_ids=orgs, hold=0.05)  # 50 ms each: the kills land mid-fan-out
    workers = [start_worker() for _ in range(3)]
    rng = random.Random(11)
    kills = 0
    deadline = time.monotonic() + 240
    while run.steps()["pay"].finished < 500 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.8))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        workers.append(start_worker())
    assert kills >= 3
    assert finished(run, 120) == "succeeded", run.error()
    assert run.output("pay") == list(range(500))
    assert run.output("total") == sum(range(500))
    strict = [n["value"] for n in notes(path) if n["what"] == "strict"]
    assert strict == [500]  # released once, with all 500 outputs
    paid = Counter(str(n["value"]) for n in notes(path) if n["what"] == "charge")
    assert set(paid) == set(orgs)  # every step ran (some twice: a killed worker's job runs again)


def test_a_run_writes_its_events_to_the_stream(
    wf_client: Client, conn: redis.Redis, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    run = Diamond.start(notes=str(tmp_path / "notes"))
    start_worker()
    assert finished(run) == "succeeded"
    events = [e for e in EventStream(conn, "forgejobs:events").read(count=10_000) if e.job_id == run.id]
    kinds = [(e.kind.value, e.data.get("step")) for e in events]
    assert kinds[0] == ("workflow_started", None)
    assert sorted(str(s) for k, s in kinds if k == "step_released") == ["close", "count", "greet", "open"]
    assert kinds[-1] == ("workflow_completed", None)
    assert {e.name for e in events} == {"redis_diamond"}


def test_the_workflows_command_starts_lists_shows_and_cancels_runs(
    wf_client: Client, redis_url: str, specs: Path, start_worker: Callable[[], WorkerProcess], tmp_path: Path
) -> None:
    env = {**os.environ, "FORGEJOBS_REDIS_URL": redis_url, "FORGEJOBS_JOBS": MODULE, "FORGEJOBS_SPECS": str(specs)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forgejobs.cli", "workflows", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    data = json.dumps({"notes": str(tmp_path / "notes")})
    started = cli("start", "redis_diamond", "--data", data, "--key", "k1")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    assert cli("start", "redis_diamond", "--data", data, "--key", "k1").stdout.startswith(
        f"{run_id} (already started with this key)"
    )
    start_worker()
    handle = Diamond.start(key="k1", notes="unused")
    assert handle.id == run_id and finished(handle) == "succeeded"

    listed = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["workflow"], r["status"], r["key"]) for r in listed] == [
        (run_id, "redis_diamond", "succeeded", "k1")
    ]
    shown = cli("show", run_id)
    assert shown.returncode == 0, shown.stderr
    tree = shown.stdout
    assert f"redis_diamond {run_id}: succeeded" in tree
    assert "close tests.close done" not in tree  # job names are the jobs' own
    for line in ("open wfr.open done", "greet wfr-mail.greet done", "close wfr.close done (also after greet)"):
        assert line in tree, tree
    assert json.loads(cli("show", run_id, "--json").stdout)["outputs"]["count"] == 30

    ended = cli("cancel", run_id)
    assert ended.returncode == 1 and "has already ended (succeeded)" in ended.stderr
    unknown = cli("show", "nope")
    assert unknown.returncode == 1 and "no workflow run 'nope'" in unknown.stderr

    held = FanIn.start(notes=str(tmp_path / "held"), org_ids=["org_1"], hold=60)
    wait_for(lambda: whats(tmp_path / "held")["charge"] == 1, timeout=30, what="the charge to start")
    info = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "info"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert "workflow runs: 1 running (forgejobs workflows list)" in info.stdout, info.stdout + info.stderr
    cancelled = cli("cancel", held.id)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"cancelled {held.id}")
    assert finished(held) == "cancelled"


# -- the recovery pass (decision 0009): each test cuts the normal path at one point, in-process ---------


@pytest.fixture
def worker(wf_settings: Settings, wf_client: Client, conn: redis.Redis) -> Iterator[Worker]:
    w = Worker(wf_settings, Registry.load(wf_settings), connection=redis.Redis.from_url(wf_settings.redis_url or ""))
    yield w
    w.stop()
    w.join(10)


def test_an_outcome_left_in_the_outbox_is_applied_by_recovery(
    worker: Worker, conn: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def killed_before_reporting(self: WorkerWorkflows, keys: QueueKeys, job: bytes | str, value: str) -> None:
        seen.append(json.loads(value)["tag"])  # the worker "dies" here: the outcome stays in the outbox

    monkeypatch.setattr(WorkerWorkflows, "report", killed_before_reporting)
    path = tmp_path / "notes"
    run = Diamond.start(notes=str(path))
    worker.start()
    assert run.wait(timeout=60) == "succeeded"
    assert len(seen) == 4  # every outcome took the recovery path
    assert whats(path) == {"open": 1, "greet": 1, "count": 1, "close": 1}
    outboxes = [QueueKeys("forgejobs", q).workflow_outbox for q in ("wfr", "wfr-mail")]
    # each entry is removed right after it is applied (the run may end just before the last removal)
    wait_for(lambda: sum(conn.hlen(k) for k in outboxes) == 0, timeout=10, what="the outboxes to empty")


def test_a_released_step_never_enqueued_is_enqueued_by_recovery(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Engine._enqueue
    cut: list[str] = []

    def dies_once(
        self: Engine, job_type: object, run_id: str, step: str, items: list[tuple[int, dict[str, Any]]]
    ) -> None:
        if step == "total" and not cut:
            cut.append(step)
            raise ConnectionError("killed between the release and the enqueue")
        original(self, job_type, run_id, step, items)

    monkeypatch.setattr(Engine, "_enqueue", dies_once)
    path = tmp_path / "notes"
    run = FanIn.start(notes=str(path), org_ids=["org_1", "org_2", "org_3"])
    worker.start()
    assert run.wait(timeout=60) == "succeeded"
    assert cut == ["total"]
    assert [n["value"] for n in notes(path) if n["what"] == "strict"] == [3]  # released once, run once
    assert run.output("total") == 1 + 2 + 3


def test_a_step_job_cancelled_while_waiting_stops_its_run(worker: Worker, wf_client: Client, tmp_path: Path) -> None:
    path = tmp_path / "notes"
    run = FanIn.start(notes=str(path), org_ids=["org_1"])
    # cancelled behind the workflow's back (forgejobs job cancel): no worker ever reports it
    cancel(wf_client.backend, wf_client.registry, job_id(run.id, "charge", 0))
    worker.start()
    assert run.wait(timeout=60) == "failed"
    assert "step charge[0] cancelled" in (run.error() or "")
    assert whats(path)["charge"] == 0 and whats(path)["strict"] == 0


def test_recovery_times_out_a_run_no_step_reports_on(
    worker: Worker, wf_client: Client, conn: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "notes"
    run = FanIn.start(notes=str(path), org_ids=["org_1"], hold=60)
    conn.hset(f"forgejobs:{{wf:{run.id}}}:run", "dl", "1")  # its deadline passed long ago
    worker.start()
    wait_for(lambda: run.status() != "running", timeout=30, what="the recovery pass to stop the run")
    assert run.wait(timeout=60) == "timed_out"  # the held charge saw ctx.cancelled and reported
    assert "timeout" in (run.error() or "")


def test_ended_runs_are_forgotten_after_the_retention_period(worker: Worker, conn: redis.Redis, tmp_path: Path) -> None:
    old = Diamond.start(notes=str(tmp_path / "old"))
    worker.start()
    assert old.wait(timeout=60) == "succeeded"
    fresh = Diamond.start(notes=str(tmp_path / "fresh"))
    assert fresh.wait(timeout=60) == "succeeded"
    # make the first run look 8 days old: started and ended before the 7-day retention
    conn.zadd("forgejobs:workflows", {old.id: 1})
    conn.hset(f"forgejobs:{{wf:{old.id}}}:run", "t1", "1")
    worker.workflows.recover()
    assert conn.exists(f"forgejobs:{{wf:{old.id}}}:run") == 0
    assert conn.zscore("forgejobs:workflows", old.id) is None
    assert fresh.status() == "succeeded"  # kept


def test_a_step_job_removed_by_hand_is_not_waited_for(worker: Worker, wf_client: Client, tmp_path: Path) -> None:
    path = tmp_path / "notes"
    run = Lenient.start(notes=str(path), org_ids=["org_1", "org_2"])
    assert wf_client.backend.remove_waiting(job_id(run.id, "charge", 0)) == "removed"
    worker.start()
    assert run.wait(timeout=60) == "succeeded"  # on_failure: continue: the fan-in goes on without it
    assert [n["value"] for n in notes(path) if n["what"] == "sum"] == [[None, 2]]
