"""Redis Sentinel: producers and workers follow a failover (`redis+sentinel://` URLs).

The test runs its own primary, replica and three sentinels on free ports (never the shared server) and
stops them by PID.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from forgejobs import Client, Registry, Settings
from forgejobs.backends.redis import RedisBackend, connect, describe
from forgejobs.errors import BackendError
from tests.conftest import WorkerProcess, free_port, wait_for

pytestmark = pytest.mark.redis

SERVICE = "svc"


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[str, list[int], list[int]]]:
    """(sentinel URL, [primary port, replica port], sentinel ports), all running."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    started: list[subprocess.Popen[bytes]] = []

    def run(*args: str) -> None:
        started.append(subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    primary, replica = free_port(), free_port()
    try:
        run("--port", str(primary), *data)
        wait_for(lambda: _answers(primary), timeout=10, what="the primary")
        run("--port", str(replica), *data, "--replicaof", "127.0.0.1", str(primary))
        wait_for(lambda: _link_up(replica), timeout=15, what="the replica to sync")
        ports = [free_port() for _ in range(3)]
        for port in ports:
            conf = tmp_path / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            run(str(conf), "--sentinel")
        for port in ports:
            wait_for(lambda p=port: _knows_replica(p), timeout=20, what="the sentinels to find the replica")
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        yield f"redis+sentinel://{hosts}/{SERVICE}/0", [primary, replica], ports
    finally:
        for process in started:
            process.kill()
            process.wait(10)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _link_up(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=0.5).info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _knows_replica(port: int) -> bool:
    try:
        return len(redis.Redis(port=port, socket_timeout=0.5).sentinel_slaves(SERVICE)) == 1
    except redis.RedisError:
        return False


def _role(port: int) -> str:
    try:
        return str(redis.Redis(port=port, socket_timeout=0.5).info("replication").get("role"))
    except redis.RedisError:
        return "?"


def test_a_malformed_sentinel_url_is_refused_naming_what_is_wrong() -> None:
    with pytest.raises(BackendError, match="is not host:port"):
        connect("redis+sentinel://nohost/svc/0")
    with pytest.raises(BackendError, match="the path must be /service_name"):
        connect("redis+sentinel://127.0.0.1:26379/svc/zero")


def test_producers_and_workers_carry_on_through_a_sentinel_failover(
    sentinels: tuple[str, list[int], list[int]],
    start_cli: Callable[..., WorkerProcess],
    registry: Registry,
) -> None:
    url, (primary, replica), sentinel_ports = sentinels
    client = Client(RedisBackend.from_settings(Settings(redis_url=url, enqueue_timeout=10)), registry)
    assert "primary from Sentinel" in describe(client.backend.connection)  # type: ignore[attr-defined]
    worker = start_cli("worker", "--queues", "fast", env={"FORGEJOBS_REDIS_URL": url})
    assert client.enqueue_raw("fast.echo", {"text": "before"}).result(timeout=20).text == "before"

    before_failover = client.enqueue_raw("fast.echo", {"text": "enqueued before the failover"})
    redis.Redis(port=primary).wait(1, 2000)  # replicated (asynchronous replication can lose the last writes)
    redis.Redis(port=sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)
    wait_for(lambda: _role(replica) == "master", timeout=30, what="the replica to be promoted")

    after = client.enqueue_raw("fast.echo", {"text": "after"})  # the producer finds the new primary
    assert after.result(timeout=40).text == "after"
    assert before_failover.result(timeout=20).text == "enqueued before the failover"
    print(worker.log()[-2000:])
    assert worker.process.poll() is None and "Traceback" not in worker.log()
