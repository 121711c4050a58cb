#!/usr/bin/env python
"""Chaos: real `forgejobs worker` processes on a Redis of our own, under faults on a seeded timer; then a count.

    python bench/chaos.py [--jobs 10000] [--seed 1] [--duration 90] [--fault-every 6] [--outage 15]
                          [--workers threads,threads,processes,processes] [--concurrency 3]
                          [--faults slot_kill,redis_outage,...] [--drain-timeout 300] [--keep]

What runs:

- its own `redis-server` (from PATH) on a free port, `--appendonly yes --appendfsync everysec`, in a temp
  dir; never the shared one. Every process this starts is stopped by its PID, and only those.
- `--workers`: one `python -m forgejobs.cli -v worker --queues chaos --concurrency C [--processes]` per
  entry (threads: the default mode; processes: one child per slot), `FORGEJOBS_STALL_TIMEOUT=2`.
- `--jobs` jobs of `tests.samplejobs.ledger.LedgerRun`, all enqueued first, in waves every 0.25 s
  spread over 85 % of `--duration` (delayed jobs, so that work keeps falling due while the faults
  happen); each sleeps a random time (mean chosen so the slots are about half busy) and then notes its
  run in a ledger on database 1 of the same server (`HINCRBY chaos:runs <id> 1`, plus a log line with
  the time). lost = enqueued ids with no completed run; duplicate runs = completed runs beyond the
  first.
- faults, one every `--fault-every` s (±30 %, seeded), the five kinds in a shuffled cycle:
  `slot_kill` SIGKILL of one slot process (a child of a `--processes` worker, a busy one if any);
  `worker_kill` SIGKILL of a whole worker (supervisor and children), a replacement started at once;
  `worker_term` SIGTERM (clean shutdown), a replacement started at once;
  `redis_restart` SIGTERM of redis-server (it writes its AOF), started again on the same port after 2 s;
  `redis_outage` the same with `--outage` s (15) without a server.
- then it waits (up to `--drain-timeout`) until every job is SUCCEEDED and nothing is pending.

Per fault: `down` = seconds without a server (Redis faults) or until the replacement was started;
`resume` = seconds from the server answering again (Redis faults) or from the kill to the first completed run
after it; `orphans` = jobs the victim held in the queue's active hash just before the
fault (all active jobs for Redis faults); `orphans done` = seconds until the last of those completed a
run after the fault; `dup` = how many of them completed more than once.

`tests/chaos/test_chaos.py` runs the same harness with a small N (`pytest -m chaos`).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/chaos.py` from anywhere: the job module lives in tests/
    sys.path.insert(0, str(ROOT))

from forgejobs import Client, Registry, Settings, use_client  # noqa: E402
from forgejobs.backends.redis import RedisBackend  # noqa: E402
from forgejobs.keys import QueueKeys  # noqa: E402
from forgejobs.runtime.worker import slot_pid  # noqa: E402
from tests.samplejobs.ledger import LOG, RUNS, LedgerRun  # noqa: E402

JOBS_MODULE = "tests.samplejobs.ledger"
QUEUE = "chaos"
KEYS = QueueKeys("forgejobs", QUEUE)
LEDGER_DB = 1
FAULT_KINDS = ("slot_kill", "worker_kill", "worker_term", "redis_restart", "redis_outage")
WAVE_SECONDS = 0.25


# -- processes we own ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def family(pid: int) -> set[int]:
    """`pid` and its child processes (a `--processes` worker's supervisor and the slot children it forked)."""
    found = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4 (ppid), after the parenthesised name
                found.add(int(entry.name))
    return found


def kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def pings(url: str) -> bool:
    try:
        conn = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(conn.ping())
        finally:
            conn.close()
    except redis.RedisError:
        return False


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    """A redis-server of our own with AOF on, stopped by PID; it can be stopped and started again on its port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary on PATH")
        self.binary = binary
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.starts += 1
        with (self.dir / f"server-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--dir", str(self.dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: pings(self.url()) or self.process.poll() is not None, 30, "redis-server to answer")
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.dir}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """SIGTERM: Redis writes and fsyncs its AOF and exits. SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class WorkerProc:
    """One `forgejobs worker` subprocess (threads or `--processes` mode)."""

    def __init__(self, mode: str, index: int, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.mode = mode
        self.name = f"w{index}-{mode}"
        self.log_path = logdir / f"{self.name}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "forgejobs.cli", "-v", "worker", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_all(self) -> set[int]:
        """SIGKILL the worker and its children (found before the kill: orphans would be reparented)."""
        doomed = family(self.pid) if self.alive() else set()
        for pid in doomed:
            kill_quietly(pid, signal.SIGKILL)
        self.process.wait(10)
        return doomed

    def stop(self, grace: float = 15) -> None:
        """SIGTERM (finish running jobs), then SIGKILL whatever of it is left."""
        if self.alive():
            pids = family(self.pid)
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
            if self.alive():
                kill_quietly(self.pid, signal.SIGKILL)
            for pid in pids - {self.pid}:  # children the supervisor did not stop
                if Path(f"/proc/{pid}").exists():
                    kill_quietly(pid, signal.SIGKILL)
        self.process.wait(10)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Config:
    jobs: int = 10_000
    seed: int = 1
    duration: float = 90.0
    """Seconds over which jobs fall due (85 % of it) and faults happen."""
    fault_every: float = 6.0
    outage: float = 15.0
    restart_pause: float = 2.0
    workers: tuple[str, ...] = ("threads", "threads", "processes", "processes")
    concurrency: int = 3
    stall_timeout: int = 2
    busy: float = 0.5
    """The share of slot time the jobs' sleeps fill, over the window in which they fall due."""
    max_mean_seconds: float = 0.4
    drain_timeout: float = 180.0
    faults: tuple[str, ...] | None = None
    """Fault kinds in order, instead of shuffled cycles of all five (each is applied once)."""
    workdir: Path | None = None
    keep: bool = False
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the jobs were enqueued
    t0: float  # wall time of the fault
    back: float  # wall time the server answered again / the replacement was started
    victim: str
    killed: int  # processes SIGKILLed / slots that lost their process
    orphans: list[str]
    resume: float | None = None
    orphans_done: float | None = None
    dup: int = 0


@dataclass
class Report:
    config: Config
    enqueued: int
    completed: int
    lost: list[str]
    runs: Counter[str]
    statuses: Counter[str]
    dead_letters: Counter[str]
    faults: list[Fault]
    enqueue_seconds: float
    all_done_after: float | None
    foreign: int
    workdir: Path
    slots: dict[str, int] = field(default_factory=dict)

    @property
    def duplicate_runs(self) -> int:
        return sum(n - 1 for n in self.runs.values() if n > 1)

    @property
    def duplicated_jobs(self) -> int:
        return sum(1 for n in self.runs.values() if n > 1)

    @property
    def succeeded(self) -> int:
        return self.statuses.get("succeeded", 0)

    def summary(self) -> str:
        kinds = Counter(f.kind for f in self.faults)
        done = f"{self.all_done_after:.1f}s" if self.all_done_after is not None else "NOT within the deadline"
        letters = dict(self.dead_letters) or 0
        return (
            f"chaos seed={self.config.seed}: enqueued {self.enqueued}, completed {self.completed}, "
            f"succeeded {self.succeeded}, lost {len(self.lost)}, duplicate runs {self.duplicate_runs} "
            f"({self.duplicated_jobs} jobs), dead letters {letters}; "
            f"{len(self.faults)} faults ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
            f"all SUCCEEDED {done} after the enqueue"
        )

    def table(self) -> str:
        def sec(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        rows = [("#", "at s", "fault", "victim", "killed", "down s", "resume s", "orphans", "orphans done s", "dup")]
        for i, f in enumerate(self.faults, 1):
            rows.append(
                (
                    str(i), f"{f.at:.1f}", f.kind, f.victim, str(f.killed), f"{f.back - f.t0:.2f}", sec(f.resume),
                    str(len(f.orphans)), sec(f.orphans_done), str(f.dup),
                )
            )  # fmt: skip
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        by_kind: dict[str, list[Fault]] = {}
        for f in self.faults:
            by_kind.setdefault(f.kind, []).append(f)
        lines.append("")
        lines.append("per kind: resume s (max) / orphans done s (max)")
        for kind, faults in sorted(by_kind.items()):
            resumes = [f.resume for f in faults if f.resume is not None]
            dones = [f.orphans_done for f in faults if f.orphans_done is not None]
            lines.append(
                f"  {kind:<14} n={len(faults)}  resume {sec(max(resumes) if resumes else None)}"
                f"  orphans done {sec(max(dones) if dones else None)}"
            )
        if self.lost:
            lines.append(f"LOST ({len(self.lost)}): {' '.join(self.lost[:20])}")
        kept = f"; logs and AOF in {self.workdir}" if self.workdir.exists() else ""
        lines.append(f"statuses: {dict(self.statuses)}; enqueue took {self.enqueue_seconds:.1f}s{kept}")
        return "\n".join(lines)


def lease_pids(conn: redis.Redis) -> set[int]:
    """Processes holding leases on the queue (slot id `<host>.<pid>.<hex6>/<queue>/<index>/<gen>`)."""
    return {slot_pid(m) for m in conn.zrange(KEYS.workers, 0, -1)}


def active_by_pid(conn: redis.Redis) -> dict[int, list[str]]:
    """The queue's running jobs, by the pid of the slot process that holds each (`<slot id>|<start ms>`)."""
    out: dict[int, list[str]] = {}
    for job_id, owner in conn.hgetall(KEYS.active).items():
        slot = owner.decode().split("|", 1)[0]
        try:
            pid = slot_pid(slot)
        except (IndexError, ValueError):
            pid = -1
        out.setdefault(pid, []).append(job_id.decode())
    return out


class Chaos:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.workdir = config.workdir or Path(tempfile.mkdtemp(prefix="forgejobs-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir)
        self.workers: list[WorkerProc] = []
        self.retired: list[WorkerProc] = []
        self.started = 0
        self.specs = self.workdir / "specs"
        self.specs.mkdir(exist_ok=True)
        (self.specs / "queues.yaml").write_text(
            "queues:\n"
            f"  {QUEUE}:\n"
            f"    concurrency: {config.concurrency}\n"
            "    retention: {completed: {count: null}, failed: {count: null}}\n"  # keep every record to count
        )
        self.log = config.log

    # workers

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FORGEJOBS_REDIS_URL": self.redis.url(0),
            "FORGEJOBS_JOBS": JOBS_MODULE,
            "FORGEJOBS_SPECS": str(self.specs),
            "FORGEJOBS_STALL_TIMEOUT": str(self.config.stall_timeout),
            "PYTHONUNBUFFERED": "1",
        }

    def start_worker(self, mode: str) -> WorkerProc:
        args = ["--queues", QUEUE, "--concurrency", str(self.config.concurrency)]
        if mode == "processes":
            args.append("--processes")
        worker = WorkerProc(mode, self.started, args, self.env(), self.workdir)
        self.started += 1
        self.workers.append(worker)
        return worker

    def serving(self, conn: redis.Redis) -> list[WorkerProc]:
        leased = lease_pids(conn)
        return [w for w in self.workers if w.alive() and family(w.pid) & leased]

    # faults

    def fault(self, kind: str, conn: redis.Redis, t_start: float) -> Fault:
        t0 = time.time()
        if kind in ("redis_restart", "redis_outage"):
            orphans = [i for ids in active_by_pid(conn).values() for i in ids]
            pause = self.config.restart_pause if kind == "redis_restart" else self.config.outage
            conn.connection_pool.disconnect()
            t0 = time.time()
            self.redis.stop(signal.SIGTERM)
            time.sleep(pause)
            self.redis.start()
            return Fault(kind, t0 - t_start, t0, time.time(), f"redis down {pause:g}s", 0, orphans)
        if kind == "slot_kill":
            held = active_by_pid(conn)
            slots = [
                (w, pid)
                for w in self.workers
                if w.mode == "processes" and w.alive()
                for pid in sorted(family(w.pid) - {w.pid})
            ]
            if not slots:
                return Fault(kind, t0 - t_start, t0, t0, "no slot process", 0, [])
            busy = [(w, pid) for w, pid in slots if held.get(pid)]
            worker, pid = self.rng.choice(busy or slots)
            t0 = time.time()
            kill_quietly(pid, signal.SIGKILL)
            return Fault(kind, t0 - t_start, t0, t0, f"{worker.name} slot {pid}", 1, held.get(pid, []))
        # a whole worker
        candidates = [w for w in self.workers if w.alive()]
        victim = self.rng.choice(candidates)
        pids = family(victim.pid)
        held = active_by_pid(conn)
        orphans = [i for pid in pids for i in held.get(pid, [])]
        slots = self.config.concurrency
        t0 = time.time()
        if kind == "worker_kill":
            victim.kill_all()
            killed = slots
        else:
            victim.process.send_signal(signal.SIGTERM)
            killed = 0
        self.workers.remove(victim)
        self.retired.append(victim)
        replacement = self.start_worker(victim.mode)
        return Fault(kind, t0 - t_start, t0, time.time(), f"{victim.name} -> {replacement.name}", killed, orphans)

    def schedule(self) -> Iterable[str]:
        if self.config.faults is not None:
            yield from self.config.faults
            return
        while True:
            cycle = list(FAULT_KINDS)
            self.rng.shuffle(cycle)
            yield from cycle

    # the run

    def run(self) -> Report:
        cfg = self.config
        try:
            return self._run()
        finally:
            for worker in self.workers + self.retired:
                worker.stop()
            self.redis.stop(signal.SIGKILL if not cfg.keep else signal.SIGTERM)
            if not cfg.keep and cfg.workdir is None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self) -> Report:
        cfg = self.config
        self.redis.start()
        conn = redis.Redis.from_url(self.redis.url(0), socket_timeout=10, socket_connect_timeout=2)
        ledger = redis.Redis.from_url(self.redis.url(LEDGER_DB), socket_timeout=10, socket_connect_timeout=2)
        for mode in cfg.workers:
            self.start_worker(mode)
        wait_until(lambda: len(self.serving(conn)) == len(cfg.workers), 60, "every worker to serve the queue")
        slots = len(cfg.workers) * cfg.concurrency
        self.log(f"redis-server pid {self.redis.process.pid if self.redis.process else '?'} on port {self.redis.port}")
        self.log(f"{len(cfg.workers)} workers ({', '.join(cfg.workers)}), {slots} slots, in {self.workdir}")

        settings = Settings(redis_url=self.redis.url(0), jobs=JOBS_MODULE, specs=self.specs, enqueue_timeout=10)
        client = Client(RedisBackend.from_settings(settings), Registry.load(settings))
        window = cfg.duration * 0.85
        waves = max(1, int(window / WAVE_SECONDS))
        mean = min(cfg.max_mean_seconds, cfg.busy * window * slots / cfg.jobs)
        ledger_url = self.redis.url(LEDGER_DB)
        ids: list[str] = []
        t_base = time.time()
        with use_client(client):
            for k in range(waves):
                count = cfg.jobs * (k + 1) // waves - cfg.jobs * k // waves
                items = [
                    {"ledger": ledger_url, "seconds": round(self.rng.uniform(0, 2 * mean), 3)} for _ in range(count)
                ]
                delay = t_base + k * WAVE_SECONDS - time.time()
                enqueuer = LedgerRun.with_options(delay=timedelta(seconds=delay)) if delay > 0.001 else LedgerRun
                for start in range(0, len(items), 2000):
                    ids.extend(h.id for h in enqueuer.enqueue_many(items[start : start + 2000]))
        enqueue_seconds = time.time() - t_base
        self.log(
            f"enqueued {len(ids)} jobs in {enqueue_seconds:.1f}s: {waves} waves every {WAVE_SECONDS}s, "
            f"mean sleep {mean * 1000:.0f} ms; faults every ~{cfg.fault_every:g}s"
        )

        faults: list[Fault] = []
        kinds = self.schedule()
        for kind in kinds:
            time.sleep(cfg.fault_every * self.rng.uniform(0.7, 1.3))
            if cfg.faults is None and time.time() - t_base > window:
                break
            fault = self.fault(kind, conn, t_base)
            faults.append(fault)
            self.log(f"{fault.at:6.1f}s {fault.kind:<14} {fault.victim} ({len(fault.orphans)} running)")

        # drain
        all_done_after: float | None = None
        deadline = time.monotonic() + cfg.drain_timeout
        while time.monotonic() < deadline:
            try:
                if ledger.hlen(RUNS) >= len(ids) and client.backend.pending([QUEUE]) == 0:
                    statuses = self.statuses(conn, ids)
                    if statuses.get("succeeded", 0) == len(ids):
                        all_done_after = time.time() - t_base
                        break
            except redis.RedisError:
                pass
            time.sleep(0.2)

        statuses = self.statuses(conn, ids)
        raw_runs = {k.decode(): int(v) for k, v in ledger.hgetall(RUNS).items()}
        runs = Counter({i: raw_runs.get(i, 0) for i in ids})
        enqueued = set(ids)
        foreign = sum(1 for i in raw_runs if i not in enqueued)
        lost = [i for i in ids if runs[i] == 0]
        completions: dict[str, list[float]] = {}
        times: list[float] = []
        for line in ledger.lrange(LOG, 0, -1):
            job_id, stamp = line.decode().split()[:2]
            completions.setdefault(job_id, []).append(float(stamp))
            times.append(float(stamp))
        times.sort()
        for f in faults:
            i = bisect.bisect_right(times, f.back)
            f.resume = times[i] - f.back if i < len(times) else None
            dones = [min((t for t in completions.get(j, []) if t > f.t0), default=None) for j in f.orphans]
            if f.orphans and all(d is not None for d in dones):
                f.orphans_done = max(d for d in dones if d is not None) - f.t0
            f.dup = sum(1 for j in f.orphans if runs[j] > 1)
        letters = Counter(str(d.reason.value) for d in client.backend.dead_letters.recent(limit=100_000))
        return Report(
            config=cfg,
            enqueued=len(ids),
            completed=sum(1 for i in ids if runs[i] > 0),
            lost=lost,
            runs=runs,
            statuses=statuses,
            dead_letters=letters,
            faults=faults,
            enqueue_seconds=enqueue_seconds,
            all_done_after=all_done_after,
            foreign=foreign,
            workdir=self.workdir,
            slots={"total": slots, "per_worker": cfg.concurrency},
        )

    @staticmethod
    def statuses(conn: redis.Redis, ids: list[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for start in range(0, len(ids), 1000):
            with conn.pipeline(transaction=False) as pipe:
                for job_id in ids[start : start + 1000]:
                    pipe.hget(KEYS.job(job_id), "s")
                counts.update(s.decode() if s else "missing" for s in pipe.execute())
        return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of work and faults (default 90)")
    parser.add_argument("--fault-every", type=float, default=6.0)
    parser.add_argument("--outage", type=float, default=15.0)
    parser.add_argument("--workers", default="threads,threads,processes,processes")
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--faults", help="comma-separated fault kinds, each once in this order (default: cycles)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, AOF)")
    args = parser.parse_args(argv)
    config = Config(
        jobs=args.jobs,
        seed=args.seed,
        duration=args.duration,
        fault_every=args.fault_every,
        outage=args.outage,
        workers=tuple(args.workers.split(",")),
        concurrency=args.concurrency,
        drain_timeout=args.drain_timeout,
        faults=tuple(args.faults.split(",")) if args.faults else None,
        keep=args.keep,
    )
    report = Chaos(config).run()
    print(report.summary())
    print(report.table())
    ok = not report.lost and report.succeeded == report.enqueued and not report.dead_letters
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
