"""`forgejobs scheduler` on a real Redis: JSON storage, once per tick across processes, restarts."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from click.testing import CliRunner

from forgejobs import Client, Registry
from forgejobs.backends.redis import RedisBackend
from forgejobs.backends.rqscheduler import RQSchedulerStore
from forgejobs.cli import cli
from forgejobs.schedule import ScheduleSpec
from forgejobs.scheduling import Repeater
from forgejobs.specs import Specs
from tests.conftest import WorkerProcess
from tests.helpers import cli_env, wait_for

pytestmark = pytest.mark.redis

QUEUE = "forgejobs:{fast}:wait:p05"
SCHEDULE = "echo-every-second"  # tests/samplespecs/schedules.yaml: every 1s, overlap allow


def tick_ids(conn: redis.Redis) -> list[str]:
    return [i.decode() for i in conn.lrange(QUEUE, 0, -1)]


def test_repeats_and_their_ticks_are_stored_as_json(client: Client, conn: redis.Redis) -> None:
    store = RQSchedulerStore(conn)
    repeater = Repeater(client, store)
    repeater.sync()
    (raw_id,) = conn.zrange("rq:scheduler:scheduled_jobs", 0, -1)
    data = conn.hget(f"rq:job:{raw_id.decode()}", "data")
    assert data is not None
    func, _instance, args, _kwargs = json.loads(zlib.decompress(data))  # JSON, not pickle
    assert func.endswith("repeat_placeholder") and args == [SCHEDULE]
    (tick,) = repeater.run_once(datetime.fromtimestamp(time.time() + 2, UTC))
    envelope = json.loads(conn.hget(f"forgejobs:{{fast}}:job:{tick.id}", "d"))
    assert envelope["name"] == "fast.echo" and envelope["payload"] == {"text": "tick"}


def test_two_scheduler_processes_enqueue_each_tick_once(
    conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    first = start_cli("scheduler", "--interval", "0.05")
    second = start_cli("scheduler", "--interval", "0.05")
    wait_for(lambda: len(tick_ids(conn)) >= 5, timeout=20, what="five ticks")
    first.stop()
    second.stop()
    ids = tick_ids(conn)
    assert len(ids) == len(set(ids)), f"a tick was enqueued twice: {ids}"
    seconds = sorted(datetime.strptime(i.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ") for i in ids)
    gaps = [(b - a).total_seconds() for a, b in zip(seconds, seconds[1:])]
    # Every tick is on the schedule's 1 s grid and none twice. A pass held up for more than a second on a
    # loaded machine fires only the latest due tick (catch_up "latest"), so a gap may span whole seconds.
    assert all(g >= 1.0 and g == int(g) for g in gaps), f"ticks off the grid or doubled: {seconds}"
    assert "echo-every-second" in first.log() + second.log()


def test_a_restart_neither_duplicates_nor_drops_a_repeat(client: Client, conn: redis.Redis) -> None:
    store = RQSchedulerStore(conn)
    assert Repeater(client, store).sync().added == [SCHEDULE]
    before = store.entries()
    restarted = Repeater(client, RQSchedulerStore(conn)).sync()
    assert (restarted.added, restarted.changed, restarted.removed) == ([], [], [])
    assert store.entries() == before
    assert conn.zcard("rq:scheduler:scheduled_jobs") == 1
    # the schedule leaves the specs: the next scheduler to start unregisters it
    without = Registry([e.job_type for e in client.registry], Specs(queues=client.registry.queues))
    gone = Client(RedisBackend(conn), without)
    assert Repeater(gone, RQSchedulerStore(conn)).sync().removed == [SCHEDULE]
    assert conn.zcard("rq:scheduler:scheduled_jobs") == 0
    assert not conn.keys("rq:job:fj-repeat-*")


def test_a_changed_schedule_is_rewritten_in_redis_and_a_disabled_one_taken_out(
    client: Client, conn: redis.Redis
) -> None:
    store = RQSchedulerStore(conn)
    now = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert Repeater(client, store).sync(now).added == [SCHEDULE]
    before = store.entries()[SCHEDULE]

    def registry_with(**changes: object) -> Registry:
        declared = {"job": "fast.echo", "payload": {"text": "tick"}, "every": 1, "overlap": "allow"}
        specs = Specs(queues=client.registry.queues, schedules={SCHEDULE: ScheduleSpec(**{**declared, **changes})})
        return Registry([e.job_type for e in client.registry], specs)

    changed = Client(RedisBackend(conn), registry_with(every=timedelta(minutes=1), payload={"text": "new"}))
    report = Repeater(changed, RQSchedulerStore(conn)).sync(now)
    assert (report.added, report.changed, report.removed) == ([], [SCHEDULE], [])
    after = RQSchedulerStore(conn).entries()[SCHEDULE]  # read back from Redis by a store of its own
    assert after.fingerprint != before.fingerprint
    assert after.next_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)  # the new interval's first tick after now
    assert conn.zcard("rq:scheduler:scheduled_jobs") == 1  # rewritten, not stored twice

    disabled = Client(RedisBackend(conn), registry_with(enabled=False))
    assert Repeater(disabled, RQSchedulerStore(conn)).sync(now).removed == [SCHEDULE]
    assert conn.zcard("rq:scheduler:scheduled_jobs") == 0
    assert Repeater(disabled, RQSchedulerStore(conn)).sync(now).added == []
    assert RQSchedulerStore(conn).entries() == {}


def test_schedules_command_lists_and_runs(client: Client, conn: redis.Redis, redis_url: str) -> None:
    env = cli_env(redis_url)
    Repeater(client, RQSchedulerStore(conn)).sync()
    listing = CliRunner().invoke(cli, ["schedules"], env=env)
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if SCHEDULE in line)
    assert "every 1s" in row and "schedules.yaml" in row and "never" in row
    ran = CliRunner().invoke(cli, ["schedules", "run", SCHEDULE], env=env)
    assert ran.exit_code == 0 and "echo-every-second-manual-" in ran.output
    assert len(tick_ids(conn)) == 1
    missing = CliRunner().invoke(cli, ["schedules", "run", "nope"], env=env)
    assert missing.exit_code == 1 and "no schedule named 'nope'" in missing.output


def test_a_scheduler_killed_mid_pass_holds_the_others_up_for_its_short_lease_only(
    conn: redis.Redis, start_cli: Callable[..., WorkerProcess]
) -> None:
    """A scheduler SIGKILLed during a pass leaves its lease behind (set with LEASE_MS to live): another
    scheduler fires the next due tick once it has lapsed, not after rq-scheduler's 11 s lock."""
    assert RQSchedulerStore.LEASE_MS <= 2000
    conn.set("forgejobs:scheduler:lease", "a-scheduler-killed-mid-pass", px=RQSchedulerStore.LEASE_MS)
    started = time.monotonic()
    scheduler = start_cli("scheduler", "--interval", "0.1")
    wait_for(lambda: "scheduler: " in scheduler.log(), timeout=30, what="the scheduler to start")
    ready = time.monotonic()  # start-up is the machine's business, whatever its load: measured from here on
    wait_for(lambda: tick_ids(conn), timeout=15, what="a tick from the other scheduler")
    ticked = time.monotonic()
    lease = RQSchedulerStore.LEASE_MS / 1000
    assert ticked - started >= lease - 0.1  # it did wait for the lease
    # ... and no longer than the lease (or its start-up, if that took longer) and a pass or two on the 1 s
    # grid; rq-scheduler's lock would hold it up for 11 s.
    assert ticked - max(ready, started + lease) < 6.0
