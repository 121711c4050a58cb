"""Where a run's state lives, and the few atomic steps that change it.

A run is one flat mapping (in Redis, one hash tagged by the run; see `workflow.lua`, which this module's
`MemoryStore` mirrors line for line for the fake queue):

- `wf` workflow name, `steps` its step names, `st` status (running, stopping, compensating, then succeeded,
  failed, cancelled or timed_out), `in` input JSON, `key`, `t0`/`t1` start and end (ms), `dl` deadline (ms,
  0: none), `sl` steps not yet finished, `err` why it stopped, `why` the status a compensating run ends in;
- per step: `deps:<s>` its dependants, `p:<s>` how many of its `after` steps have not finished, `f:<s>` its
  failure policy, `cp:<s>` "1" if it has a compensation, `ss:<s>` waiting / ready / running / done,
  `n:<s>` how many instances it fanned out to and `l:<s>` how many of those are left;
- per instance: `d:<s>:<i>` its outcome (done, failed, cancelled; set once: the idempotency marker),
  `o:<s>:<i>` its output JSON, `e:<s>:<i>` its error;
- `nc` and `c:<k>`: the compensations to run, `<step>:<instance>` in reverse order of completion (the
  pseudo-steps `~0`, `~1`, ... run them one after another).

Beside it: the set of steps released but not yet enqueued (`ready`: what a recovery pass re-enqueues) and
the list of instances in the order they completed (`order`: what compensation walks back).
"""

from __future__ import annotations

import threading
from typing import Protocol

RUNNING = "running"
STOPPING = "stopping"
"""Stopped (failed, cancelled, timed out) but step jobs that were running have not all reported yet."""
COMPENSATING = "compensating"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


class RunStore(Protocol):
    def create(self, run_id: str, fields: dict[str, str], ready: list[str], now: int) -> bool:
        """Store a new run; False (and nothing written) when `run_id` exists."""
        ...

    def read(self, run_id: str) -> dict[str, str] | None: ...

    def fields(self, run_id: str, *names: str) -> dict[str, str] | None:
        """Some fields of a run (those it has), or None when there is no such run."""
        ...

    def ready(self, run_id: str) -> list[str]: ...

    def expand(self, run_id: str, step: str, count: int, now: int) -> list[str]:
        """The step starts with `count` instances (once; again is a no-op). Returns the steps released by it
        finishing at once (`count` 0)."""
        ...

    def enqueued(self, run_id: str, step: str) -> None:
        """The step's jobs are stored: it leaves `ready`."""
        ...

    def finish(
        self, run_id: str, step: str, index: int, mode: str, output: str, error: str, now: int
    ) -> tuple[str, list[str]]:
        """Record one instance's outcome once. Returns (verdict, released steps): verdict "dup" (already
        recorded), "ok", "ignored" (the run no longer runs), or the run's new status when this ended it."""
        ...

    def stop(self, run_id: str, status: str, reason: str, now: int) -> tuple[str, list[str]]:
        """End a running run as `status` (cancelled, timed_out, failed): "compensating" with `~0` released
        when completed steps have compensations; "not running" if it had already ended."""
        ...

    def runs(self) -> list[str]:
        """Every run id the index holds."""
        ...


