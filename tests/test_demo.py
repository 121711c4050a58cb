"""The README's first command: the demo, on a configured Redis and on each embedded default.

The demo writes only its own things (a temporary folder, Redis keys under a prefix of its own) and removes
them at the end, also when it fails, unless asked to keep them."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rich.console import Console

from forgejobs import Settings
from forgejobs.cli import cli
from forgejobs.embedded import choose_redis, redact_url
from tests.conftest import CLAIM_KEY, ROOT

NOTHING_LISTENS = "redis://127.0.0.1:1/0"


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of the test's own for the demo's folder (TMPDIR, and tempfile in this process)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def demo_folders(where: Path) -> list[Path]:
    return sorted(where.glob("forgejobs-demo-*"))


@pytest.mark.redis
def test_demo_runs_the_catalog_on_the_configured_redis(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FORGEJOBS_REDIS_URL": redis_url, "COLUMNS": "120", "TMPDIR": str(tmp_path)}
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
    # one dead-lettered on 410) and a disabled-endpoint notification, 2 file cleanups; the checkout workflow
    # (sync, a receipt, audit, activity) and the monthly invoicing (its start, 2 organisations, the summary)
    assert "succeeded 29, retried 1, dead-lettered 1" in out
    assert "outbox: 7 messages" in out
    # the workflows, and the step trees of two of them as `forgejobs workflows show` prints them
    assert "4 runs: 1 checkout succeeded, 2 member_sign_up succeeded, 1 monthly_invoicing succeeded" in out
    assert re.search(r"checkout [0-9a-f]{24}: succeeded\n└── sync billing.sync-checkout done → ", out), out
    for step in ("receipt email.checkout-receipt done", "audit audit.record-audit-event done"):
        assert f"    ├── {step} → " in out
    assert "    └── activity activity.create-activity done → " in out
    assert "└── invoice billing.invoice-organisation done ×2 (2 reported, 0 failed) → " in out
    assert '    └── summary billing.invoicing-summary done → {"month":' in out
    assert "webhook receiver got 2 deliveries with valid signatures (/flaky 1, /ok 1); 0 bad signatures" in out
    assert "duplicate=True" in out and "stripe refused (bad signature)" in out
    assert "Payment failed for Acme: USD 49.00 due" in out
    assert "invited you to join the organisation Acme on ForgeStack" in out  # a message's text, shown in full
    assert 'one of them: {"data": {"invoice": "in_demo_paid"}' in out  # a webhook body the receiver verified
    assert "subscriptions 1, invoices 2" in out and "disabled endpoints 1, files purged 1, files kept 1" in out
    # the declared cron job, end to end: its next tick fired once, worked, and aggregated this run's usage
    assert "usage_aggregate-daily-usage-" in out and "succeeded: {'period': 'day'" in out
    assert "Acme api.requests = 200 (2 events)" in out and "Globex seats = 3 (1 events)" in out
    # nothing left behind: no key but the test's claim, no folder
    assert "cleaned up: " in out and "(--keep keeps them)" in out
    assert redis.Redis.from_url(redis_url).keys("*") == [CLAIM_KEY.encode()]
    assert demo_folders(tmp_path) == []


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


def test_demo_completes_on_fakeredis(monkeypatch: pytest.MonkeyPatch, own_tmp: Path) -> None:
    import jobs.demo as demo

    monkeypatch.setattr(demo, "DEFAULT_REDIS_URL", NOTHING_LISTENS)
    monkeypatch.setattr("forgejobs.embedded.shutil.which", lambda name: None)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    code = demo.run(Settings(redis_url=None), Console(file=out, width=120), jobs_per_kind=1)
    text = out.getvalue()
    assert code == 0, text
    assert "embedded: fakeredis" in text
    assert "succeeded 26, retried 1, dead-lettered 1" in text  # one sign-up fewer than with --jobs 2
    assert "4 runs" not in text and "3 runs: 1 checkout succeeded, 1 member_sign_up succeeded" in text
    assert "└── summary billing.invoicing-summary done → " in text
    assert demo_folders(own_tmp) == []


def test_printed_redis_urls_hide_the_password() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("redis://app:s3cret@cache.internal/2") == "redis://app:***@cache.internal/2"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.redis
def test_demo_leaves_other_jobs_on_a_shared_redis_alone(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, own_tmp: Path
) -> None:
    """Someone's job waits in a catalog queue on the configured Redis: the demo's keys have a prefix of their
    own, so its worker never sees that job, and its clean-up removes only its own keys."""
    import jobs.demo as demo

    conn = redis.Redis.from_url(redis_url)
    conn.rpush("forgejobs:{email}:wait:p05", "someone-elses-job")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()

    code = demo.run(Settings(redis_url=redis_url), Console(file=out, width=200), jobs_per_kind=1)

    text = out.getvalue()
    assert code == 0, text
    assert f"Redis: configured Redis at {redis_url}" in text and "succeeded 26, retried 1, dead-lettered 1" in text
    assert sorted(conn.keys("*")) == sorted([CLAIM_KEY.encode(), b"forgejobs:{email}:wait:p05"])
    assert conn.lrange("forgejobs:{email}:wait:p05", 0, -1) == [b"someone-elses-job"]
    assert demo_folders(own_tmp) == []
    conn.close()


@pytest.mark.redis
def test_demo_keep_keeps_the_outbox_and_the_jobs_and_says_how_to_inspect_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, own_tmp: Path
) -> None:
    import jobs.demo as demo

    monkeypatch.chdir(ROOT)
    out = io.StringIO()

    code = demo.run(Settings(redis_url=redis_url), Console(file=out, width=100), jobs_per_kind=1, keep=True)

    text = out.getvalue()
    assert code == 0, text
    (folder,) = demo_folders(own_tmp)
    outbox = folder / "outbox"
    assert f"kept: the outbox, 6 sent emails as .eml files, in {outbox}" in text
    assert len(list(outbox.glob("*.eml"))) == 6 and (folder / "catalog.db").exists()
    prefix = folder.name  # the keys share the folder's name
    conn = redis.Redis.from_url(redis_url)
    kept = [k.decode() for k in conn.keys("*") if k != CLAIM_KEY.encode()]
    assert kept and all(k.startswith(f"{prefix}:") for k in kept)
    # the printed command, run as printed (./dev forgejobs is the virtualenv's forgejobs, run from the root)
    command = re.search(r"inspect them \(from the repository root\) with: (.*)", text)
    assert command is not None, text
    assert command.group(1) == (
        f"FORGEJOBS_REDIS_URL='{redis_url}' FORGEJOBS_KEY_PREFIX='{prefix}' ./dev forgejobs dead list"
    )
    env = dict(re.findall(r"(FORGEJOBS_\w+)='([^']*)'", command.group(1)))
    listed = CliRunner().invoke(cli, ["dead", "list", "--json"], env=env, catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.output)] == ["webhooks.deliver-webhook"]
    conn.close()


@pytest.mark.redis
def test_a_failing_demo_cleans_up_too(redis_url: str, monkeypatch: pytest.MonkeyPatch, own_tmp: Path) -> None:
    import jobs.demo as demo

    def broken(*args: object) -> None:
        raise RuntimeError("the flows broke")

    monkeypatch.setattr(demo, "_fire_flows", broken)
    monkeypatch.chdir(ROOT)
    with pytest.raises(RuntimeError, match="the flows broke"):
        demo.run(Settings(redis_url=redis_url), Console(file=io.StringIO()), jobs_per_kind=1)
    assert redis.Redis.from_url(redis_url).keys("*") == [CLAIM_KEY.encode()]
    assert demo_folders(own_tmp) == []
