"""Helpers shared by the test modules (fixtures live in conftest.py, which re-exports the older names).

Import them from here: `from tests.helpers import notes, wait_for`. A test module never imports another
test module for its helpers.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner

if TYPE_CHECKING:
    import pytest
    import redis

    from forgejobs.keys import QueueKeys
    from forgejobs.worker import Worker, WorkerStats

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_JOBS = "tests.samplejobs"
SAMPLE_SPECS = ROOT / "tests" / "samplespecs"


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds (the failure then
    carries what `explain` returns, e.g. the log of the process that was waited on)."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f":\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def notes(path: Path) -> list[dict[str, Any]]:
    """The JSON objects a sample job wrote to `path`, one per line, oldest first ([] before the first)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_env(
    redis_url: str, *, jobs: str = SAMPLE_JOBS, specs: Path | str = SAMPLE_SPECS, **extra: str
) -> dict[str, str]:
    """The settings of a `forgejobs` command run against the test's Redis database: the sample jobs and
    specs unless told otherwise, plus `extra` (FORGEJOBS_... names). For CliRunner as it is; a subprocess
    gets it on top of os.environ (see the `start_cli` fixture)."""
    return {"FORGEJOBS_REDIS_URL": redis_url, "FORGEJOBS_JOBS": jobs, "FORGEJOBS_SPECS": str(specs), **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`forgejobs ARGS...` in this process (click's CliRunner): its exit code and output."""
    from forgejobs.cli import cli

    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def csrf_of(page: str) -> str:
    """The CSRF token of a dashboard page's form."""
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF field in the page"
    return found.group(1)


def dashboard_login(app: object, token: str, base: str = "") -> Any:
    """A Starlette TestClient logged in to the dashboard `app` (mounted at `base`) with `token`."""
    from starlette.testclient import TestClient

    browser = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    page = browser.get(f"{base}/login")
    assert page.status_code == 200
    reply = browser.post(f"{base}/login", data={"csrf_token": csrf_of(page.text), "secret": token, "next": "/"})
    assert reply.status_code == 303, reply.text
    return browser


def burst(worker: Worker, within: float = 10.0, horizon: float = 0.0) -> WorkerStats:
    """Run `worker` until its queues are drained, in this thread (its signal handlers are undone after);
    fail if that takes longer than `within` seconds (a job taken again and again, a slot that hangs)."""
    handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    gave_up = threading.Event()

    def give_up() -> None:
        gave_up.set()
        worker.stop()

    timer = threading.Timer(within, give_up)
    timer.start()
    try:
        stats = worker.run(burst=True, horizon=horizon)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert not gave_up.is_set(), f"the queues were not drained in {within:g} s"
    return stats


def server_ms(conn: redis.Redis) -> int:
    """The Redis server's clock, in ms: the clock the runtime's scripts stamp and expire by."""
    seconds, micros = conn.time()
    return int(seconds) * 1000 + int(micros) // 1000


def waiting(conn: redis.Redis, keys: QueueKeys) -> list[bytes]:
    """The ids on a queue's wait lists, in the order slots would take them (priority 1 first)."""
    return [job for priority in range(1, 11) for job in conn.lrange(keys.wait(priority), 0, -1)]


def counters(conn: redis.Redis, queue: str) -> dict[tuple[str, str, str | None], int]:
    """The stored counters of `queue` (not the derived ones) as (name, job name, reason) -> value."""
    from forgejobs.metrics import MetricsReader

    snapshot = MetricsReader(conn, queues=[queue]).snapshot()
    return {(c.name, c.job_name, c.reason): c.value for c in snapshot.counters if c.name not in ("started", "failed")}


def failed_in_last_minutes(conn: redis.Redis, queue: str) -> int:
    """Failed attempts the per-minute counts hold for `queue` in the current and the previous minute."""
    from forgejobs.metrics import MetricsReader

    return sum(m.failed for m in MetricsReader(conn, queues=[queue]).per_minute(queue, minutes=2))


def worker_log(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    """The worker's log lines (logger forgejobs.worker) as formatted, only those at `level` when given."""
    return [
        r.getMessage() for r in caplog.records if r.name == "forgejobs.worker" and (level is None or r.levelno == level)
    ]
