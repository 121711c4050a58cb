#!/usr/bin/env python
"""Throughput of forgejobs against raw RQ, in the same run, on the same Redis.

    python bench/throughput.py [--jobs N] [--repeat R] [--batches 100,1000] [--redis-url URL] [--breakdown]

Measures, each `--repeat` times (default 5; the table shows the median), the two sides of each
measurement back to back, alternating which goes first:

1. enqueue/s, single: `NoopJob.enqueue(n=i)` through a `Client(RQBackend(...))` against
   `Queue.enqueue(noop, i)` on a plain RQ `Queue` with RQ's defaults (pickle serializer).
2. enqueue/s, bulk: `NoopJob.enqueue_many([...])` against `Queue.enqueue_many([Queue.prepare_data(...)...],
   pipeline=pipe)` + `pipe.execute()`, one call per batch, for each batch size. Building the
   batch's items is inside the timing on both sides.
3. worker jobs/s on no-op jobs, two ways:
   a. "worker slot": the loop every `forgejobs worker` child process runs (`SlotWorker` from
      `make_slot`, SIGALRM timeouts, `work(max_jobs=N)` blocking on BLPOP over the queue's ten
      priority sub-queues), in this process, against raw RQ `SimpleWorker([queue]).work(max_jobs=N)`;
   b. "--threads": `forgejobs.worker.Worker` (queue "bench", concurrency=1, in this process,
      `run(burst=True, horizon=0)`; timer-thread timeouts) against `SimpleWorker([queue]).work(burst=True)`.
   N jobs are enqueued first (untimed). The rate is taken from the jobs' own RQ timestamps:
   (N - 1) / (last job's ended_at - first job's started_at), on both sides. So neither the
   start-up (threads, worker registration) nor forgejobs' burst exit detection (three idle
   polls 0.1 s apart, plus up to 1 s for the BLPOP of its worker thread to time out) is in
   the rate; the wall time of run()/work(), which includes them, is printed separately.
   RQ's worker runs with logging_level="WARNING", as forgejobs' worker does: RQ's default
   (INFO) would write three log lines per job to the terminal and measure the terminal.

Besides the rates, a second table shows per job: the CPU time of this process (all threads, so
for forgejobs' worker also its polling, scheduler and timer threads; far less disturbed by other
load on the machine than the rates are), and Redis commands, counted two ways:
- "cmds": exact, on the client side: every command this process sends (pipelined ones,
  MULTI/EXEC, WATCH, the worker's heartbeats and scheduler thread included) through a counting
  redis-py Connection class that both sides use.
- "INFO Δ": `INFO stats` total_commands_processed after minus before, server-wide. It
  includes any other client's commands on the same server, so the client-side count is the one
  to trust when the two disagree. For the worker row both include start-up and the idle
  polling until run()/work() returns.

Safety: the bench refuses to start unless the database in `--redis-url` (default
redis://127.0.0.1:6379/14) is empty. Because it was empty at start, every key in it afterwards
was made by the bench, so FLUSHDB of that one database (never FLUSHALL) is used to reset it
between measurements and to remove everything the bench made at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import redis.connection
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.utils import str_to_date

# `python bench/throughput.py` from the repo root: make `benchjobs` (bench/) and the working
# tree's `forgejobs` (repo root) importable, in this process and so in its in-process workers.
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchjobs import QUEUE, NoopJob, registry  # noqa: E402
from benchjobs.rqfuncs import noop  # noqa: E402

from forgejobs.backends.rq import RQBackend, install_runtime  # noqa: E402
from forgejobs.backends.stalls import Heartbeat  # noqa: E402
from forgejobs.client import Client, use_client  # noqa: E402
from forgejobs.execution import Runtime  # noqa: E402
from forgejobs.keys import rq_queue_name  # noqa: E402
from forgejobs.options import DEFAULT_PRIORITY  # noqa: E402
from forgejobs.settings import Settings  # noqa: E402
from forgejobs.worker import SlotWorker, Worker, make_slot  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/14"
RQ_QUEUE = "rqbench"
TARGET = 0.9  # forgejobs / RQ must be at least this
PREFILL_CHUNK = 1000


# -- counting Redis commands on the client side ------------------------------------------


class CommandCounter:
    """Commands sent by every CountingConnection of this process, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, names: Iterable[str]) -> None:
        with self._lock:
            self._counts.update(names)

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts


