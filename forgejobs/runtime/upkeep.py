"""One upkeep thread per worker process: what keeps the slots' leases and the queues healthy.

- every tick (0.1 s): write the events buffered outside the slots (those of recovered jobs);
- every `stall_timeout / 5`: renew the leases of the process's live slots (one `beat.lua` call per
  queue, in one round trip), and tell the slots whose job someone asked to cancel (the same reply);
- every second: read which queues are paused and when each queue's next delayed job is due, recover
  the jobs of dead slots (`recover.lua`, then `settle.lua` for each stalled job) on the queues no
  other worker has checked within the second, and replace slot threads that died;
- every five seconds: apply retention (`trim.lua`; `minutes.lua` for the per-minute metrics).

None of this is on a job's round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import redis

from ..deadletter import DeadLetter, Reason
from ..execution import Retry, decide_stalled, record_stalled
from ..outage import UNREACHABLE
from .corrupt import read_record, shown_id

if TYPE_CHECKING:
    from ..keys import QueueKeys
    from ..specs import QueueSpec
    from .scripts import Scripts
    from .state import Process, QueueState

log = logging.getLogger("forgejobs.worker")

TICK = 0.1
SETTLE_BATCH = 50
TRIM_BATCH = 500
MINUTES_KEPT = 24 * 60
"""Per-minute metrics are kept this many minutes (24 h)."""


class Upkeep:
    def __init__(self, worker: Process) -> None:
        self.worker = worker
        self.connection = worker.connection
        self.scripts = worker.scripts
        self.beat_every = worker.lease_ms / 5000
        self._last_beat = float("-inf")
        self._last_second = float("-inf")
        self._last_trim = float("-inf")

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(TICK):
            self.tick()
        self.final()

    def tick(self) -> None:
        worker = self.worker
        try:
            worker.events.flush()
            now = time.monotonic()
            if now - self._last_beat >= self.beat_every:
                self.beat()
                self._last_beat = now
            if now - self._last_second >= 1.0:
                self._last_second = now
                worker.supervise()
                self.refresh()
                for state in worker.states.values():
                    self.per_queue(self.recover, state)
            if now - self._last_trim >= 5.0:
                self._last_trim = now
                for state in worker.states.values():
                    self.per_queue(self.trim, state)
            worker.outage.recovered()
        except UNREACHABLE as exc:
            worker.outage.failed(exc)
        except Exception:  # noqa: BLE001 - upkeep must go on: leases, recovery and promotion depend on it
            log.exception("worker upkeep failed; trying again")

    @staticmethod
    def per_queue(step: Callable[[QueueState], None], state: QueueState) -> None:
        """One queue's step; an error Redis answers with (not an outage) does not hold up the other queues."""
        try:
            step(state)
        except redis.ResponseError:
            log.exception("%s: %s failed; trying again", state.name, step.__name__)

    def final(self) -> None:
        """A clean stop: write the last events and give up the slots' leases (they hold no jobs now)."""
        try:
            self.worker.events.flush()
            with self.connection.pipeline(transaction=False) as pipe:
                for state in self.worker.states.values():
                    idents = [s.ident for s in state.slots] + state.retired_idents
                    if idents:
                        pipe.zrem(state.keys.workers, *idents)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not write the last events or release the leases: %s", exc)

    def beat(self) -> None:
        """Renew the lease of every live slot, by queue, in one round trip; the reply names the running jobs
        someone asked to cancel, and the slots running them are told (`ctx.cancelled`)."""
        with self.connection.pipeline(transaction=False) as pipe:
            beating = []
            for state in self.worker.states.values():
                idents = [slot.ident for slot in state.slots if slot.alive()]
                if idents:
                    beating.append(state)
                    keys = [state.keys.workers, state.keys.cancels, state.keys.active]
                    self.scripts.beat(keys=keys, args=[self.worker.lease_ms, *idents], client=pipe)
            if not beating:
                return
            replies = pipe.execute()
        for state, reply in zip(beating, replies):
            wanted = set(reply[1:]) if isinstance(reply, list) else set()
            if wanted:
                for slot in state.slots:
                    if slot.job_id is not None and slot.job_id in wanted and not slot.cancel.is_set():
                        log.info(
                            "%s %s: cancel asked for; its handler sees ctx.cancelled", state.name, shown_id(slot.job_id)
                        )
                        slot.cancel.set()

    def refresh(self) -> None:
        """Paused queues, the next due time of each queue's delayed jobs, and the server's clock."""
        states = list(self.worker.states.values())
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(self.worker.keys.paused)
            for state in states:
                pipe.zrange(state.keys.delayed, 0, 0, withscores=True)
            replies = pipe.execute()
        seconds, micros = replies[0]
        self.worker.clock.set_server_ms(seconds * 1000 + micros / 1000)
        paused = {m.decode() for m in cast(set[bytes], replies[1])}
        earliest = False
        for state, head in zip(states, replies[2:]):
            state.paused = state.name in paused
            due = float(head[0][1]) if head else float("inf")
            if due < state.next_due:
                earliest = True
            state.next_due = due
        if earliest:
            self.worker.waiter.poke()

    def recover(self, state: QueueState) -> None:
        """Once a second per queue across all workers: move the jobs of dead slots to the stalled list and
        settle what is there."""
        if not self.connection.set(state.keys.check, self.worker.name, nx=True, px=1000):
            return
        moved, stalled_count = self.scripts.recover(
            keys=[*state.keys.standard, state.keys.stalled], args=[state.keys.job_prefix, state.keys.ck_prefix]
        )
        if moved:
            log.warning("%s: %d job(s) of dead workers taken back", state.name, moved)
        if stalled_count:
            self.settle(state)

    def settle(self, state: QueueState) -> None:
        ids = cast(list[bytes], self.connection.lrange(state.keys.stalled, 0, SETTLE_BATCH - 1))
        for job_id in ids:
            try:
                self.settle_one(state, job_id)
            except redis.ResponseError:  # one bad entry must not hold up the jobs behind it
                log.exception("%s: could not settle stalled job %r; going on", state.name, job_id)

    def settle_one(self, state: QueueState, job_id: bytes) -> None:
        """Retry or dead-letter one stalled job. The decision is applied by `settle.lua` only if the job is
        still on the stalled list with the envelope it was made from; its side effects (dead letter,
        events) follow only then, so two workers settling at once act once."""
        keys = state.keys
        raw_key: Any = keys.job_bytes(job_id)  # bytes: the id may not be UTF-8
        shown = shown_id(job_id)
        runtime = self.worker.runtime_for(state)
        base = [*keys.standard, keys.stalled, keys.metrics, keys.minutes]
        corrupt = ["?", f"dead_lettered:{Reason.CORRUPT.value}", "f"]
        kind = cast(bytes, self.connection.type(raw_key))
        if kind not in (b"hash", b"none"):  # not a job record: keep its bytes as a dead letter, never run it
            kind_text, raw = read_record(self.connection, raw_key)
            error = f"corrupt record: a {kind_text}, not a hash"
            if self.scripts.settle(keys=base, args=[keys.job_prefix, job_id, "drop", "", 0, 5, "", *corrupt]):
                runtime.dead_letters.add(
                    DeadLetter(id=shown, queue=state.name, reason=Reason.CORRUPT, error=error, raw=raw)
                )
                log.error("dead-lettered %s from %s: %s", shown, state.name, error)
            return
        envelope, priority = cast(list[bytes | None], self.connection.hmget(raw_key, ["d", "p"]))
        rank = int(priority) if priority and priority.isdigit() and 1 <= int(priority) <= 10 else 5
        if envelope is None:  # nothing to run: deleted meanwhile, or a hash that never was a job
            kind_text, raw = read_record(self.connection, raw_key)
            metrics = corrupt if kind_text != "none" else ["?", "", ""]
            if self.scripts.settle(keys=base, args=[keys.job_prefix, job_id, "drop", "", 0, rank, "", *metrics]):
                if kind_text == "none":
                    log.warning("%s: stalled job %s has no record left; dropped", state.name, shown)
                else:
                    error = "corrupt record: no envelope"
                    record = DeadLetter(id=shown, queue=state.name, reason=Reason.CORRUPT, error=error, raw=raw)
                    runtime.dead_letters.add(record)
            return
        outcome = decide_stalled(envelope, runtime, job_id=shown, queue=state.name)
        if outcome is None:  # not an envelope of a known job: run it through execution, which dead-letters it
            args: list[Any] = ["requeue", envelope, 0]
            metrics = ["?", "", ""]
        elif isinstance(outcome, Retry):
            args = ["retry", outcome.envelope.encode(), round(outcome.delay * 1000)]
            metrics = [outcome.name, "stalled retried", "f"]
        else:
            args = ["failed", outcome.record.error, self.worker.failure_ttl_ms(outcome.record.name)]
            metrics = [outcome.name, f"stalled dead_lettered:{outcome.record.reason.value}", "f"]
        if not self.scripts.settle(keys=base, args=[keys.job_prefix, job_id, *args, rank, envelope, *metrics]):
            return  # another worker settled it
        if outcome is not None:
            record_stalled(outcome, runtime, job_id=shown, queue=state.name)

    def trim(self, state: QueueState) -> None:
        if self.connection.set(state.keys.trim, self.worker.name, nx=True, px=5000):
            trim(self.scripts, state.keys, state.spec)


def trim(scripts: Scripts, keys: QueueKeys, spec: QueueSpec) -> int:
    """One retention pass over a queue's succeeded and failed jobs (see `trim.lua`). Returns how many were
    deleted. Guarantee: afterwards the queue keeps at most `retention.<kind>.count` of each kind, none
    finished longer ago than `retention.<kind>.age`, none past its own result or failure TTL (each pass
    deletes at most TRIM_BATCH per kind; the next pass, 5 s later, goes on). Cancelled jobs are kept like
    succeeded ones. Per-minute metrics older than MINUTES_KEPT minutes are dropped in the same pass."""
    deleted = 0
    kinds = (
        (keys.done, spec.retention.completed),
        (keys.failed, spec.retention.failed),
        (keys.cancelled, spec.retention.completed),
    )
    for key, keep in kinds:
        count = "" if keep.count is None else keep.count
        age = "" if keep.age is None else round(keep.age.total_seconds() * 1000)
        deleted += int(scripts.trim(keys=[key], args=[keys.job_prefix, count, age, keys.log_prefix, TRIM_BATCH]))
    scripts.minutes(keys=[keys.minutes], args=[MINUTES_KEPT])
    return deleted
