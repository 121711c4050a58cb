"""An embedded Redis for the demo when none is configured or reachable.

First choice: a private `redis-server` started on a Unix socket in a
temporary directory (real Redis, nothing on disk, stopped by PID). Fallback
when no binary exists: fakeredis served in-process, which is enough for one
process (the demo's worker runs in threads of the same process).
See docs/decisions/0002-embedded-redis-for-the-demo.md.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from .errors import ForgeJobsError


@dataclass
class RedisChoice:
    connection: redis.Redis
    description: str
    url: str | None  # None when only this process can reach it (fakeredis)
    embedded: bool = False  # gone when the demo ends


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@contextlib.contextmanager
def private_redis_server(binary: str) -> Iterator[str]:
    """Start `redis-server` on a private Unix socket; yield its URL; stop it by PID."""
    workdir = Path(tempfile.mkdtemp(prefix="forgejobs-redis-"))
    socket_path = workdir / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}?db=0"
    try:
        deadline = time.monotonic() + 10
        while not (socket_path.exists() and answers(url)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server did not start (exit code {process.poll()})")
            time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()  # reap it: no zombie left behind
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def choose_redis(configured_url: str | None, default_url: str) -> Iterator[RedisChoice]:
    """The configured Redis; else one answering at the default URL; else an embedded one."""
    if configured_url:
        shown = redact_url(configured_url)
        yield RedisChoice(redis.Redis.from_url(configured_url), f"configured Redis at {shown}", configured_url)
        return
    if answers(default_url):
        yield RedisChoice(redis.Redis.from_url(default_url), f"local Redis at {default_url}", default_url)
        return
    binary = shutil.which("redis-server")
    if binary:
        with private_redis_server(binary) as url:
            yield RedisChoice(
                redis.Redis.from_url(url), f"embedded: a private redis-server ({binary}) on {url}", url, embedded=True
            )
        return
    try:
        import fakeredis
    except ImportError:
        raise ForgeJobsError(
            f"no Redis answers at {default_url} and no redis-server is on the PATH; the in-process fallback "
            "needs the embedded extra (pip install 'forgejobs[embedded]'), or set FORGEJOBS_REDIS_URL"
        ) from None

    server = fakeredis.FakeServer()
    yield RedisChoice(fakeredis.FakeRedis(server=server), "embedded: fakeredis, in this process", None, embedded=True)


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
