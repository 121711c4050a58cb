"""The job of the chaos harness (`bench/chaos.py`, `tests/chaos/`): it notes each completed run in a ledger.

The ledger lives on another database of the same Redis server as the queue (its URL is in the payload):
`HINCRBY chaos:runs <job id> 1` and `RPUSH chaos:log "<job id> <time> <attempt> <pid>"`, in one MULTI, as
the run's last step. A job whose `chaos:runs` is 0 never completed a run (lost); above 1, it completed
more than once (a duplicate run). If the ledger cannot be reached the run raises and is retried.
"""

from __future__ import annotations

import os
import threading
import time

import redis

from forgejobs import Context, Job, backoff

RUNS = "chaos:runs"
LOG = "chaos:log"

_lock = threading.Lock()
_conns: dict[tuple[int, str], redis.Redis] = {}


def ledger_conn(url: str) -> redis.Redis:
    """One client per process and ledger URL (a forked slot process makes its own)."""
    key = (os.getpid(), url)
    with _lock:
        conn = _conns.get(key)
        if conn is None:
            conn = _conns[key] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        return conn


class LedgerRun(Job, queue="chaos", attempts=100, max_stalled=100, backoff=backoff.fixed(0.2), timeout=60):
    """Sleep `seconds`, then note the completed run in the ledger at `ledger` (a Redis URL)."""

    ledger: str
    seconds: float = 0.0

    def perform(self, ctx: Context) -> None:
        if self.seconds:
            time.sleep(self.seconds)
        pipe = ledger_conn(self.ledger).pipeline(transaction=True)
        pipe.hincrby(RUNS, ctx.job_id, 1)
        pipe.rpush(LOG, f"{ctx.job_id} {time.time():.4f} {ctx.attempt} {os.getpid()}")
        pipe.execute()
