"""Metrics kept in Redis by the runtime's scripts, read by `forgejobs.metrics` and served as Prometheus text."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from forgejobs import Client, Settings
from forgejobs.inspection import Inspector
from forgejobs.keys import Keys, QueueKeys
from forgejobs.metrics import MetricsReader, asgi_app, wsgi_app
from forgejobs.runtime.scripts import METRIC_BUCKETS_MS, Scripts
from forgejobs.runtime.upkeep import MINUTES_KEPT
from forgejobs.runtime.worker import Worker
from forgejobs.status import TERMINAL, Status
from tests.conftest import WorkerProcess, free_port, wait_for
from tests.samplejobs.basic import Doomed, Echo, Flaky

pytestmark = pytest.mark.redis

FAST = QueueKeys("forgejobs", "fast")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return parse(reply.read().decode())


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition as (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_add_up_to_what_two_worker_processes_ran(
    client: Client,
    conn: redis.Redis,
    start_worker: Callable[..., WorkerProcess],
    start_cli: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # given two worker processes on the same queue and a metrics server
    first = start_worker("--queues", "fast")
    second = start_worker("--queues", "fast")
    port = free_port()
    server = start_cli("metrics", "--port", str(port))
    wait_for(lambda: _answers(port) or server.process.poll() is not None, timeout=20, what="the metrics server")
    assert server.process.poll() is None, server.log()

    # when 20 jobs succeed, 3 fail once then succeed, and 2 are dead-lettered at once
    echoes = Echo.enqueue_many([{"text": str(i)} for i in range(20)])
    flaky = [Flaky.enqueue(path=str(tmp_path / f"flaky-{i}"), failures=1) for i in range(3)]
    doomed = [Doomed.enqueue(path=str(tmp_path / f"doomed-{i}")) for i in range(2)]
    handles = [*echoes, *flaky, *doomed]
    wait_for(lambda: all(h.status() in TERMINAL for h in handles), timeout=60, what="every job to finish")
    assert {h.status() for h in flaky} == {Status.SUCCEEDED}

    # then the counters add up to what ran, whichever process ran it
    samples = scrape(port)
    fast = {"queue": "fast"}
    assert value(samples, "forgejobs_jobs_enqueued_total", **fast, job_name="fast.echo") == 20
    assert value(samples, "forgejobs_jobs_succeeded_total", **fast, job_name="fast.echo") == 20
    assert value(samples, "forgejobs_jobs_succeeded_total", **fast, job_name="fast.flaky") == 3
    assert value(samples, "forgejobs_jobs_retried_total", **fast, job_name="fast.flaky") == 3
    assert (
        value(samples, "forgejobs_jobs_dead_lettered_total", **fast, job_name="fast.doomed", reason="unrecoverable")
        == 2
    )
    assert value(samples, "forgejobs_jobs_failed_total", **fast, job_name="fast.flaky") == 3
    assert value(samples, "forgejobs_jobs_failed_total", **fast, job_name="fast.doomed") == 2
    assert value(samples, "forgejobs_jobs_started_total", **fast, job_name="fast.flaky") == 6
    assert value(samples, "forgejobs_job_run_seconds_count", **fast, job_name="fast.echo") == 20
    assert value(samples, "forgejobs_job_wait_seconds_count", **fast, job_name="fast.doomed") == 2
    assert value(samples, "forgejobs_job_run_seconds_bucket", **fast, job_name="fast.echo", le="+Inf") == 20
    assert value(samples, "forgejobs_workers_alive") == 2
    assert value(samples, "forgejobs_queue_worker_slots", **fast) == 2
    assert value(samples, "forgejobs_queue_jobs", **fast, state="succeeded") == 23
    assert value(samples, "forgejobs_queue_jobs", **fast, state="dead") == 2
    assert value(samples, "forgejobs_queue_oldest_waiting_seconds", **fast) == 0
    # both processes ran jobs (the counters are the cluster's, not one process's)
    takers = {json.loads(line)["pid"] for i in range(3) for line in (tmp_path / f"flaky-{i}").read_text().splitlines()}
    takers |= {
        json.loads(line)["pid"] for i in range(2) for line in (tmp_path / f"doomed-{i}").read_text().splitlines()
    }
    assert takers <= {first.pid, second.pid}

    # and the per-minute counts hold the same totals
    minutes = MetricsReader(conn, queues=["fast"]).per_minute("fast", minutes=10)
    assert len(minutes) == 10
    assert sum(m.succeeded for m in minutes) == 23
    assert sum(m.failed for m in minutes) == 5


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_a_snapshot_counts_outcomes_of_an_in_process_worker_and_the_start_time_of_finished_jobs(
    client: Client, conn: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    handle = Echo.enqueue(text="hi")
    doomed = Doomed.enqueue(path=str(tmp_path / "d"))
    Worker(settings, client.registry, queues=["fast"], connection=conn).run(burst=True, horizon=0)

    snap = MetricsReader(conn, queues=["fast"]).snapshot()
    assert snap.total("enqueued", "fast") == 2
    assert snap.total("started", "fast") == 2
    assert snap.total("succeeded", "fast", "fast.echo") == 1
    assert snap.total("dead_lettered", "fast", "fast.doomed") == 1
    run = next(h for h in snap.histograms if h.name == "run" and h.job_name == "fast.echo")
    assert run.count == 1 and len(run.buckets) == len(METRIC_BUCKETS_MS) + 1
    assert snap.jobs["fast"]["succeeded"] == 1

    # `forgejobs job ID` shows when the finished attempt started
    detail = Inspector(client.backend, client.registry).job(handle.id)
    assert detail.started_at is not None and detail.finished_at is not None
    assert detail.started_at <= detail.finished_at
    assert Inspector(client.backend, client.registry).job(doomed.id).started_at is not None


def test_a_delayed_job_becomes_ready_at_its_due_time_and_the_oldest_wait_is_measured_from_it(
    client: Client, conn: redis.Redis
) -> None:
    handle = Echo.with_options(delay=0.2).enqueue(text="later")
    due = float(conn.zscore(FAST.delayed, handle.id) or 0)
    assert float(conn.hget(FAST.job(handle.id), "q") or 0) == due
    wait_for(lambda: time.time() * 1000 > due + 50, timeout=5, what="the due time to pass")
    moved, _ = Scripts(conn).promote(keys=FAST.standard, args=[FAST.job_prefix, 100])
    assert moved == 1
    assert float(conn.hget(FAST.job(handle.id), "q") or 0) == due
    oldest = MetricsReader(conn, queues=["fast"]).snapshot().oldest_waiting["fast"]
    assert oldest is not None and oldest > 0


def test_per_minute_counts_older_than_the_window_are_trimmed(conn: redis.Redis) -> None:
    now_minute = int(conn.time()[0]) // 60
    old, recent = now_minute - MINUTES_KEPT - 5, now_minute - 3
    conn.hset(FAST.minutes, mapping={f"{old}|c": 4, f"{old}|f": 1, f"{recent}|c": 7, "junk": 1})
    deleted = Scripts(conn).minutes(keys=[FAST.minutes], args=[MINUTES_KEPT])
    assert deleted == 3
    assert conn.hgetall(FAST.minutes) == {f"{recent}|c".encode(): b"7"}
    counts = MetricsReader(conn, queues=["fast"]).per_minute("fast", minutes=5)
    assert [m.succeeded for m in counts] == [0, 7, 0, 0, 0]


def test_per_minute_refuses_a_window_longer_than_what_is_kept(conn: redis.Redis) -> None:
    with pytest.raises(ValueError, match="1..1440"):
        MetricsReader(conn, queues=["fast"]).per_minute("fast", minutes=2000)


def test_a_metrics_hash_with_fields_it_does_not_know_is_read_without_them(conn: redis.Redis) -> None:
    conn.hset(
        FAST.metrics,
        mapping={
            "enqueued|fast.echo": 2,
            "dead_lettered:exhausted|fast.echo": 1,
            "run|fast.echo|1": 3,
            f"run|fast.echo|{len(METRIC_BUCKETS_MS) + 1}": 1,  # the +Inf bucket
            "run_ms|fast.echo": 1500,
            "succeeded|fast.echo": "not a number",  # skipped, not an error
            f"run|fast.echo|{len(METRIC_BUCKETS_MS) + 2}": 7,  # no such bucket
            "wait|fast.echo|0": 7,  # buckets count from 1
            "run|fast.echo|x": 7,
            "bogus|fast.echo": 7,  # no such counter
            "started|fast.echo": 7,  # derived when read, never taken from the hash
            "junk": 7,
            "a|b|c|d": 7,
        },
    )
    snap = MetricsReader(conn, queues=["fast"]).snapshot()
    assert sorted((c.name, c.job_name, c.reason, c.value) for c in snap.counters) == [
        ("dead_lettered", "fast.echo", "exhausted", 1),
        ("enqueued", "fast.echo", None, 2),
        ("failed", "fast.echo", None, 1),
    ]
    [run] = snap.histograms
    assert (run.name, run.count, run.sum_seconds) == ("run", 4, 1.5)
    assert run.buckets[0] == (METRIC_BUCKETS_MS[0] / 1000, 3) and run.buckets[-1] == (float("inf"), 4)


def test_without_a_queue_list_the_reader_finds_the_queues_with_metrics_or_workers_and_keeps_them_a_minute(
    client: Client, conn: redis.Redis
) -> None:
    Echo.enqueue(text="counted")  # fast gets a metrics hash
    conn.zadd("forgejobs:{reports}:workers", {"host-1/0": 1})
    conn.hset("forgejobs:{}:metrics", "enqueued|x", 1)  # no queue name between the braces: not a queue
    conn.hset("otherapp:{mail}:metrics", "enqueued|x", 1)  # another prefix
    reader = MetricsReader(conn)
    assert reader.queues() == ["fast", "reports"]
    conn.hset("forgejobs:{late}:metrics", "enqueued|x", 1)
    assert reader.queues() == ["fast", "reports"]  # found again only after a minute
    assert MetricsReader(conn).queues() == ["fast", "late", "reports"]
    snap = reader.snapshot()
    assert snap.total("enqueued", "fast") == 1 and set(snap.jobs) == {"fast", "reports"}
    assert MetricsReader(conn, Keys("otherapp")).queues() == ["mail"]


def test_a_waiting_id_whose_job_is_gone_is_not_counted_in_the_oldest_wait(client: Client, conn: redis.Redis) -> None:
    conn.rpush(FAST.wait(1), "ghost")  # at the head of priority 1's wait list, with no job hash
    reader = MetricsReader(conn, queues=["fast"])
    assert reader.snapshot().oldest_waiting == {"fast": None}
    Echo.enqueue(text="real")  # the default priority's wait list: its head counts
    oldest = reader.snapshot().oldest_waiting["fast"]
    assert oldest is not None and oldest >= 0


def call_asgi(app: Callable[..., Any], path: str = "/") -> tuple[int, bytes]:
    """One GET of an ASGI app, as a server would make it: its status and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "root_path": ""}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_wsgi_and_asgi_apps_serve_the_prometheus_text_of_the_configured_redis(
    client: Client, conn: redis.Redis, settings: Settings
) -> None:
    Echo.enqueue(text="counted")
    conn.sadd(Keys().paused, "fast")
    started: list[str] = []
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    wsgi_body = b"".join(wsgi_app(settings, ["fast"])(environ, lambda status, headers: started.append(status)))
    assert started == ["200 OK"]
    status, asgi_body = call_asgi(asgi_app(settings, ["fast"]))
    assert status == 200
    for body in (wsgi_body, asgi_body):
        samples = parse(body.decode())
        assert value(samples, "forgejobs_jobs_enqueued_total", queue="fast", job_name="fast.echo") == 1
        assert value(samples, "forgejobs_queue_jobs", queue="fast", state="waiting") == 1
        assert value(samples, "forgejobs_queue_paused", queue="fast") == 1
        assert value(samples, "forgejobs_workers_alive") == 0