COUNTER = CommandCounter()


def _command_name(args: tuple[Any, ...] | list[Any]) -> str:
    name = args[0] if args else "?"
    if isinstance(name, bytes):
        name = name.decode()
    return str(name).split(" ", 1)[0].upper()


class CountingConnection(redis.connection.Connection):
    """A redis-py Connection that counts what it sends: single commands and pipelines alike."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        COUNTER.add([_command_name(args)])
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        COUNTER.add([_command_name(c) for c in commands])
        return super().pack_commands(commands)


# -- measurements ------------------------------------------------------------------------


@dataclass
class Sample:
    jobs: int
    seconds: float
    commands: Counter[str]  # client-side, exact
    server_commands: int  # INFO total_commands_processed delta, server-wide
    cpu: float  # CPU seconds of this process (all threads) during the run
    wall: float | None = None  # worker rows: run()/work() from call to return
    intervals: int | None = None  # worker rows: N - 1 job-to-job intervals in `seconds`

    @property
    def rate(self) -> float:
        return (self.intervals or self.jobs) / self.seconds

    @property
    def cmds_per_job(self) -> float:
        return sum(self.commands.values()) / self.jobs

    @property
    def server_per_job(self) -> float:
        return self.server_commands / self.jobs

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu / self.jobs * 1e6


@dataclass
class Case:
    title: str
    forgejobs: list[Sample] = field(default_factory=list)
    rq: list[Sample] = field(default_factory=list)


@dataclass
class Timed:
    """What one timed run returns: how many jobs, over how many seconds."""

    jobs: int
    seconds: float
    wall: float | None = None
    intervals: int | None = None


class Bench:
    def __init__(self, url: str, jobs: int) -> None:
        self.url = url
        self.jobs = jobs
        # `admin` (not counted) checks, resets and reads timestamps; `conn` is what both sides use.
        self.admin = redis.Redis.from_url(url)
        self.conn = redis.Redis.from_url(url, connection_class=CountingConnection)
        self.settings = Settings(redis_url=url)
        self.registry = registry()

    # -- helpers -----------------------------------------------------------------------

    def reset(self) -> None:
        # The database was empty when the bench started (checked in main), so all its keys are ours.
        self.admin.flushdb()

    def server_total(self) -> int:
        return int(self.admin.info("stats")["total_commands_processed"])

    def measure(self, run: Callable[[], Timed]) -> Sample:
        COUNTER.take()
        before = self.server_total()
        cpu = time.process_time()
        timed = run()
        cpu = time.process_time() - cpu
        after = self.server_total()
        commands = COUNTER.take()
        # `after` counts the `before` INFO call (a command is counted once it has run).
        return Sample(timed.jobs, timed.seconds, commands, after - before - 1, cpu, timed.wall, timed.intervals)

    def client(self) -> Client:
        return Client(RQBackend(self.conn), self.registry)

    def rq_queue(self) -> Queue:
        return Queue(RQ_QUEUE, connection=self.conn)  # RQ's defaults: pickle serializer, 180 s timeout

    def window(self, ids: list[str]) -> float:
        """Seconds from the first job's start to the last job's end, from RQ's own job hashes."""
        with self.admin.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", "started_at", "ended_at")
            rows = pipe.execute()
        if any(not started or not ended for started, ended in rows):
            raise RuntimeError("some bench jobs have no started_at/ended_at: did they all run?")
        first = min(str_to_date(started) for started, _ in rows)
        last = max(str_to_date(ended) for _, ended in rows)
        return (last - first).total_seconds()

    # -- 1. enqueue, single --------------------------------------------------------------

    def fj_single(self, n: int) -> Sample:
        client = self.client()
        with use_client(client):

            def run() -> Timed:
                t0 = time.perf_counter()
                for i in range(n):
                    NoopJob.enqueue(n=i)
                return Timed(n, time.perf_counter() - t0)

            return self.measure(run)

    def rq_single(self, n: int) -> Sample:
        queue = self.rq_queue()

        def run() -> Timed:
            t0 = time.perf_counter()
            for i in range(n):
                queue.enqueue(noop, i)
            return Timed(n, time.perf_counter() - t0)

        return self.measure(run)

    # -- 2. enqueue, bulk ----------------------------------------------------------------

    def fj_bulk(self, n: int, batch: int) -> Sample:
        client = self.client()
        with use_client(client):

            def run() -> Timed:
                t0 = time.perf_counter()
                for start in range(0, n, batch):
                    NoopJob.enqueue_many([{"n": i} for i in range(start, start + batch)])
                return Timed(n, time.perf_counter() - t0)

            return self.measure(run)

    def rq_bulk(self, n: int, batch: int) -> Sample:
        queue = self.rq_queue()

        def run() -> Timed:
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                with self.conn.pipeline() as pipe:
                    queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(start, start + batch)], pipe)
                    pipe.execute()
            return Timed(n, time.perf_counter() - t0)

        return self.measure(run)

    # -- 3. worker ---

    def prefill_forgejobs(self, n: int) -> list[str]:
        """Enqueue n no-op jobs (untimed) and return their ids."""
        ids: list[str] = []
        with use_client(self.client()):
            for start in range(0, n, PREFILL_CHUNK):
                count = min(PREFILL_CHUNK, n - start)
                ids.extend(h.id for h in NoopJob.enqueue_many([{"n": i} for i in range(start, start + count)]))
        return ids

    def prefill_rq(self, n: int) -> tuple[Queue, list[str]]:
        queue = self.rq_queue()
        ids: list[str] = []
        for start in range(0, n, PREFILL_CHUNK):
            count = min(PREFILL_CHUNK, n - start)
            with self.conn.pipeline() as pipe:
                jobs = queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(start, start + count)], pipe)
                pipe.execute()
            ids.extend(j.id for j in jobs)
        return queue, ids

    # -----------------------------------------------------------------------

    def fj_worker(self, n: int) -> Sample:
        ids = self.prefill_forgejobs(n)
        worker = Worker(self.settings, self.registry, queues=[QUEUE], concurrency=1, connection=self.conn)

        def run() -> Timed:
            with restored_signals():
                t0 = time.perf_counter()
                worker.run(burst=True, horizon=0)
                wall = time.perf_counter() - t0
            return Timed(n, 0.0, wall, intervals=n - 1)  # seconds: from the job hashes, below

        sample = self.measure(run)
        # Checks and timestamps are read after the measurement, so that neither their commands nor
        # their CPU time count.
        if any(t.is_alive() for t in getattr(worker, "_threads", [])):
            raise RuntimeError("forgejobs worker threads still alive after run()")
        if worker.stats.counts != Counter(succeeded=n):
            raise RuntimeError(f"forgejobs worker outcomes {dict(worker.stats.counts)}, expected {n} succeeded")
        waiting = self.admin.llen(f"rq:queue:{rq_queue_name(QUEUE, DEFAULT_PRIORITY)}")
        if waiting:
            raise RuntimeError(f"{waiting} forgejobs jobs left on the queue")
        sample.seconds = self.window(ids)
        return sample

    def fj_slot(self, n: int) -> Sample:
        """The loop each `forgejobs worker` child runs (SlotWorker, SIGALRM timeouts), in this process."""
        ids = self.prefill_forgejobs(n)
        backend = RQBackend(self.conn)
        # As a `forgejobs worker` child builds it: with its heartbeat, which also writes the job's events.
        beat = Heartbeat(self.conn, backend.keys, self.settings.stall_timeout, backend.events)
        name = f"bench-slot-{os.getpid()}"
        slot = make_slot(SlotWorker, self.conn, backend.dead_letters, QUEUE, name, heartbeat=beat)
        install_runtime(Runtime(self.registry, backend.dead_letters, events=beat.emit))

        def run() -> Timed:
            with restored_signals():
                t0 = time.perf_counter()
                slot.work(burst=False, max_jobs=n, logging_level="WARNING")
                wall = time.perf_counter() - t0
            return Timed(n, 0.0, wall, intervals=n - 1)

        try:
            sample = self.measure(run)
        finally:
            install_runtime(None)
        sample.seconds = self.window(ids)
        return sample

    def rq_slot(self, n: int) -> Sample:
        """Raw RQ's SimpleWorker in the same blocking (non-burst) mode, stopping after n jobs."""
        queue, ids = self.prefill_rq(n)
        worker = SimpleWorker([queue], connection=self.conn)

        def run() -> Timed:
            with restored_signals():
                t0 = time.perf_counter()
                worker.work(burst=False, max_jobs=n, logging_level="WARNING")
                wall = time.perf_counter() - t0
            return Timed(n, 0.0, wall, intervals=n - 1)

        sample = self.measure(run)
        sample.seconds = self.window(ids)
        return sample

    def rq_worker(self, n: int) -> Sample:
        queue, ids = self.prefill_rq(n)
        worker = SimpleWorker([queue], connection=self.conn)

        def run() -> Timed:
            with restored_signals():
                t0 = time.perf_counter()
                worker.work(burst=True, logging_level="WARNING")
                wall = time.perf_counter() - t0
            return Timed(n, 0.0, wall, intervals=n - 1)  # seconds: from the job hashes, below

        sample = self.measure(run)
        checked = Queue(RQ_QUEUE, connection=self.admin)
        finished = FinishedJobRegistry(queue=checked).count
        failed = FailedJobRegistry(queue=checked).count
        if finished != n or failed or checked.count:
            raise RuntimeError(f"RQ worker: {finished} finished, {failed} failed, {checked.count} left of {n}")
        sample.seconds = self.window(ids)
        return sample


