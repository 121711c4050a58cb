"""Metrics kept in Redis by the runtime's scripts, read by `forgejobs.metrics` and served as Prometheus text."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from forgejobs import Client, Settings
from forgejobs.inspection import Inspector
from forgejobs.keys import QueueKeys
from forgejobs.metrics import MetricsReader
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
        text = reply.read().decode()
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
