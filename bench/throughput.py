#!/usr/bin/env python
"""forgejobs' runtime against raw RQ's `SimpleWorker`, in one run, on the same Redis: one table.

    python bench/throughput.py [--jobs 5000] [--repeat 3] [--sleep-jobs 200] [--latency-samples 200]
                               [--delayed-jobs 100] [--batches 100,1000] [--redis-url URL]
                               [--skip-pss] [--breakdown] [--profile]

Each measurement runs `--repeat` times (default 3) after an unrecorded warm-up; forgejobs and RQ are
measured back to back, alternating which goes first. Both run in this process (forgejobs' `Worker`
as threads, RQ's `SimpleWorker` in the main thread) on one redis-py connection pool whose
`CountingConnection` counts what is sent. RQ runs with its defaults (pickle, 180 s timeout) and
`logging_level="WARNING"`, as forgejobs' worker logs (RQ's INFO would write three lines per job to
the terminal and measure the terminal).

1. No-op jobs/s, one worker process. N (`--jobs`) jobs are enqueued first (untimed); then
   forgejobs' `Worker(concurrency=1)` and `Worker(concurrency=10)` (`start()`, stopped as soon
   as its `on_outcome` has seen N outcomes, so burst-exit detection is never in it) and RQ's
   `SimpleWorker.work(burst=True)`. SimpleWorker is a single slot: the concurrency-10 row
   compares against that same single SimpleWorker. The rate is (N - 1) / (last finish - first
   finish), the finish times read back from Redis afterwards: the job hash's `ft` (ms, Redis
   clock) for forgejobs, RQ's `ended_at`. That is the first job's start to the last job's
   finish less one no-op job, so the start-up of either worker is not in it; the rate over the
   whole call (start-up included) is printed under "details". The bench queue keeps every finished
   job (its retention count is off) so that all N finish times are there to read; retention is
   an upkeep pass every 5 s (about one DEL per job when it deletes), on no job's own path.
2. 50 ms I/O-bound jobs/s (`time.sleep(0.05)`): `--sleep-jobs` jobs at concurrency 10 and a fifth
   of them at concurrency 1 (forgejobs; same process), RQ's SimpleWorker on the fifth. The jobs
   record their own start and end; rate = jobs / (last end - first start). The speed-up
   c10 / c1 is printed (target >= 9x).
3. Redis commands per job as the server counts them: the `INFO commandstats` delta (calls summed
   over every cmdstat_* entry, which includes commands run inside Lua scripts) over the
   measurement, less the one INFO call that is inside it, divided by the jobs. Enqueue side from
   the single-enqueue run, worker side from the no-op runs (start-up and stop included), total =
   both. Round trips per job are counted in the client: one per single command or pipeline
   execute. The server's counts are server-wide, so every run also compares the request bytes
   the server read (INFO stats total_net_input_bytes delta) with the bytes this process sent: a
   run where the server read more was disturbed by another client. The table shows the median of
   the undisturbed runs; if every run was disturbed, the lowest (other clients only add), marked *.
   Reference targets from the issue: <= 2 round trips, <= 12 commands per job (BullMQ measured 24,
   Huey 3).
4. Pick-up latency: one idle worker (concurrency 1) waits; a `StartStamp` job is enqueued every
   ~5 ms (`--latency-spacing`) once the previous one started; latency = the time.time() the job
   records when it starts - the time.time() just before the enqueue call. `--latency-samples`
   per run (after 5 unrecorded), all runs pooled for p50/p99. RQ: SimpleWorker blocking in its
   BLPOP, the enqueues from a second thread.
5. Delayed-job lateness (forgejobs only: RQ's scheduler is a separate polling loop, not comparable):
   `--delayed-jobs` StartStamp jobs enqueued with `with_options(delay=...)`, delays uniform over
   0.2-2 s, one idle worker; lateness = start - (time.time() before the enqueue call + delay),
   which is at most a few µs later than the due time the client computes. Pooled over runs.
6. Enqueue/s: `NoopJob.enqueue(n=i)` against `Queue.enqueue(noop, i)`; `NoopJob.enqueue_many`
   against `Queue.enqueue_many([...prepare_data...], pipeline=pipe)` + `pipe.execute()`, per batch
   size, building the items inside the timing on both sides. For reference, redis-py PINGs/s on
   the same connection: the ceiling of anything that waits for one round trip per call.
7. Redis bytes per waiting job: after one job (so the list, marker and stream exist), 1000 more
   jobs with the catalog's `email.welcome-email` payload (`user_id` = "usr_" + 24 hex) enqueued one
   by one; `INFO memory` used_memory delta / 1000. Also `MEMORY USAGE` of one job hash (mean of 20)
   plus the per-job share of the wait list (and, forgejobs, of the event stream, which the
   "enqueued" event grows until its cap). RQ: `Queue.enqueue(welcome_email, user_id)`.
8. Worker PSS: `python -m forgejobs.cli worker` (and `--processes`) as a subprocess on the catalog
   (FORGEJOBS_JOBS=jobs, FORGEJOBS_SPECS=specs, its SQLite/outbox/storage in a temp dir), cwd the
   repo root; once every slot of the eight queues holds a lease (the `forgejobs:{q}:workers` sets),
   and 1 s more, the Pss of /proc/<pid>/smaps_rollup summed over the process and its children;
   then SIGTERM to that PID. Measured once per bench run (it hardly varies).

`--profile` adds a cProfile of forgejobs' worker loop on N no-op jobs at concurrency 1: the slot
thread's top 15 by cumulative and by own time, and the upkeep thread's (events, leases) top 8.
`--breakdown` adds the server's command counts per job by command name.

Safety: the bench refuses to start unless the database in `--redis-url` (default
redis://127.0.0.1:6379/14) is empty. Because it was empty at start, every key in it afterwards was
made by the bench, so FLUSHDB of that one database (never FLUSHALL) resets it between measurements
and removes everything the bench made at the end, also on error or Ctrl-C. Worker subprocesses
are stopped by their PID.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
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

from benchjobs import QUEUE, NoopJob, SleepJob, StartStamp, WelcomeEmail, registry  # noqa: E402
from benchjobs.rqfuncs import noop, sleep50, stamp, welcome_email  # noqa: E402
from benchjobs.timing import RECORDER  # noqa: E402

from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.client import Client, use_client  # noqa: E402
from forgejobs.keys import Keys  # noqa: E402
from forgejobs.runtime.worker import Worker  # noqa: E402
from forgejobs.settings import Settings  # noqa: E402
from forgejobs.specs import load_specs  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/14"
RQ_QUEUE = "rqbench"
RQ_EMAIL_QUEUE = "rqemail"
PREFILL_CHUNK = 1000
WARM_SAMPLES = 5  # pick-up samples dropped at the start of each run
MEMORY_JOBS = 1000
SPECS_DIR = REPO_ROOT / "specs"

TARGET_SINGLE = 10_000
TARGET_BULK = 23_000
TARGET_SPEEDUP = 9.0
TARGET_COMMANDS = 12
TARGET_TRIPS = 2
TARGET_LATE_MS = 50
TARGET_BYTES = 1024
TARGET_PSS_MB = 250


# -- counting Redis commands on the client side ------------------------------------------


class CommandCounter:
    """Commands, round trips and request bytes sent by every CountingConnection of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._trips = 0
        self._bytes = 0

    def add(self, names: Iterable[str]) -> None:
        with self._lock:
            self._counts.update(names)
            self._trips += 1

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes += n

    def take(self) -> tuple[Counter[str], int, int]:
        with self._lock:
            taken = self._counts, self._trips, self._bytes
            self._counts, self._trips, self._bytes = Counter(), 0, 0
        return taken


