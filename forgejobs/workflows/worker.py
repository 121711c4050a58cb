"""The worker's side of workflows: report each step job's final outcome to its run, and repair what a
killed worker left half done (docs/decisions/0009-workflows.md).

1. `fetch.lua` records a step job's outcome and, in the same call, puts it in its queue's workflow outbox.
2. The slot then applies it to the run (`workflow.lua` finish: once per instance, by its `d:` marker),
   enqueues what that released, and removes the outbox entry.
3. A recovery pass (one worker a second) applies outbox entries older than `OUTBOX_GRACE`, re-enqueues
   steps left in a run's `ready` set, records outcomes of step jobs that ended without passing through
   the outbox (cancelled while waiting, dead-lettered by stall recovery), times runs out, and forgets
   ended runs after `RUN_RETENTION`.

Every action is idempotent (fixed job ids, once-only markers), so doing one twice, from two workers or
after a crash, changes nothing: no step is lost and none is released twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis

from .engine import TAG, Engine, job_id
from .store import COMPENSATING, RUNNING, STOPPING, TERMINAL

if TYPE_CHECKING:
    from ..client import Client
    from ..keys import QueueKeys
    from .redisstore import RedisStore

log = logging.getLogger("forgejobs.workflows")

OUTBOX_GRACE_MS = 2_000
"""An outbox entry this old is taken for abandoned (its worker died between the two calls)."""
RUN_RETENTION_MS = 7 * 86_400_000
"""How long an ended run is kept (its steps' jobs follow their own result TTLs)."""
PASS_INTERVAL = 1.0

_FINAL = {"done": "done", "failed": "failed", "cancelled": "cancelled"}


def outbox_entry(envelope: bytes, mode: str, payload: str | bytes) -> str:
    """The outbox value for a step job's final outcome, or "" for a job of no workflow or a non-final one."""
    if mode not in _FINAL or b'"workflow":"' not in envelope:
        return ""
    try:
        tag = json.loads(envelope).get("options", {}).get(TAG)
    except ValueError:
        return ""
    if not isinstance(tag, str):
        return ""
    text = payload.decode() if isinstance(payload, bytes) else payload
    out, err = (text, "") if mode == "done" else ("", text or mode)
    return json.dumps({"tag": tag, "mode": mode, "out": out, "err": err, "at": time.time_ns() // 1_000_000})


class WorkerWorkflows:
    """One worker process's reporter and recovery pass."""

    def __init__(self, client: Client, queues: Iterable[QueueKeys]) -> None:
        from .run import engine_for

        self.engine: Engine = engine_for(client)
        self.store: RedisStore = self.engine.store  # type: ignore[assignment]
        self.connection: redis.Redis = self.store.connection
        self.queues = list(queues)
        self._seen_ready: set[tuple[str, str]] = set()
        self._seen_ended: set[str] = set()

    def apply(self, value: str | bytes) -> None:
        entry = json.loads(value)
        self.engine.finished(entry["tag"], entry["mode"], entry["out"], entry["err"])

    def report(self, keys: QueueKeys, job: bytes | str, value: str) -> None:
        """Right after fetch.lua stored the outcome: apply it to the run, then clear the outbox entry.
        A failure leaves the entry for the recovery pass."""
        try:
            self.apply(value)
            self.connection.hdel(keys.workflow_outbox, job)
        except Exception:  # noqa: BLE001 - the outbox keeps it; recovery applies it
            log.exception("workflow step %r: outcome not yet applied to its run; recovery will", job)

    # -- recovery ---------------------------------------------------------------------------

    def run(self, halt: threading.Event) -> None:
        while not halt.wait(PASS_INTERVAL):
            try:
                if self.connection.set(f"{self.store.index}:check", "1", nx=True, px=int(PASS_INTERVAL * 1000)):
                    self.recover()
            except redis.RedisError as exc:
                log.warning("workflow recovery pass failed: %s", exc)
            except Exception:  # noqa: BLE001 - a pass must never end the thread
                log.exception("workflow recovery pass failed")

    def recover(self) -> None:
        now = time.time_ns() // 1_000_000
        for keys in self.queues:
            for job, value in self.connection.hgetall(keys.workflow_outbox).items():
                if now - int(json.loads(value).get("at", 0)) >= OUTBOX_GRACE_MS:
                    self.apply(value)
                    self.connection.hdel(keys.workflow_outbox, job)
        seen_ready: set[tuple[str, str]] = set()
        for run_id in self.store.active_runs():
            run = self.store.read(run_id)
            if run is None:
                self.store.settled(run_id)
                continue
            if run["st"] in TERMINAL:
                self.store.settled(run_id)
                continue
            if self.engine.check_deadline(run_id, run):
                continue
            ready = self.store.ready(run_id)
            for step in ready:
                if (run_id, step) in self._seen_ready:  # ready for a whole pass: its releaser died
                    self.engine.release(run_id, step)
                seen_ready.add((run_id, step))
            if run["st"] in (RUNNING, STOPPING, COMPENSATING):
                self._reconcile(run_id, run, set(ready))
        self._seen_ready = seen_ready
        self._expire(now)

    def _reconcile(self, run_id: str, run: dict[str, str], ready: set[str]) -> None:
        """Step jobs that ended without reporting (cancelled while waiting, dead-lettered by stall
        recovery): record them from the job's own record. A step job that no longer exists at all (removed
        from its queue by hand, or never stored because the run stopped first) and whose step is not waiting
        to be enqueued will not come: it is recorded as cancelled."""
        plan = self.engine.plan(run["wf"])
        pending: list[tuple[str, int, str]] = []
        for field, count in run.items():
            if not field.startswith("n:"):
                continue
            step = field[2:]
            for i in range(int(count)):
                if f"d:{step}:{i}" not in run:
                    pending.append((step, i, self._queue_of(plan, run, step)))
        if not pending:
            return
        prefix = self.store.prefix
        from ..keys import QueueKeys

        pipe = self.connection.pipeline(transaction=False)
        for step, i, queue in pending:
            pipe.hmget(QueueKeys(prefix, queue).job(job_id(run_id, step, i)), "s", "r", "e")
        for (step, i, _queue), (status, result, error) in zip(pending, pipe.execute(), strict=True):
            state = status.decode() if isinstance(status, bytes) else status
            mode = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}.get(state or "")
            if state is None and step not in ready:
                mode = "cancelled"  # gone (removed, or never stored because the run stopped first)
            key = f"{run_id}|{step}|{i}"
            if mode is None:
                self._seen_ended.discard(key)
                continue
            if key not in self._seen_ended:  # give the outbox path a pass to report it first
                self._seen_ended.add(key)
                continue
            out = _text(result) if mode == "done" and result is not None else ""
            err = "" if mode == "done" else (_text(error) if error is not None else mode)
            self.engine.finished(f"{run_id}|{step}|{i}", mode, out, err)
            self._seen_ended.discard(key)

    def _queue_of(self, plan: Any, run: dict[str, str], step: str) -> str:
        if step.startswith("~"):
            target = run[f"c:{step[1:]}"].rpartition(":")[0]
            comp = plan.steps[target].compensate
            name = comp.job
        else:
            name = plan.steps[step].job
        queue: str = self.engine.client.registry.resolve(name).options.queue or ""
        return queue

    def _expire(self, now: int) -> None:
        cutoff = now - RUN_RETENTION_MS
        for run_id in self.connection.zrangebyscore(self.store.index, 0, cutoff, start=0, num=100):
            rid = _text(run_id)
            run = self.store.read(rid)
            if run is None or (run["st"] in TERMINAL and int(run.get("t1", "0") or 0) < cutoff):
                self.store.forget(rid)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