@contextlib.contextmanager
def restored_signals() -> Iterator[None]:
    """Both workers install SIGINT/SIGTERM handlers in the main thread; put ours back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# -- report --------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def med_sample(samples: list[Sample]) -> Sample:
    return sorted(samples, key=lambda s: s.rate)[len(samples) // 2]


def describe_environment(bench: Bench) -> str:
    server = bench.admin.info("server")["redis_version"]
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "forgejobs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        tree = f"git {head}{' + uncommitted changes in forgejobs/' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        tree = "git: unknown"
    return (
        f"forgejobs {version('forgejobs')} ({tree}) | rq {version('rq')} | redis-py {version('redis')} | "
        f"Redis server {server} | Python {sys.version.split()[0]}"
    )


def print_table(cases: list[Case], repeat: int) -> None:
    rows = []
    for case in cases:
        fj = median(s.rate for s in case.forgejobs)
        rq = median(s.rate for s in case.rq)
        paired = median(f.rate / r.rate for f, r in zip(case.forgejobs, case.rq))
        rows.append((case, fj, rq, fj / rq, paired))

    head = f"{'measurement':<30} {'forgejobs/s':>12} {'RQ/s':>10} {'fj/RQ':>7}  {'target':<8} {'paired fj/RQ':>12}"
    print(head)
    print("-" * len(head))
    for case, fj, rq, ratio, paired in rows:
        verdict = "ok" if ratio >= TARGET else f"< {TARGET}"
        print(f"{case.title:<30} {fj:>12,.0f} {rq:>10,.0f} {ratio:>7.3f}  {verdict:<8} {paired:>12.3f}")
    print(
        f"(rates: median of {repeat} runs; fj/RQ = ratio of the medians; paired = median of the per-run ratios,"
        " each run's two sides measured back to back)"
    )

    print()
    head = (
        f"{'per job':<30} {'CPU µs fj':>10} {'CPU µs RQ':>10} {'cmds fj':>8} {'cmds RQ':>8}"
        f" {'INFO Δ fj':>10} {'INFO Δ RQ':>10}"
    )
    print(head)
    print("-" * len(head))
    for case, *_ in rows:
        fj_s, rq_s = case.forgejobs, case.rq
        cells = [
            median(s.cpu_us_per_job for s in fj_s),
            median(s.cpu_us_per_job for s in rq_s),
            median(s.cmds_per_job for s in fj_s),
            median(s.cmds_per_job for s in rq_s),
            median(s.server_per_job for s in fj_s),
            median(s.server_per_job for s in rq_s),
        ]
        widths = [(10, 1), (10, 1), (8, 2), (8, 2), (10, 2), (10, 2)]
        print(f"{case.title:<30}" + "".join(f" {v:>{w}.{p}f}" for v, (w, p) in zip(cells, widths)))
    print(
        "(CPU: this process, all threads; cmds: Redis commands sent, counted in the client; INFO Δ: server-wide"
        " total_commands_processed delta, includes other clients of the server)"
    )

    print()
    print("every run, jobs/s:")
    for case in cases:
        fj_runs = ", ".join(f"{s.rate:,.0f}" for s in case.forgejobs)
        rq_runs = ", ".join(f"{s.rate:,.0f}" for s in case.rq)
        print(f"  {case.title:<30} forgejobs [{fj_runs}]  RQ [{rq_runs}]")
    for case in cases:
        if case.forgejobs[0].wall is None:
            continue
        fj_wall = median(s.wall or 0.0 for s in case.forgejobs)
        rq_wall = median(s.wall or 0.0 for s in case.rq)
        print(
            f"  {case.title}: rate = (N - 1) / (last ended_at - first started_at). Wall time of the whole"
            f" run()/work() call (start-up and exit detection included; not used): forgejobs {fj_wall:.2f} s,"
            f" RQ {rq_wall:.2f} s"
        )


def print_breakdown(cases: list[Case]) -> None:
    print()
    print("Redis commands per job, by command (client-side count, summed over all runs):")
    for case in cases:
        for side, samples in (("forgejobs", case.forgejobs), ("RQ", case.rq)):
            total: Counter[str] = Counter()
            jobs = 0
            for s in samples:
                total.update(s.commands)
                jobs += s.jobs
            parts = ", ".join(
                f"{name} {count / jobs:.2f}" for name, count in total.most_common() if count / jobs >= 0.005
            )
            print(f"  {case.title} / {side}: {parts}")


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per measurement (default 1000: ~40 s in all)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement (default 5)")
    parser.add_argument("--batches", default="100,1000", help="enqueue_many batch sizes (default 100,1000)")
    parser.add_argument("--redis-url", default=DEFAULT_URL, help=f"an EMPTY database to use (default {DEFAULT_URL})")
    parser.add_argument("--breakdown", action="store_true", help="also print commands per job by command name")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.jobs < 2 or args.repeat < 1 or any(b < 1 for b in args.batches):
        parser.error("--jobs must be >= 2, --repeat >= 1 and batch sizes >= 1")
    return args


def run_all(bench: Bench, n: int, repeat: int, batches: list[int]) -> list[Case]:
    plan: list[tuple[Case, Callable[[], Sample], Callable[[], Sample]]] = []
    single = Case("enqueue, single")
    plan.append((single, lambda: bench.fj_single(n), lambda: bench.rq_single(n)))
    for batch in batches:
        count = max(batch, n - n % batch)
        case = Case(f"enqueue_many, batch {batch}")
        plan.append((case, lambda c=count, b=batch: bench.fj_bulk(c, b), lambda c=count, b=batch: bench.rq_bulk(c, b)))
    slot = Case("worker slot (forgejobs worker's child loop)")
    plan.append((slot, lambda: bench.fj_slot(n), lambda: bench.rq_slot(n)))
    worker = Case("worker --threads, 1 thread")
    plan.append((worker, lambda: bench.fj_worker(n), lambda: bench.rq_worker(n)))

    # Warm-up (not recorded): imports, pydantic and RQ first-call costs, connections.
    warm = min(n, 200)
    for warm_up in (bench.fj_single, bench.rq_single, bench.fj_slot, bench.rq_slot, bench.fj_worker, bench.rq_worker):
        bench.reset()
        warm_up(warm)
    for rep in range(repeat):
        for case, fj, rq in plan:
            sides = [(case.forgejobs, fj), (case.rq, rq)]
            for samples, measure in sides if rep % 2 == 0 else reversed(sides):
                bench.reset()
                samples.append(measure())
        print(f"  run {rep + 1}/{repeat} done", file=sys.stderr, flush=True)
    return [case for case, _, _ in plan]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # keep order with stderr progress
    bench = Bench(args.redis_url, args.jobs)
    size = bench.admin.dbsize()
    if size:
        print(
            f"refusing to run: {args.redis_url} holds {size} keys; the bench needs an empty database "
            "(it deletes everything in it when done). Pick another with --redis-url.",
            file=sys.stderr,
        )
        return 2
    print(describe_environment(bench))
    print(
        f"{args.redis_url}, {args.jobs} jobs per measurement, median of {args.repeat} runs; "
        f"ratio = forgejobs / RQ, target >= {TARGET}"
    )
    started = time.perf_counter()
    try:
        cases = run_all(bench, args.jobs, args.repeat, args.batches)
    finally:
        # Empty at start (checked above), so everything in this database is the bench's own.
        bench.admin.flushdb()
        bench.conn.close()
    print()
    print_table(cases, args.repeat)
    if args.breakdown:
        print_breakdown(cases)
    print(f"\ntotal bench time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
