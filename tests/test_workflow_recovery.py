"""The workflow recovery pass repairs each half-done state a killed worker can leave (decision 0009):
an outcome left in the outbox, a released step never enqueued, a step job that ended without reporting.

Each test cuts the normal path at one point (in-process, by replacing one method) and checks that the
recovery pass of a worker finishes the run anyway, releasing nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Registry, Settings
from forgejobs.keys import QueueKeys
from forgejobs.runtime.cancel import cancel
from forgejobs.runtime.worker import Worker
from forgejobs.workflows.engine import Engine, job_id
from forgejobs.workflows.worker import WorkerWorkflows
from tests.conftest import wait_for
from tests.test_workflow_redis import Diamond, FanIn, Lenient, notes, specs, wf_client, wf_settings, whats

pytestmark = pytest.mark.redis
__all__ = ["specs", "wf_client", "wf_settings"]  # fixtures shared with test_workflow_redis


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

    def dies_once(self: Engine, job_type: object, run_id: str, step: str, items: list[tuple[int, dict]]) -> None:
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
