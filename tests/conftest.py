"""Shared fixtures: a private Redis database per test, and worker subprocesses we own."""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import hypothesis
import pytest
import redis

from forgejobs import Client, Registry, Settings, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.keys import QueueKeys
from forgejobs.specs import load_specs
from tests.helpers import ROOT, SAMPLE_JOBS, SAMPLE_SPECS, cli_env, free_port, wait_for

__all__ = ["ROOT", "SAMPLE_JOBS", "SAMPLE_SPECS", "WorkerProcess", "free_port", "wait_for"]  # older imports

# pytest-xdist's workers are given COLUMNS=80, and the CLI draws piped tables at $COLUMNS when set: the tests
# read tables drawn at the piped default (200 columns) whoever runs them, in this process and in the
# subprocesses they start.
os.environ.pop("COLUMNS", None)

REDIS_HOST = os.environ.get("FORGEJOBS_TEST_REDIS", "redis://127.0.0.1:6379")
CLAIM_KEY = "forgejobs-test:claimed-by"
# Set by `./dev mutate`: run only the tests that stay in this process (mutmut runs them once per mutant).
UNIT_ONLY = bool(os.environ.get("FORGEJOBS_TEST_UNIT_ONLY"))
if UNIT_ONLY:
    # A property test a mutant makes fail stops at its first failing example: looking for more, or shrinking
    # it, would run (possibly hanging) examples again and again, while mutmut only needs to know it failed.
    hypothesis.settings.register_profile(
        "mutation",
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate],
        report_multiple_bugs=False,
    )
    hypothesis.settings.load_profile("mutation")
_OUT_OF_PROCESS = ("start_worker", "start_cli")
_OUT_OF_PROCESS_CALLS = ("private_redis(", "subprocess.", "sys.executable")


def _runs_in_this_process(item: pytest.Item) -> bool:
    if set(_OUT_OF_PROCESS) & set(getattr(item, "fixturenames", ())):
        return False
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return True
    return not any(call in source for call in _OUT_OF_PROCESS_CALLS)