class MemoryStore:
    """The fake queue's runs, in dicts: the same transitions as `workflow.lua`."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.ready_sets: dict[str, set[str]] = {}
        self.orders: dict[str, list[str]] = {}
        self.lock = threading.RLock()

    def create(self, run_id: str, fields: dict[str, str], ready: list[str], now: int) -> bool:
        with self.lock:
            if run_id in self.hashes:
                return False
            self.hashes[run_id] = dict(fields)
            self.ready_sets[run_id] = set(ready)
            self.orders[run_id] = []
            return True

    def read(self, run_id: str) -> dict[str, str] | None:
        with self.lock:
            found = self.hashes.get(run_id)
            return dict(found) if found is not None else None

    def fields(self, run_id: str, *names: str) -> dict[str, str] | None:
        with self.lock:
            found = self.hashes.get(run_id)
            return {n: found[n] for n in names if n in found} if found is not None else None

    def ready(self, run_id: str) -> list[str]:
        with self.lock:
            return sorted(self.ready_sets.get(run_id, ()))

    def runs(self) -> list[str]:
        with self.lock:
            return list(self.hashes)

    def _step_done(self, run_id: str, step: str, now: int) -> list[str]:
        h = self.hashes[run_id]
        h[f"ss:{step}"] = "done"
        left = int(h["sl"]) - 1
        h["sl"] = str(left)
        released = []
        for dep in h.get(f"deps:{step}", "").split():
            pending = int(h[f"p:{dep}"]) - 1
            h[f"p:{dep}"] = str(pending)
            if pending == 0 and h["st"] == RUNNING:
                self.ready_sets[run_id].add(dep)
                h[f"ss:{dep}"] = "ready"
                released.append(dep)
        if left == 0 and h["st"] == RUNNING:
            h["st"], h["t1"] = "succeeded", str(now)
        return released

    def expand(self, run_id: str, step: str, count: int, now: int) -> list[str]:
        with self.lock:
            h = self.hashes[run_id]
            if f"n:{step}" in h:
                return []
            h[f"n:{step}"] = h[f"l:{step}"] = str(count)
            h[f"ss:{step}"] = "running"
            if count == 0 and not step.startswith("~"):
                return self._step_done(run_id, step, now)
            return []

    def enqueued(self, run_id: str, step: str) -> None:
        with self.lock:
            self.ready_sets.get(run_id, set()).discard(step)

    def finish(
        self, run_id: str, step: str, index: int, mode: str, output: str, error: str, now: int
    ) -> tuple[str, list[str]]:
        with self.lock:
            h = self.hashes.get(run_id)
            if h is None:
                return "ignored", []
            marker = f"d:{step}:{index}"
            if marker in h:
                return "dup", []
            h[marker] = mode
            if output:
                h[f"o:{step}:{index}"] = output
            if error:
                h[f"e:{step}:{index}"] = error
            if step.startswith("~"):
                return self._compensated(run_id, int(step[1:]), now)
            if h["st"] not in (RUNNING, STOPPING):
                return "ignored", []
            stopped = False
            deadline = int(h.get("dl", "0") or 0)
            if h["st"] == RUNNING and deadline and now > deadline:  # past its timeout: stop first
                seconds = (deadline - int(h["t0"])) / 1000
                self._stop(run_id, "timed_out", f"the workflow's timeout ({seconds:g}s) passed", now)
                stopped = True
            if mode == "done":
                self.orders[run_id].append(f"{step}:{index}")
            left = int(h[f"l:{step}"]) - 1
            h[f"l:{step}"] = str(left)
            if h["st"] == STOPPING:
                if self._outstanding(h) == 0:
                    return self._compensate(run_id, now)
                return (STOPPING if stopped else "ignored"), []
            if mode != "done" and h.get(f"f:{step}") != "continue":
                return self._stop(run_id, "failed", f"step {step}[{index}] {mode}: {error}", now)
            released = self._step_done(run_id, step, now) if left == 0 else []
            return (h["st"] if h["st"] != RUNNING else "ok"), released

    def _compensated(self, run_id: str, k: int, now: int) -> tuple[str, list[str]]:
        h = self.hashes[run_id]
        h[f"ss:~{k}"] = "done"
        if k + 1 < int(h.get("nc", "0")):
            self.ready_sets[run_id].add(f"~{k + 1}")
            return "ok", [f"~{k + 1}"]
        h["st"], h["t1"] = h.get("why", "failed"), str(now)
        return h["st"], []

    def stop(self, run_id: str, status: str, reason: str, now: int) -> tuple[str, list[str]]:
        with self.lock:
            h = self.hashes.get(run_id)
            if h is None or h["st"] != RUNNING:
                return "not running", []
            return self._stop(run_id, status, reason, now)

    @staticmethod
    def _outstanding(h: dict[str, str]) -> int:
        return sum(max(0, int(h.get(f"l:{step}", "0"))) for step in h.get("steps", "").split())

    def _stop(self, run_id: str, status: str, reason: str, now: int) -> tuple[str, list[str]]:
        h = self.hashes[run_id]
        self.ready_sets[run_id].clear()
        h["err"], h["why"] = reason, status
        if self._outstanding(h) == 0:
            return self._compensate(run_id, now)
        h["st"] = STOPPING
        return STOPPING, []

    def _compensate(self, run_id: str, now: int) -> tuple[str, list[str]]:
        h = self.hashes[run_id]
        why = h["why"]
        comps = [entry for entry in reversed(self.orders[run_id]) if h.get(f"cp:{entry.rsplit(':', 1)[0]}") == "1"]
        if not comps:
            h["st"], h["t1"] = why, str(now)
            return why, []
        h["st"], h["nc"] = COMPENSATING, str(len(comps))
        for k, entry in enumerate(comps):
            h[f"c:{k}"] = entry
        self.ready_sets[run_id].add("~0")
        return COMPENSATING, ["~0"]
