"""The runtime under every fault at once: `bench/chaos.py` with a small N (600 jobs, about 35 s).

Its own redis-server (AOF on) on a free port, four workers (two in thread mode, two `--processes`, three
slots each, lease 2 s), 600 `LedgerRun` jobs falling due over 25 s, and the five fault kinds once each in
a seeded order, about 3.5 s apart: SIGKILL of one slot process, SIGKILL of a whole worker (replaced at
once), SIGTERM of a worker (replaced at once), a Redis restart (SIGTERM, 2 s down, same port, AOF) and a
3 s Redis outage. Then every job must be SUCCEEDED, none lost, no dead letter, and duplicate runs within
the bound below.

The duplicate bound. A run is noted in the ledger as its last step, before its slot records the outcome
(`fetch.lua`). A run can therefore be noted and still run again only if its slot loses the job between
the two steps:
- a SIGKILLed slot process loses the one job it holds: 1 per slot kill;
- a SIGKILLed worker loses one job per slot: `concurrency` (3) per worker kill;
- a SIGTERMed worker finishes its jobs and records them: 0;
- while Redis is down every lease runs out (server time moves on, no heartbeat lands), so any job running
  at the fault may be recovered and run again: at most the jobs running at that moment (the active hash
  just before the stop, at most every slot).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from bench.chaos import FAULT_KINDS, Chaos, Config, Report

pytestmark = pytest.mark.chaos

KILLS = ("slot_kill", "worker_kill")
REDIS_FAULTS = ("redis_restart", "redis_outage")


def duplicate_bound(report: Report) -> int:
    """Slots that lost their process to a SIGKILL, plus the jobs that were running when Redis went away."""
    return sum(f.killed for f in report.faults if f.kind in KILLS) + sum(
        len(f.orphans) for f in report.faults if f.kind in REDIS_FAULTS
    )


def test_no_job_is_lost_under_kills_terms_redis_restarts_and_outages(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    seed = 7
    order = list(FAULT_KINDS)
    random.Random(seed).shuffle(order)
    config = Config(
        jobs=600,
        seed=seed,
        duration=30,
        fault_every=3.5,
        outage=3,
        restart_pause=2,
        workers=("threads", "processes", "threads", "processes"),
        concurrency=3,
        stall_timeout=2,
        faults=tuple(order),
        drain_timeout=40,
        workdir=tmp_path,
        log=lambda line: print(line, flush=True),
    )
    report = Chaos(config).run()
    print(report.summary())
    print(report.table())
    print(f"duplicate bound: {duplicate_bound(report)}")
    logs = sorted(tmp_path.glob("w*.log"))
    worker_logs = "\n".join(f"{p.name}: {p.read_text(errors='replace')[-2000:]}" for p in logs)

    assert sorted(f.kind for f in report.faults) == sorted(FAULT_KINDS)
    assert [f for f in report.faults if f.kind in KILLS and f.killed == 0] == [], "a kill found nothing to kill"
    assert report.lost == [], f"lost {len(report.lost)}: {report.lost[:10]}\n{report.table()}\n{worker_logs}"
    assert report.foreign == 0, "the ledger names runs of jobs that were never enqueued"
    assert report.completed == report.enqueued == 600
    assert report.statuses == {"succeeded": 600}, f"{report.statuses}\n{report.table()}\n{worker_logs}"
    assert report.all_done_after is not None
    assert not report.dead_letters, report.dead_letters
    assert report.duplicate_runs <= duplicate_bound(report), report.table()
    assert all(f.resume is not None for f in report.faults), "no job completed after a fault"