COUNTER = CommandCounter()


def _command_name(args: tuple[Any, ...] | list[Any]) -> str:
    name = args[0] if args else "?"
    if isinstance(name, bytes):
        name = name.decode()
    return str(name).split(" ", 1)[0].upper()


def resp_length(*args: str) -> int:
    """Bytes of a command as a RESP array of bulk strings (what the server reads)."""
    return len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n{a}\r\n") for a in args)


INFO_REQUEST = resp_length("INFO", "commandstats", "stats")


class CountingConnection(redis.connection.Connection):
    """A redis-py Connection that counts what it sends: a single command or a whole pipeline is one
    round trip (redis-py sends a pipeline, MULTI/EXEC included, with one `pack_commands`), and the
    bytes, which tell whether another client used the server during a measurement."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        COUNTER.add([_command_name(args)])
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        COUNTER.add([_command_name(c) for c in commands])
        return super().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if isinstance(command, (bytes, bytearray, memoryview, str)):
            COUNTER.add_bytes(len(command))
        else:
            COUNTER.add_bytes(sum(len(chunk) for chunk in command))
        super().send_packed_command(command, check_health)


# -- samples ---------------------------------------------------------------------------


@dataclass
class Timed:
    """What one timed run returns."""

    jobs: int
    seconds: float = 0.0
    wall: float | None = None


@dataclass
class Sample:
    jobs: int
    seconds: float  # the window the rate is taken over
    commands: Counter[str]  # client-side, exact
    trips: int  # client-side round trips
    server: int  # INFO commandstats delta (calls), server-wide
    cpu: float  # CPU seconds of this process (all threads)
    server_by_name: Counter[str] = field(default_factory=Counter)  # the same delta, by command
    foreign: int = 0  # request bytes the server read from other clients meanwhile (0: a clean count)
    wall: float | None = None  # whole call, start-up included
    intervals: int | None = None  # rate = intervals / seconds (None: jobs / seconds)
    values: list[float] = field(default_factory=list)  # latencies, lateness, bytes, ...

    @property
    def rate(self) -> float:
        return (self.intervals or self.jobs) / self.seconds

    @property
    def wall_rate(self) -> float | None:
        return self.jobs / self.wall if self.wall else None

    @property
    def server_per_job(self) -> float:
        return self.server / self.jobs

    @property
    def trips_per_job(self) -> float:
        return self.trips / self.jobs

    @property
    def sent_per_job(self) -> float:
        return sum(self.commands.values()) / self.jobs

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu / self.jobs * 1e6


class Countdown:
    """An `on_outcome` callback that sets `done` once it has seen `n` outcomes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self, name: str, outcome: object) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.n:
                self.done.set()


@dataclass
class Pss:
    mode: str
    kb: int
    processes: int
    slots: int
    seconds_to_ready: float


@contextlib.contextmanager
def restored_signals() -> Iterator[None]:
    """RQ's worker installs SIGINT/SIGTERM handlers in the main thread; put ours back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stopped_by_signal(worker: SimpleWorker) -> None:
    """RQ's worker turns Ctrl-C into a stop request and returns: turn it back into the interrupt."""
    if getattr(worker, "_stop_requested", False):
        raise KeyboardInterrupt("RQ worker stopped by a signal")


def user_id() -> str:
    return "usr_" + secrets.token_hex(12)


# -- the measurements --------------------------------------------------------------------


