#!/usr/bin/env python
"""How late delayed jobs, retries and cron ticks start: forgejobs against raw RQ, same run, same Redis.

    python bench/schedule_latency.py [--jobs 300] [--spread 30] [--redis-url redis://127.0.0.1:6379/14]

forgejobs side: a `forgejobs worker` (4 slots, forgejobs' own runtime) and a `forgejobs scheduler`
subprocess serve queue "latency" (bench/latencyspecs). The jobs record when they started in Redis
(`benchjobs.latency`: the worker's resources are a connection to the bench's database). It measures
- delayed jobs: `--jobs` `Stamp` jobs whose due times are spread uniformly over `--spread`
  seconds (`with_options(at=...)`); lateness = recorded start - due time;
- retries: `--jobs`/3 `FailOnce` jobs (backoff fixed 2 s); lateness = the second attempt's
  recorded start - (the first attempt's failure time, from the history of the envelope in the job
  hash `forgejobs:{latency}:job:<id>`, + 2 s);
- cron ticks: the `latency-tick` schedule (every 1 s) for the length of the run; lateness =
  recorded start - the tick (`ctx.scheduled_for`).
Raw RQ side, at the same time: `rq worker --with-scheduler` (SimpleWorker, RQ's own scheduler)
on queue "rqlatency" with the same delayed due times via `Queue.enqueue_at`; lateness = RQ's
`started_at` - due time.

Prints p50, p99 and max lateness (and the earliest start: negative means a job ran early). The
target from the scheduling issue: p99 at most 1 s for forgejobs. The database must be empty
(the bench refuses otherwise); it is flushed at the end (FLUSHDB of that database only), so
everything removed was the bench's. The subprocesses are stopped by their PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from rq import Queue
from rq.utils import str_to_date

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchjobs.latency import STARTED, TICKS, FailOnce, Stamp  # noqa: E402
from benchjobs.rqfuncs import noop  # noqa: E402

from forgejobs import Client, Registry, Settings, use_client  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.keys import Keys  # noqa: E402

QUEUE_KEYS = Keys().queue("latency")


def start(args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FORGEJOBS_REDIS_URL": url,
        "FORGEJOBS_JOBS": "benchjobs.latency",
        "FORGEJOBS_SPECS": str(HERE / "latencyspecs"),
        "FORGEJOBS_RESOURCES": "benchjobs.latency:build",
        "FORGEJOBS_KEY_PREFIX": "forgejobs",
        "PYTHONPATH": f"{HERE}:{HERE.parent}",
    }
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rq_started_at(conn: redis.Redis, job_id: str) -> float | None:
    raw = conn.hget(f"rq:job:{job_id}", "started_at")
    return str_to_date(raw).replace(tzinfo=UTC).timestamp() if raw else None


def fj_started(conn: redis.Redis, attempt: int = 1) -> dict[str, float]:
    """Job id -> when that attempt started, as the jobs recorded it."""
    raw = conn.hgetall(f"{STARTED}{attempt}")
    return {k.decode(): float(v) for k, v in raw.items()}


def envelope(conn: redis.Redis, job_id: str) -> dict:
    return json.loads(conn.hget(QUEUE_KEYS.job(job_id), "d"))


def summary(label: str, lateness: list[float]) -> str:
    if not lateness:
        return f"{label:<34} no samples"
    ordered = sorted(lateness)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (
        f"{label:<34} n={len(ordered):<4} p50 {statistics.median(ordered):6.3f} s   p99 {p99:6.3f} s   "
        f"max {ordered[-1]:6.3f} s   earliest {ordered[0]:+.3f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--spread", type=float, default=30.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    conn = redis.Redis.from_url(args.redis_url)
    if conn.dbsize():
        print(f"refusing to run: {args.redis_url} is not empty; pick an empty database with --redis-url")
        return 2
    try:
        return run(conn, args)
    finally:
        conn.flushdb()  # empty at start (checked in main): everything here was the bench's


def run(conn: redis.Redis, args: argparse.Namespace) -> int:
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "forgejobs-latency"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    processes = [
        start([python, "-m", "forgejobs.cli", "worker", "--queues", "latency"], args.redis_url, logs / "worker.log"),
        start([python, "-m", "forgejobs.cli", "scheduler", "--interval", "0.1"], args.redis_url, logs / "sched.log"),
        start(
            [
                python,
                "-m",
                "rq.cli",
                "worker",
                "--url",
                args.redis_url,
                "--with-scheduler",
                "-w",
                "rq.worker.SimpleWorker",
                "-q",
                "rqlatency",
            ],
            args.redis_url,
            logs / "rq.log",
        ),
    ]
    try:
        time.sleep(3)  # let all three register before the clock starts
        settings = Settings(redis_url=args.redis_url, jobs="benchjobs.latency", specs=HERE / "latencyspecs")
        client = Client(RedisBackend(conn), Registry.load(settings))
        rq_queue = Queue("rqlatency", connection=conn)
        now = time.time()
        random.seed(7)
        dues = [now + 0.5 + random.random() * args.spread for _ in range(args.jobs)]
        fj_delayed: list[tuple[str, float]] = []
        rq_delayed: list[tuple[str, float]] = []
        with use_client(client):
            for i, due in enumerate(dues):
                at = datetime.fromtimestamp(due, UTC)
                fj_delayed.append((Stamp.with_options(at=at).enqueue(n=i).id, due))
                rq_delayed.append((rq_queue.enqueue_at(at, noop, i).id, due))
            retries = [FailOnce.enqueue(n=i).id for i in range(max(1, args.jobs // 3))]
        run_started = time.time()
        deadline = now + args.spread + 10
        while time.time() < deadline:
            first, second = fj_started(conn, 1), fj_started(conn, 2)
            if (
                all(j in first for j, _ in fj_delayed)
                and all(rq_started_at(conn, j) for j, _ in rq_delayed)
                and all(j in second for j in retries)
            ):
                break
            time.sleep(0.5)
        time.sleep(1)
    finally:
        for process in processes:
            stop(process)
    first, second = fj_started(conn, 1), fj_started(conn, 2)
    fj_late = [first[j] - due for j, due in fj_delayed if j in first]
    rq_late = []
    for job_id, due in rq_delayed:
        started = rq_started_at(conn, job_id)
        if started:
            rq_late.append(started - due)
    retry_late = []
    for job_id in retries:
        history = envelope(conn, job_id)["history"] if conn.exists(QUEUE_KEYS.job(job_id)) else []
        if history and job_id in second:
            failed = datetime.fromisoformat(history[-1]["at"]).timestamp()
            retry_late.append(second[job_id] - (failed + history[-1]["delay"]))
    tick_late = []
    for job_id, raw in conn.hgetall(TICKS).items():
        tick, job = float(raw), job_id.decode()
        if tick >= run_started and job in first:
            tick_late.append(first[job] - tick)
    print(
        f"{args.jobs} delayed jobs spread over {args.spread:g} s, {len(retries)} retries, cron every 1 s; "
        f"logs in {logs}"
    )
    print(summary("forgejobs delayed (enqueue at)", fj_late))
    print(summary("forgejobs retries (backoff 2 s)", retry_late))
    print(summary("forgejobs cron ticks (every 1 s)", tick_late))
    print(summary("raw RQ delayed (enqueue_at)", rq_late))
    for label, late in (("forgejobs", fj_late), ("raw RQ", rq_late)):
        early = [x for x in late if x < 0]
        worst = f", up to {-min(early):.3f} s early" if early else ""
        print(f"{label}: {len(early)} of {len(late)} delayed jobs started before they were due{worst}")
    missing = len(fj_delayed) - len(fj_late) + len(rq_delayed) - len(rq_late)
    if missing:
        print(f"{missing} delayed jobs never started: see the logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