def _durations() -> dict[str, float]:
    """How long each test took in mutmut's last clean run (mutants/mutmut-stats.json), when there is one."""
    stats = ROOT / "mutmut-stats.json"  # ROOT is mutants/ when mutmut runs the tests
    try:
        return dict(json.loads(stats.read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under FORGEJOBS_TEST_UNIT_ONLY=1, deselect tests that start worker or CLI subprocesses or a redis-server,
    and run the rest fastest first (by mutmut's timings): a mutant is then killed by the quickest test that
    notices it, since mutmut stops at the first failure. No test depends on the order of the others."""
    if not UNIT_ONLY:
        return
    keep = [item for item in items if _runs_in_this_process(item)]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    durations = _durations()
    keep.sort(key=lambda item: durations.get(item.nodeid, 0.0))
    items[:] = keep


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A CLI command run in this process (CliRunner) configures logging: the root level, a stderr handler, the
    `forgejobs` logger's level. Undo it after each test, so no test's output depends on the tests before it."""
    root, ours = logging.getLogger(), logging.getLogger("forgejobs")
    levels, before = (root.level, ours.level), set(root.handlers)
    yield
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)


# The claim names its holder as host:pid. A claim whose process on this host is gone was left by a killed
# test (mutmut kills one at its time limit; so does Ctrl+C twice): the next test takes it over, atomically,
# and removes what that test left, so a database is never lost to leftovers.


def claimant() -> str:
    """This process as a claim names it: read at each claim, since mutmut forks its test runs from a parent
    that imported this module (a claim naming the parent would outlive a killed child)."""
    return f"{socket.gethostname()}:{os.getpid()}"


_TAKE_OVER = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0"


def _left_by_a_dead_test(claim: bytes | None) -> bool:
    host, _, pid = (claim or b"").decode(errors="replace").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _only_left_by_mutants(conn: redis.Redis) -> bool:
    """Under ./dev mutate, a database with no claim holding only forgejobs keys (`forgejobs:`, or a demo's
    `forgejobs-demo-...:`) was written by the threads of a worker a mutant kept from stopping, after its test
    had emptied the database: emptied and claimed. (A normal run leaves such a database alone: it cannot tell
    it from someone else's.)"""
    keys = [k for k in conn.scan_iter(count=1000) if k != CLAIM_KEY.encode()]
    if not all(k.startswith((b"forgejobs:", b"forgejobs-demo-")) for k in keys):
        return False
    for key in keys:
        conn.delete(key)
    return True


def _claim(conn: redis.Redis) -> bool:
    """Claim this database for the test: an empty one, or one a dead test on this host left (emptied first)."""
    if conn.set(CLAIM_KEY, claimant(), nx=True):
        if conn.dbsize() == 1 or (UNIT_ONLY and _only_left_by_mutants(conn)):
            return True
        conn.delete(CLAIM_KEY)  # someone else's data lives here: leave it as it was
        return False
    held = cast(bytes | None, conn.get(CLAIM_KEY))
    if not _left_by_a_dead_test(held) or not conn.eval(_TAKE_OVER, 1, CLAIM_KEY, held or b"", claimant()):
        return False
    for key in conn.scan_iter(count=1000):
        if key != CLAIM_KEY.encode():
            conn.delete(key)
    return True


@pytest.fixture
def live_thread() -> Iterator[threading.Thread]:
    """A thread that runs until the test ends: what a live slot's thread looks like to the runtime."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    yield thread
    done.set()
    thread.join()


@pytest.fixture
def signals_as_found() -> Iterator[None]:
    """A worker run in the main thread installs its SIGTERM and SIGINT handlers: they are undone after."""
    term, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, interrupt)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database (1-15) that was empty, or left by a test killed on this host, claimed for this test and
    emptied afterwards. Only such databases are claimed, so flushing one at the end removes only test data."""
    try:
        redis.Redis.from_url(f"{REDIS_HOST}/0", socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_HOST}")
    for db in range(1, 16):
        conn = redis.Redis.from_url(f"{REDIS_HOST}/{db}")
        if _claim(conn):
            try:
                yield f"{REDIS_HOST}/{db}"
            finally:
                conn.flushdb()
                conn.close()
            return
        conn.close()
    pytest.skip("no free Redis database (1-15) to claim")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, jobs=SAMPLE_JOBS, specs=SAMPLE_SPECS, scheduler_interval=0.1)


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry.load(settings)


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def client(conn: redis.Redis, registry: Registry) -> Iterator[Client]:
    """The current client for `Job.enqueue` in this test, on the test's Redis database."""
    c = Client(RedisBackend(conn), registry)
    previous = set_client(c)
    yield c
    set_client(previous)


class WorkerProcess:
    """A `forgejobs worker` subprocess that the test owns and stops by PID."""

    def __init__(self, process: subprocess.Popen[str], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM; if a job is still running after 5 s, SIGTERM again (abort it); SIGKILL as a last resort."""
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.process.poll() is not None:
                return
            self.signal(sig)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue


def _sample_env(redis_url: str, extra: dict[str, str] | None) -> dict[str, str]:
    return {
        **os.environ,
        **cli_env(redis_url),
        "FORGEJOBS_SCHEDULER_INTERVAL": "0.1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


@pytest.fixture
def start_cli(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `forgejobs ARGS...` subprocesses on the test database; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path / f"process-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "forgejobs.cli", "-v", *args],
                cwd=ROOT,
                env=_sample_env(redis_url, env),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        started.append(WorkerProcess(process, log_path))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_worker(start_cli: Callable[..., WorkerProcess], conn: redis.Redis) -> Callable[..., WorkerProcess]:
    """Start `forgejobs worker` subprocesses on the test database and wait until they listen."""

    def slots() -> set[bytes]:
        """Every slot holding a lease on any queue (a dead worker's leave when another worker recovers them)."""
        return {
            m
            for key in conn.scan_iter(match="forgejobs:{*}:workers")
            for m in cast(list[bytes], conn.zrange(key, 0, -1))
        }

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> WorkerProcess:
        before = slots()
        worker = start_cli("worker", *args, env=env)
        if ready:
            wait_for(
                lambda: slots() - before or worker.process.poll() is not None,
                timeout=20,
                what="the worker to register",
            )
            assert worker.process.poll() is None, f"worker exited early:\n{worker.log()}"
        return worker

    return start


@pytest.fixture
def sample_specs() -> Path:
    return SAMPLE_SPECS


def loaded_specs() -> object:
    return load_specs(SAMPLE_SPECS)


@contextmanager
def private_redis(tmp_path: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of the test's own on a free port (never the shared one), stopped by PID at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _pings(url), timeout=10, what="the private redis-server")
        yield process, url
    finally:
        process.kill()
        process.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def family(pid: int) -> set[int]:
    """`pid` and its child processes (a `--processes` worker's supervisor and the slot children it forked)."""
    found = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the parenthesised name
                found.add(int(entry.name))
    return found


def leftovers(conn: redis.Redis, keys: QueueKeys) -> dict[str, int]:
    """How many ids each of the queue's in-flight structures still holds."""
    counts = {key.rsplit(":", 1)[1]: int(conn.llen(key)) for key in keys.waits}
    counts["stalled"] = int(conn.llen(keys.stalled))
    counts["active"] = int(conn.hlen(keys.active))
    counts["delayed"] = int(conn.zcard(keys.delayed))
    counts["parked"] = sum(int(conn.llen(k)) for k in conn.scan_iter(match=f"{keys.ck_prefix}*:wait"))
    return {name: n for name, n in counts.items() if n}