class Bench:
    def __init__(self, url: str) -> None:
        self.url = url
        # `admin` (not counted) checks, resets and reads results; `conn` is what both sides use.
        self.admin = redis.Redis.from_url(url)
        self.conn = redis.Redis.from_url(url, connection_class=CountingConnection)
        # Explicit, so that FORGEJOBS_* in the environment cannot add hooks or change the keys.
        self.settings = Settings(redis_url=url, hooks=None, key_prefix="forgejobs")
        self.keys = Keys(self.settings.key_prefix)
        self.qkeys = self.keys.queue(QUEUE)
        # keep_all: no retention count on the bench queue, so the finish times of all N jobs can be read
        # back; retention runs from the upkeep thread every 5 s, never on a job's own path.
        self.registry = registry(keep_all=True)
        self.admin_backend = RedisBackend(self.admin, self.keys)

    # -- helpers -----------------------------------------------------------------------

    def reset(self) -> None:
        # The database was empty when the bench started (checked in main), so all its keys are ours.
        self.admin.flushdb()
        RECORDER.clear()

    def server_snapshot(self) -> tuple[Counter[str], int]:
        """Calls by command (INFO commandstats, Lua's inner commands included) and the request bytes the
        server has read (INFO stats total_net_input_bytes), in one INFO call."""
        info = self.admin.info("commandstats", "stats")
        calls = Counter({k[8:]: int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")})
        return calls, int(info["total_net_input_bytes"])

    def used_memory(self) -> tuple[int, int]:
        info = self.admin.info("memory")
        return int(info["used_memory"]), int(info["used_memory_dataset"])

    def measure(self, run: Callable[[], Timed]) -> Sample:
        COUNTER.take()
        before, read_before = self.server_snapshot()
        cpu = time.process_time()
        timed = run()
        cpu = time.process_time() - cpu
        after, read_after = self.server_snapshot()
        commands, trips, sent = COUNTER.take()
        # `after` counts the `before` INFO call (a command is counted once it has run); the bytes read
        # include the `after` INFO request (read before it runs). Whatever else the server read came
        # from another client, whose commands are then in the delta too.
        delta = Counter({name: after[name] - before.get(name, 0) for name in after})
        delta["info"] -= 1
        delta = +delta
        foreign = read_after - read_before - sent - INFO_REQUEST
        return Sample(
            timed.jobs,
            timed.seconds,
            commands,
            trips,
            sum(delta.values()),
            cpu,
            server_by_name=delta,
            foreign=foreign,
            wall=timed.wall,
        )

    def client(self) -> Client:
        return Client(RedisBackend(self.conn, self.keys), self.registry)

    def rq_queue(self, name: str = RQ_QUEUE) -> Queue:
        return Queue(name, connection=self.conn)  # RQ's defaults: pickle serializer, 180 s timeout

    def worker(self, concurrency: int, countdown: Countdown | None = None) -> Worker:
        return Worker(
            self.settings,
            self.registry,
            queues=[QUEUE],
            concurrency=concurrency,
            connection=self.conn,
            resources=object(),  # not the catalog's: load_resources would build its SQLite database
            hooks=None,
            on_outcome=countdown.hit if countdown else None,
        )

    @contextlib.contextmanager
    def running(self, worker: Worker) -> Iterator[Worker]:
        """A started worker, stopped (running jobs finish) and joined on the way out, also on error."""
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()
            if not worker.join(30):
                raise RuntimeError("forgejobs worker did not stop within 30 s")

    def prefill_fj(self, n: int, make: Callable[[int], dict[str, Any]], job: Any = NoopJob) -> list[str]:
        """Enqueue n jobs (untimed) and return their ids."""
        ids: list[str] = []
        with use_client(self.client()):
            for start in range(0, n, PREFILL_CHUNK):
                count = min(PREFILL_CHUNK, n - start)
                ids.extend(h.id for h in job.enqueue_many([make(i) for i in range(start, start + count)]))
        return ids

    def prefill_rq(self, n: int, func: Callable[..., Any]) -> tuple[Queue, list[str]]:
        queue = self.rq_queue()
        ids: list[str] = []
        for start in range(0, n, PREFILL_CHUNK):
            count = min(PREFILL_CHUNK, n - start)
            with self.conn.pipeline() as pipe:
                jobs = queue.enqueue_many([Queue.prepare_data(func, (i,)) for i in range(start, start + count)], pipe)
                pipe.execute()
            ids.extend(j.id for j in jobs)
        return queue, ids

    def check_fj(self, worker: Worker, n: int) -> None:
        if worker.stats.counts != Counter(succeeded=n):
            raise RuntimeError(f"forgejobs worker outcomes {dict(worker.stats.counts)}, expected {n} succeeded")
        left = self.admin_backend.pending([QUEUE])
        if left:
            raise RuntimeError(f"{left} forgejobs jobs still waiting or running")

    def check_rq(self, n: int) -> None:
        checked = Queue(RQ_QUEUE, connection=self.admin)
        finished = FinishedJobRegistry(queue=checked).count
        failed = FailedJobRegistry(queue=checked).count
        if finished != n or failed or checked.count:
            raise RuntimeError(f"RQ worker: {finished} finished, {failed} failed, {checked.count} left of {n}")

    def fj_finish_window(self, ids: list[str]) -> float:
        """Seconds from the first job's finish to the last's, from the job hashes' `ft` (ms, Redis clock)."""
        with self.admin.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.qkeys.job(job_id), "ft")
            finishes = pipe.execute()
        if not all(finishes):
            raise RuntimeError("some forgejobs bench jobs have no finish time: did they all run?")
        ms = [int(f) for f in finishes]
        return max(1, max(ms) - min(ms)) / 1000

    def rq_finish_window(self, ids: list[str]) -> float:
        with self.admin.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(f"rq:job:{job_id}", "ended_at")
            ends = pipe.execute()
        if not all(ends):
            raise RuntimeError("some RQ bench jobs have no ended_at: did they all run?")
        moments = [str_to_date(e) for e in ends]
        return (max(moments) - min(moments)).total_seconds()

    @staticmethod
    def sleep_window(n: int) -> float:
        """Seconds from the first sleep job's start to the last one's end, as the jobs recorded them."""
        if len(RECORDER.starts) != n or len(RECORDER.ends) != n:
            raise RuntimeError(f"{len(RECORDER.ends)} of {n} sleep jobs recorded their end")
        return max(RECORDER.ends.values()) - min(RECORDER.starts.values())

    # -- 1. no-op jobs / 2. sleep jobs: forgejobs -----------------------------------------

    def fj_work(
        self, n: int, concurrency: int, job: Any, make: Callable[[int], dict[str, Any]]
    ) -> tuple[Sample, list[str]]:
        ids = self.prefill_fj(n, make, job)
        countdown = Countdown(n)
        worker = self.worker(concurrency, countdown)

        def run() -> Timed:
            t0 = time.perf_counter()
            with self.running(worker):
                if not countdown.done.wait(timeout=120 + n / 50):
                    raise RuntimeError(f"forgejobs worker ran {countdown.count} of {n} jobs")
                wall = time.perf_counter() - t0
            return Timed(n, wall=wall)

        sample = self.measure(run)
        # Checks and timestamps are read after the measurement: neither their commands nor their CPU count.
        self.check_fj(worker, n)
        return sample, ids

    def fj_noop(self, n: int, concurrency: int) -> Sample:
        sample, ids = self.fj_work(n, concurrency, NoopJob, lambda i: {"n": i})
        sample.seconds = self.fj_finish_window(ids)
        sample.intervals = n - 1
        return sample

    def fj_sleep(self, n: int, concurrency: int) -> Sample:
        sample, _ = self.fj_work(n, concurrency, SleepJob, lambda i: {"n": i})
        sample.seconds = self.sleep_window(n)
        return sample

    # -- 1. no-op jobs / 2. sleep jobs: RQ -----------------------------------------------

    def rq_work(self, n: int, func: Callable[..., Any]) -> tuple[Sample, list[str]]:
        queue, ids = self.prefill_rq(n, func)
        worker = SimpleWorker([queue], connection=self.conn)

        def run() -> Timed:
            with restored_signals():
                t0 = time.perf_counter()
                worker.work(burst=True, logging_level="WARNING")
                wall = time.perf_counter() - t0
            stopped_by_signal(worker)
            return Timed(n, wall=wall)

        sample = self.measure(run)
        self.check_rq(n)
        return sample, ids

    def rq_noop(self, n: int) -> Sample:
        sample, ids = self.rq_work(n, noop)
        sample.seconds = self.rq_finish_window(ids)
        sample.intervals = n - 1
        return sample

    def rq_sleep(self, n: int) -> Sample:
        sample, _ = self.rq_work(n, sleep50)
        sample.seconds = self.sleep_window(n)
        return sample

    # -- 6. enqueue ------------------------------------------------------------------------

    def fj_single(self, n: int) -> Sample:
        with use_client(self.client()):

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

    def fj_bulk(self, n: int, batch: int) -> Sample:
        with use_client(self.client()):

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

    def ping(self, n: int) -> Sample:
        """The ceiling for anything that takes one round trip: redis-py PINGs, one after another."""

        def run() -> Timed:
            t0 = time.perf_counter()
            for _ in range(n):
                self.conn.ping()
            return Timed(n, time.perf_counter() - t0)

        return self.measure(run)

    # -- 4. pick-up latency ----------------------------------------------------------------

    def fj_pickup(self, samples: int, spacing: float) -> Sample:
        worker = self.worker(1)
        latencies: list[float] = []

        def run() -> Timed:
            with self.running(worker), use_client(self.client()):
                time.sleep(0.5)  # registered, idle, waiting
                for i in range(WARM_SAMPLES + samples):
                    tag = f"p{i}"
                    t0 = time.time()
                    StartStamp.enqueue(tag=tag)
                    started = RECORDER.wait(tag, 10)
                    if started is None:
                        raise RuntimeError(f"forgejobs pick-up job {i} did not start within 10 s")
                    if i >= WARM_SAMPLES:
                        latencies.append(started - t0)
                    time.sleep(spacing)
            return Timed(WARM_SAMPLES + samples)

        sample = self.measure(run)
        sample.values = latencies
        return sample

    def rq_pickup(self, samples: int, spacing: float) -> Sample:
        queue = self.rq_queue()
        worker = SimpleWorker([queue], connection=self.conn)
        total = WARM_SAMPLES + samples
        latencies: list[float] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def feed() -> None:
            try:
                time.sleep(0.5)  # registered, idle, blocking in BLPOP
                for i in range(total):
                    if stop.is_set():
                        return
                    tag = f"p{i}"
                    t0 = time.time()
                    queue.enqueue(stamp, tag)
                    started = RECORDER.wait(tag, 10)
                    if started is None:
                        raise RuntimeError(f"RQ pick-up job {i} did not start within 10 s")
                    if i >= WARM_SAMPLES:
                        latencies.append(started - t0)
                    time.sleep(spacing)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        def run() -> Timed:
            feeder = threading.Thread(target=feed, name="bench-rq-feeder", daemon=True)
            feeder.start()
            try:
                with restored_signals():
                    # max_idle_time: if the feeder fails, the worker gives up instead of waiting forever.
                    worker.work(burst=False, max_jobs=total, max_idle_time=15, logging_level="WARNING")
            finally:
                stop.set()
                feeder.join(15)
            stopped_by_signal(worker)
            if errors:
                raise errors[0]
            if len(latencies) < samples:
                raise RuntimeError(f"RQ worker stopped after {len(latencies)} of {samples} pick-up jobs (Ctrl-C?)")
            return Timed(total)

        sample = self.measure(run)
        sample.values = latencies
        return sample

    # -- 5. delayed-job lateness -------------------------------------------------------------

    def fj_delayed(self, n: int, seed: int) -> Sample:
        worker = self.worker(1)
        rng = random.Random(seed)
        dues: dict[str, float] = {}

        def run() -> Timed:
            with self.running(worker), use_client(self.client()):
                time.sleep(0.3)
                for i in range(n):
                    tag = f"d{i}"
                    delay = rng.uniform(0.2, 2.0)
                    t0 = time.time()
                    StartStamp.with_options(delay=timedelta(seconds=delay)).enqueue(tag=tag)
                    dues[tag] = t0 + delay
                deadline = time.time() + 12
                for tag in dues:
                    if RECORDER.wait(tag, max(0.0, deadline - time.time())) is None:
                        raise RuntimeError(f"delayed job {tag} did not start within 10 s of its due time")
            return Timed(n)

        sample = self.measure(run)
        sample.values = [RECORDER.starts[tag] - due for tag, due in dues.items()]
        return sample

    # -- 7. bytes per waiting job ------------------------------------------------------------

    def fj_memory(self, n: int) -> Sample:
        qk = self.keys.queue(WelcomeEmail.job_options().queue or "email")
        with use_client(self.client()):
            WelcomeEmail.enqueue(user_id=user_id())  # list, marker, stream and script exist from here
            before, before_data = self.used_memory()
            ids = [WelcomeEmail.enqueue(user_id=user_id()).id for _ in range(n)]
            after, after_data = self.used_memory()
        sample = Sample(n, 0.0, Counter(), 0, 0, 0.0)
        priority = WelcomeEmail.job_options().priority
        hashes = [self.memory_usage(qk.job(i)) for i in ids[:: max(1, n // 20)][:20]]
        wait = self.memory_usage(qk.wait(priority)) / (n + 1)
        events = self.memory_usage(self.keys.events) / (n + 1)
        sample.values = [(after - before) / n, (after_data - before_data) / n, statistics.mean(hashes), wait, events]
        return sample

    def rq_memory(self, n: int) -> Sample:
        queue = self.rq_queue(RQ_EMAIL_QUEUE)
        queue.enqueue(welcome_email, user_id())
        before, before_data = self.used_memory()
        ids = [queue.enqueue(welcome_email, user_id()).id for _ in range(n)]
        after, after_data = self.used_memory()
        sample = Sample(n, 0.0, Counter(), 0, 0, 0.0)
        hashes = [self.memory_usage(f"rq:job:{i}") for i in ids[:: max(1, n // 20)][:20]]
        wait = self.memory_usage(queue.key) / (n + 1)
        sample.values = [(after - before) / n, (after_data - before_data) / n, statistics.mean(hashes), wait, 0.0]
        return sample

    def memory_usage(self, key: str) -> int:
        return int(self.admin.memory_usage(key, samples=0) or 0)

    # -- 8. worker PSS -------------------------------------------------------------------------

    def worker_pss(self, processes: bool, timeout: float = 90.0) -> Pss:
        queues = load_specs(SPECS_DIR).queues
        expected = sum(spec.concurrency for spec in queues.values())
        mode = "--processes" if processes else "threads"
        with tempfile.TemporaryDirectory(prefix="forgejobs-bench-") as tmp:
            env = {
                **os.environ,
                "FORGEJOBS_REDIS_URL": self.url,
                "FORGEJOBS_JOBS": "jobs",
                "FORGEJOBS_SPECS": str(SPECS_DIR),
                "FORGEJOBS_KEY_PREFIX": self.settings.key_prefix,
                "FORGEJOBS_CATALOG_DATABASE_URL": f"sqlite:///{tmp}/catalog.db",
                "FORGEJOBS_CATALOG_OUTBOX_DIR": f"{tmp}/outbox",
                "FORGEJOBS_CATALOG_STORAGE_DIR": f"{tmp}/storage",
            }
            env.pop("FORGEJOBS_HOOKS", None)
            env.pop("FORGEJOBS_RESOURCES", None)
            args = [sys.executable, "-m", "forgejobs.cli", "worker", *(["--processes"] if processes else [])]
            log_path = Path(tmp) / "worker.log"
            with log_path.open("wb") as log:
                # Its own session: a Ctrl-C in the terminal reaches the bench, which stops it by PID.
                process = subprocess.Popen(
                    args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            family: list[int] = [process.pid]
            try:
                t0 = time.monotonic()
                while True:
                    if process.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"worker ({mode}) exited with {process.returncode}:\n{tail}")
                    with self.admin.pipeline(transaction=False) as pipe:
                        for name in queues:
                            pipe.zcard(self.keys.queue(name).workers)
                        slots = [int(c) for c in pipe.execute()]
                    if all(slots) and sum(slots) >= expected:
                        break
                    if time.monotonic() - t0 > timeout:
                        raise RuntimeError(f"worker ({mode}): {sum(slots)} of {expected} slots after {timeout:g} s")
                    time.sleep(0.1)
                ready = time.monotonic() - t0
                time.sleep(1.0)
                family = [process.pid, *descendants(process.pid)]
                kb = sum(pss_kb(pid) for pid in family)
                return Pss(mode, kb, len(family), sum(slots), ready)
            finally:
                stop_process(process, family)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop_process(process: subprocess.Popen[bytes], family: list[int]) -> None:
    """SIGTERM the worker by its PID and wait; SIGKILL it and the children we saw if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            pass
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


# -- profile -------------------------------------------------------------------------------


def profile_worker(bench: Bench, n: int) -> str:
    """cProfile of the worker's slot thread (its whole loop) and upkeep thread on n no-op jobs."""
    bench.reset()
    bench.prefill_fj(n, lambda i: {"n": i})
    countdown = Countdown(n)
    worker = bench.worker(1, countdown)
    profiles: dict[str, cProfile.Profile] = {}

    def profiled(name: str, target: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            profile = profiles[name] = cProfile.Profile()
            profile.runcall(target, *args)

        return run

    # Instance attributes shadow the methods that start() hands to the threads.
    worker._serve = profiled("slot", worker._serve)  # type: ignore[method-assign]
    worker.upkeep.run = profiled("upkeep", worker.upkeep.run)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    with bench.running(worker):
        countdown.done.wait(120 + n / 50)
    seconds = time.perf_counter() - t0
    bench.check_fj(worker, n)
    out = io.StringIO()
    print(f"cProfile, {n} no-op jobs, concurrency 1, {seconds:.2f} s under the profiler:", file=out)
    for name, order, count in (("slot", "cumulative", 15), ("slot", "tottime", 15), ("upkeep", "cumulative", 8)):
        print(f"\n-- {name} thread, top {count} by {order} time --", file=out)
        stats = pstats.Stats(profiles[name], stream=out)
        stats.sort_stats(order).print_stats(count)
    return out.getvalue()


# -- the plan -------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    pss: list[Pss] = field(default_factory=list)

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)

    def get(self, key: str) -> list[Sample]:
        return self.samples.get(key, [])


def run_all(bench: Bench, args: argparse.Namespace) -> Results:
    n, sleep_n = args.jobs, args.sleep_jobs
    sleep_n1 = max(5, sleep_n // 5)
    spacing = args.latency_spacing
    pairs: list[tuple[str, Callable[[], Sample], str | None, Callable[[], Sample] | None]] = [
        ("fj noop c1", lambda: bench.fj_noop(n, 1), "rq noop", lambda: bench.rq_noop(n)),
        ("fj noop c10", lambda: bench.fj_noop(n, 10), None, None),
        ("fj sleep c1", lambda: bench.fj_sleep(sleep_n1, 1), "rq sleep", lambda: bench.rq_sleep(sleep_n1)),
        ("fj sleep c10", lambda: bench.fj_sleep(sleep_n, 10), None, None),
        ("fj single", lambda: bench.fj_single(n), "rq single", lambda: bench.rq_single(n)),
        ("ping", lambda: bench.ping(n), None, None),
    ]
    for batch in args.batches:
        count = max(batch, n - n % batch)
        pairs.append(
            (
                f"fj bulk {batch}",
                lambda c=count, b=batch: bench.fj_bulk(c, b),
                f"rq bulk {batch}",
                lambda c=count, b=batch: bench.rq_bulk(c, b),
            )
        )
    pairs += [
        (
            "fj pickup",
            lambda: bench.fj_pickup(args.latency_samples, spacing),
            "rq pickup",
            lambda: bench.rq_pickup(args.latency_samples, spacing),
        ),
        ("fj memory", lambda: bench.fj_memory(MEMORY_JOBS), "rq memory", lambda: bench.rq_memory(MEMORY_JOBS)),
    ]

    # Warm-up (not recorded): imports, pydantic and RQ first-call costs, script loading, connections.
    warm = min(n, 300)
    for warm_up in (
        lambda: bench.fj_single(warm),
        lambda: bench.rq_single(warm),
        lambda: bench.fj_noop(warm, 1),
        lambda: bench.fj_noop(warm, 10),
        lambda: bench.rq_noop(warm),
        lambda: bench.fj_sleep(10, 10),
    ):
        bench.reset()
        warm_up()

    results = Results()
    for rep in range(args.repeat):
        for fj_key, fj, rq_key, rq in pairs:
            sides: list[tuple[str, Callable[[], Sample]]] = [(fj_key, fj)]
            if rq_key is not None and rq is not None:
                sides.append((rq_key, rq))
            for key, measure in sides if rep % 2 == 0 else reversed(sides):
                bench.reset()
                results.add(key, measure())
        bench.reset()
        results.add("fj delayed", bench.fj_delayed(args.delayed_jobs, seed=rep))
        print(f"  run {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    if not args.skip_pss:
        for processes in (False, True):
            bench.reset()
            results.pss.append(bench.worker_pss(processes))
        print("  worker PSS done", file=sys.stderr, flush=True)
    bench.reset()
    return results


# -- report --------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Value:
    """One table cell: a number, and whether it is trustworthy (False: marked with *)."""

    number: float | None
    clean: bool = True

    def __add__(self, other: Value) -> Value:
        if self.number is None or other.number is None:
            return Value(None)
        return Value(self.number + other.number, self.clean and other.clean)

    def show(self, spec: str) -> str:
        return "-" if self.number is None else format(self.number, spec) + ("" if self.clean else "*")


@dataclass
class Row:
    label: str
    fj: Value
    rq: Value = field(default_factory=lambda: Value(None))
    target: str = ""
    met: bool | None = None
    spec: str = ",.0f"


class Report:
    """Reads the results the way the table shows them."""

    def __init__(self, results: Results) -> None:
        self.results = results

    def rate(self, key: str) -> Value:
        samples = self.results.get(key)
        return Value(median(s.rate for s in samples) if samples else None)

    def commands(self, key: str) -> Value:
        """Server commands per job: the median of the runs no other client disturbed, else the lowest run
        (other clients only add) marked as disturbed."""
        samples = self.results.get(key)
        if not samples:
            return Value(None)
        clean = [s for s in samples if s.foreign <= 0]
        if clean:
            return Value(median(s.server_per_job for s in clean))
        return Value(min(s.server_per_job for s in samples), clean=False)

    def trips(self, key: str) -> Value:
        samples = self.results.get(key)
        return Value(median(s.trips_per_job for s in samples) if samples else None)

    def pooled(self, key: str) -> list[float]:
        return [v for s in self.results.get(key) for v in s.values]

    def ms(self, key: str, q: float) -> Value:
        values = self.pooled(key)
        return Value(percentile(values, q) * 1000 if values else None)

    def memory(self, key: str, index: int) -> Value:
        samples = self.results.get(key)
        return Value(median(s.values[index] for s in samples) if samples else None)


def meets(value: Value, ok: Callable[[float], bool]) -> bool | None:
    return None if value.number is None else ok(value.number)


def print_table(results: Results, args: argparse.Namespace) -> None:
    rep = Report(results)
    n, sleep_n = args.jobs, args.sleep_jobs
    sleep_n1 = max(5, sleep_n // 5)
    sections: list[tuple[str, list[Row]]] = []

    rq1 = rep.rate("rq noop")
    sections.append(
        (
            f"1. no-op jobs/s, one worker process, {n} jobs (median of {args.repeat})",
            [
                Row("concurrency 1", rep.rate("fj noop c1"), rq1),
                Row("concurrency 10 (RQ: its one SimpleWorker, single-slot)", rep.rate("fj noop c10"), rq1),
            ],
        )
    )

    s1, s10, rqs = rep.rate("fj sleep c1"), rep.rate("fj sleep c10"), rep.rate("rq sleep")
    speedup = Value(s10.number / s1.number if s1.number and s10.number else None)
    sections.append(
        (
            f"2. 50 ms sleep jobs/s, one process (median of {args.repeat})",
            [
                Row(f"concurrency 1 ({sleep_n1} jobs)", s1, rqs, spec=",.1f"),
                Row(f"concurrency 10 ({sleep_n} jobs; RQ: its one SimpleWorker)", s10, rqs, spec=",.1f"),
                Row(
                    "speed-up, concurrency 10 / concurrency 1",
                    speedup,
                    target=f">= {TARGET_SPEEDUP:g}x",
                    met=meets(speedup, lambda v: v >= TARGET_SPEEDUP),
                    spec=".2f",
                ),
            ],
        )
    )

    total = rep.commands("fj single") + rep.commands("fj noop c1")
    trips = rep.trips("fj single") + rep.trips("fj noop c1")
    rows = [Row("commands: enqueue (single)", rep.commands("fj single"), rep.commands("rq single"), spec=".2f")]
    for b in args.batches:
        rows.append(
            Row(
                f"commands: enqueue_many (batch {b})",
                rep.commands(f"fj bulk {b}"),
                rep.commands(f"rq bulk {b}"),
                spec=".2f",
            )
        )
    rows += [
        Row("commands: worker, concurrency 1", rep.commands("fj noop c1"), rep.commands("rq noop"), spec=".2f"),
        Row(
            "commands: worker, concurrency 10 (RQ: c1)",
            rep.commands("fj noop c10"),
            rep.commands("rq noop"),
            spec=".2f",
        ),
        Row(
            "commands: total = single enqueue + worker c1",
            total,
            rep.commands("rq single") + rep.commands("rq noop"),
            f"<= {TARGET_COMMANDS} (BullMQ 24, Huey 3)",
            meets(total, lambda v: v <= TARGET_COMMANDS),
            ".2f",
        ),
        Row("round trips: enqueue (single)", rep.trips("fj single"), rep.trips("rq single"), spec=".2f"),
        Row("round trips: worker, concurrency 1", rep.trips("fj noop c1"), rep.trips("rq noop"), spec=".2f"),
        Row(
            "round trips: total",
            trips,
            rep.trips("rq single") + rep.trips("rq noop"),
            f"<= {TARGET_TRIPS}",
            meets(trips, lambda v: round(v, 2) <= TARGET_TRIPS),  # as shown: heartbeats and start-up add ~0.004
            ".2f",
        ),
    ]
    sections.append(("3. Redis per no-op job: commands as the server counts them, round trips as sent", rows))

    picked = len(rep.pooled("fj pickup"))
    sections.append(
        (
            f"4. pick-up latency, idle worker, ms ({picked} samples, all runs pooled)",
            [
                Row("p50", rep.ms("fj pickup", 0.5), rep.ms("rq pickup", 0.5), spec=".2f"),
                Row("p99", rep.ms("fj pickup", 0.99), rep.ms("rq pickup", 0.99), spec=".2f"),
            ],
        )
    )
    late99 = rep.ms("fj delayed", 0.99)
    sections.append(
        (
            f"5. delayed-job lateness, ms ({len(rep.pooled('fj delayed'))} jobs due in 0.2-2 s; RQ: not comparable)",
            [
                Row("p50", rep.ms("fj delayed", 0.5), spec=".2f"),
                Row(
                    "p99",
                    late99,
                    target=f"<= {TARGET_LATE_MS} ms",
                    met=meets(late99, lambda v: v <= TARGET_LATE_MS),
                    spec=".2f",
                ),
            ],
        )
    )

    single = rep.rate("fj single")
    rows = [
        Row(
            "single",
            single,
            rep.rate("rq single"),
            f">= {TARGET_SINGLE:,}/s",
            meets(single, lambda v: v >= TARGET_SINGLE),
        )
    ]
    for b in args.batches:
        bulk = rep.rate(f"fj bulk {b}")
        rows.append(
            Row(
                f"enqueue_many, batch {b}",
                bulk,
                rep.rate(f"rq bulk {b}"),
                f">= {TARGET_BULK:,}/s",
                meets(bulk, lambda v: v >= TARGET_BULK),
            )
        )
    rows.append(Row("reference: redis-py PING/s (one round trip, no work)", rep.rate("ping")))
    sections.append((f"6. enqueue/s, {n} jobs (median of {args.repeat})", rows))

    used = rep.memory("fj memory", 0)
    sections.append(
        (
            f"7. Redis bytes per waiting job (welcome-email payload, {MEMORY_JOBS} jobs, median of {args.repeat})",
            [
                Row(
                    "INFO memory used_memory delta / jobs",
                    used,
                    rep.memory("rq memory", 0),
                    "<= 1 KB",
                    meets(used, lambda v: v <= TARGET_BYTES),
                ),
                Row(
                    "MEMORY USAGE: job hash + list share (+ event)",
                    rep.memory("fj memory", 2) + rep.memory("fj memory", 3) + rep.memory("fj memory", 4),
                    rep.memory("rq memory", 2) + rep.memory("rq memory", 3),
                ),
            ],
        )
    )

    if results.pss:
        rows = []
        for p in results.pss:
            mb = Value(p.kb / 1024)
            if p.mode == "threads":
                label = "forgejobs worker: slots as threads (default)"
                rows.append(
                    Row(
                        label,
                        mb,
                        target=f"<= {TARGET_PSS_MB} MB",
                        met=meets(mb, lambda v: v <= TARGET_PSS_MB),
                        spec=",.1f",
                    )
                )
            else:
                rows.append(
                    Row(f"forgejobs worker --processes: supervisor + {p.processes - 1} children", mb, spec=",.1f")
                )
        slots = results.pss[0].slots
        sections.append((f"8. worker PSS, MB: the catalog's 8 queues, {slots} slots (one run each)", rows))

    head = f"{'measurement':<60} {'forgejobs':>11} {'RQ':>11} {'fj/RQ':>6}  {'target':<26} {'met':<3}"
    print(head)
    print("=" * len(head))
    for title, section in sections:
        print(title)
        for row in section:
            ratio = "-"
            if row.fj.number is not None and row.rq.number:
                ratio = f"{row.fj.number / row.rq.number:.2f}"
            met = "" if row.met is None else ("yes" if row.met else "NO")
            print(
                f"  {row.label:<58} {row.fj.show(row.spec):>11} {row.rq.show(row.spec):>11} {ratio:>6}"
                f"  {row.target:<26} {met:<3}".rstrip()
            )
    print("-" * len(head))
    print("fj/RQ = forgejobs / RQ. Targets are the issue's, for reference: the bench does not fail on them.")
    print(
        "Commands: INFO commandstats delta / jobs, median of the runs no other client disturbed (the server read"
        " no bytes\n  but ours); * = every run was disturbed, the lowest shown."
    )


def print_details(results: Results, args: argparse.Namespace) -> None:
    r = results.get
    print("\ndetails")
    print("  every run, jobs/s:")
    pairs: list[tuple[str, str | None]] = [
        ("fj noop c1", "rq noop"),
        ("fj noop c10", None),
        ("fj sleep c1", "rq sleep"),
        ("fj sleep c10", None),
        ("fj single", "rq single"),
        *((f"fj bulk {b}", f"rq bulk {b}") for b in args.batches),
    ]
    for fj_key, rq_key in pairs:
        line = f"    {fj_key[3:]:<14} forgejobs [{', '.join(f'{s.rate:,.0f}' for s in r(fj_key))}]"
        if rq_key:
            line += f"  RQ [{', '.join(f'{s.rate:,.0f}' for s in r(rq_key))}]"
        print(line)
    print("  no-op workers over the whole call (start-up and stop included), jobs/s, median:")
    for key, label in (("fj noop c1", "forgejobs c1"), ("fj noop c10", "forgejobs c10"), ("rq noop", "RQ work(burst)")):
        if r(key):
            print(f"    {label:<16} {median(s.wall_rate or 0 for s in r(key)):,.0f}")
    print("  CPU of this process per job, µs (median; worker rows: all its threads):")
    keys = ["fj noop c1", "fj noop c10", "rq noop", "fj single", "rq single"]
    keys += [k for b in args.batches for k in (f"fj bulk {b}", f"rq bulk {b}")]
    cells = [f"{k} {median(s.cpu_us_per_job for s in r(k)):,.0f}" for k in keys if r(k)]
    for i in range(0, len(cells), 5):
        print("    " + ", ".join(cells[i : i + 5]))
    print("  server commands per job, each run (* = another client used the server meanwhile):")
    keys = ["fj single", "rq single", "fj noop c1", "fj noop c10", "rq noop"]
    keys += [k for b in args.batches for k in (f"fj bulk {b}", f"rq bulk {b}")]
    keys += ["fj pickup", "rq pickup", "fj delayed"]
    for key in keys:
        if r(key):
            runs = ", ".join(f"{s.server_per_job:.2f}{'' if s.foreign <= 0 else '*'}" for s in r(key))
            sent, trips = median(s.sent_per_job for s in r(key)), median(s.trips_per_job for s in r(key))
            print(f"    {key:<14} [{runs}]  sent: {sent:.2f} commands in {trips:.2f} trips")
    print("    (pick-up and delayed runs: enqueue + pick-up + the worker's idle waiting, per job)")
    for key, label in (
        ("fj pickup", "forgejobs pick-up"),
        ("rq pickup", "RQ pick-up"),
        ("fj delayed", "forgejobs lateness"),
    ):
        values = [v for s in r(key) for v in s.values]
        if values:
            print(
                f"  {label} ms: min {min(values) * 1000:.2f}, p50 {percentile(values, 0.5) * 1000:.2f},"
                f" p90 {percentile(values, 0.9) * 1000:.2f}, p99 {percentile(values, 0.99) * 1000:.2f},"
                f" max {max(values) * 1000:.2f}"
            )
    for key, label in (("fj memory", "forgejobs"), ("rq memory", "RQ")):
        if r(key):
            v = [median(s.values[i] for s in r(key)) for i in range(5)]
            extra = f" + event-stream share {v[4]:.0f}" if v[4] else ""
            print(
                f"  bytes per waiting job, {label}: used_memory {v[0]:.0f}, used_memory_dataset {v[1]:.0f};"
                f" MEMORY USAGE job hash {v[2]:.0f} + wait-list share {v[3]:.1f}{extra}"
            )
    for p in results.pss:
        print(
            f"  worker PSS, {p.mode}: {p.kb / 1024:.1f} MB over {p.processes} process(es);"
            f" {p.slots} slots held leases {p.seconds_to_ready:.1f} s after the start"
        )


def print_breakdown(results: Results) -> None:
    print("\nRedis commands per job by name, as the server counted them (median-free: all runs summed):")
    for key, samples in results.samples.items():
        total: Counter[str] = Counter()
        jobs = 0
        for s in samples:
            total.update(s.server_by_name)
            jobs += s.jobs
        if not jobs or not total:
            continue
        parts = ", ".join(f"{name} {count / jobs:.2f}" for name, count in total.most_common() if count / jobs >= 0.005)
        dirty = " (* another client was active in some runs)" if any(s.foreign > 0 for s in samples) else ""
        print(f"  {key}{dirty}: {parts}")


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
        f"Redis server {server} | Python {sys.version.split()[0]} | {os.cpu_count()} CPUs"
    )


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per worker/enqueue measurement (5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--sleep-jobs", type=int, default=200, help="50 ms jobs at concurrency 10 (200; c1: a fifth)")
    parser.add_argument("--latency-samples", type=int, default=200, help="pick-up samples per run (200)")
    parser.add_argument("--latency-spacing", type=float, default=0.005, help="seconds between pick-ups (0.005)")
    parser.add_argument("--delayed-jobs", type=int, default=100, help="delayed jobs per run (100)")
    parser.add_argument("--batches", default="100,1000", help="enqueue_many batch sizes (default 100,1000)")
    parser.add_argument("--redis-url", default=DEFAULT_URL, help=f"an EMPTY database to use (default {DEFAULT_URL})")
    parser.add_argument("--skip-pss", action="store_true", help="do not start worker subprocesses for PSS")
    parser.add_argument("--breakdown", action="store_true", help="also print commands per job by command name")
    parser.add_argument("--profile", action="store_true", help="also cProfile the worker loop on --jobs no-op jobs")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.jobs < 2 or args.repeat < 1 or any(b < 1 for b in args.batches):
        parser.error("--jobs must be >= 2, --repeat >= 1 and batch sizes >= 1")
    if args.sleep_jobs < 10 or args.latency_samples < 2 or args.delayed_jobs < 2:
        parser.error("--sleep-jobs must be >= 10, --latency-samples and --delayed-jobs >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # keep order with stderr progress
    bench = Bench(args.redis_url)
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
        f"{args.redis_url}; forgejobs Worker (threads, in this process) vs RQ {version('rq')} SimpleWorker; "
        f"--jobs {args.jobs} --repeat {args.repeat}"
    )
    started = time.perf_counter()
    profile = ""
    try:
        results = run_all(bench, args)
        if args.profile:
            profile = profile_worker(bench, args.jobs)
    finally:
        # Empty at start (checked above), so everything in this database is the bench's own.
        bench.admin.flushdb()
        bench.conn.close()
    print()
    print_table(results, args)
    print_details(results, args)
    if args.breakdown:
        print_breakdown(results)
    if profile:
        print()
        print(profile)
    print(f"\ntotal bench time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
