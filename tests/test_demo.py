"""The README's first command: the demo, on a configured Redis and on each embedded default."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rich.console import Console

from forgejobs import Settings
from forgejobs.embedded import choose_redis, redact_url
from tests.conftest import ROOT

NOTHING_LISTENS = "redis://127.0.0.1:1/0"


@pytest.mark.redis
def test_demo_runs_the_catalog_on_the_configured_redis(redis_url: str) -> None:
    env = {**os.environ, "FORGEJOBS_REDIS_URL": redis_url, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "forgejobs.cli", "demo", "--jobs", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"configured Redis at {redis_url}" in out
    # with --jobs 2: 2 sign-ups (welcome email, audit, activity each), an invitation, 4 Stripe events (the
    # checkout one handled in place) to 3 billing jobs and 2 notifications, 3 webhook deliveries (one retried,
    # one dead-lettered on 410) and a disabled-endpoint notification, 2 file cleanups
    assert "succeeded 21, retried 1, dead-lettered 1" in out
    assert "outbox: 6 messages" in out
    assert "webhook receiver got 2 deliveries with valid signatures (/flaky 1, /ok 1); 0 bad signatures" in out
    assert "duplicate=True" in out and "stripe refused (bad signature)" in out
    assert "Payment failed for Acme: USD 49.00 due" in out
    assert "invited you to join the organisation Acme on ForgeStack" in out  # a message's text, shown in full
    assert 'one of them: {"data": {"invoice": "in_demo_paid"}' in out  # a webhook body the receiver verified
    assert "subscriptions 1, invoices 2" in out and "disabled endpoints 1, files purged 1, files kept 1" in out
    # the declared cron job, end to end: its next tick fired once, worked, and aggregated this run's usage
    assert "usage_aggregate-daily-usage-" in out and "succeeded: {'period': 'day'" in out
    assert "Acme api.requests = 200 (2 events)" in out and "Globex seats = 3 (1 events)" in out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_embedded_default_is_a_private_redis_server_when_the_binary_exists() -> None:
    with choose_redis(None, NOTHING_LISTENS) as choice:
        assert choice.embedded and "private redis-server" in choice.description
        assert choice.connection.ping()
        assert choice.url is not None
        socket_path = Path(choice.url.removeprefix("unix://").split("?")[0])
        assert socket_path.exists()
    assert not socket_path.exists()  # stopped and cleaned up


def test_embedded_default_falls_back_to_fakeredis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("forgejobs.embedded.shutil.which", lambda name: None)
    with choose_redis(None, NOTHING_LISTENS) as choice:
        assert choice.embedded and "fakeredis" in choice.description
        assert choice.connection.ping()


def test_configured_url_wins(redis_url: str) -> None:
    with choose_redis(redis_url, NOTHING_LISTENS) as choice:
        assert not choice.embedded and redis_url in choice.description
        assert isinstance(choice.connection, redis.Redis)


def test_demo_completes_on_fakeredis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import jobs.demo as demo

    monkeypatch.setattr(demo, "DEFAULT_REDIS_URL", NOTHING_LISTENS)
    monkeypatch.setattr("forgejobs.embedded.shutil.which", lambda name: None)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    code = demo.run(Settings(redis_url=None), Console(file=out, width=120), jobs_per_kind=1)
    text = out.getvalue()
    assert code == 0, text
    assert "embedded: fakeredis" in text
    assert "succeeded 18, retried 1, dead-lettered 1" in text  # one sign-up fewer than with --jobs 2


def test_printed_redis_urls_hide_the_password() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("redis://app:s3cret@cache.internal/2") == "redis://app:***@cache.internal/2"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.redis
def test_demo_leaves_jobs_it_finds_waiting_alone(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone's job waits in a catalog queue on the configured Redis: the demo runs elsewhere, untouched."""
    import jobs.demo as demo

    conn = redis.Redis.from_url(redis_url)
    conn.rpush("forgejobs:{email}:wait:p05", "someone-elses-job")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()

    code = demo.run(Settings(redis_url=redis_url), Console(file=out, width=200), jobs_per_kind=1)

    text = out.getvalue()
    assert code == 0, text
    assert "already has 1 jobs waiting in the catalog's queues; the demo leaves them alone" in text
    assert "Redis: embedded" in text and "succeeded 18, retried 1, dead-lettered 1" in text
    assert conn.lrange("forgejobs:{email}:wait:p05", 0, -1) == [b"someone-elses-job"]
    conn.close()
