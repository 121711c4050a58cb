"""`forgejobs demo`: the catalog's jobs enqueued and worked, with a live display.

Runs against FORGEJOBS_REDIS_URL, else a Redis on 127.0.0.1:6379, else an
embedded one (see forgejobs.embedded). Starts a webhook receiver on
127.0.0.1 whose endpoints succeed, fail once, or answer 410 Gone, so the run
shows successes, a retry and a dead letter.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forgejobs import Client, JobHandle, PayloadTooLarge, Registry, Settings, Status, backoff, set_client
from forgejobs.backends.rq import RQBackend
from forgejobs.backends.rqscheduler import RQSchedulerStore
from forgejobs.embedded import choose_redis
from forgejobs.execution import DeadLettered, Outcome, Retry, Succeeded
from forgejobs.scheduling import Repeater
from forgejobs.settings import DEFAULT_REDIS_URL
from forgejobs.worker import Worker

from .audit import RecordAuditEvent
from .email import WelcomeEmail
from .resources import Resources
from .webhooks import DeliverWebhook


class _Receiver(BaseHTTPRequestHandler):
    """/ok answers 200; /flaky answers 503 the first time per delivery, then 200; /gone answers 410."""

    seen: Counter[str] = Counter()
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        delivery = self.headers.get("webhook-id", "?")
        self.seen[delivery] += 1
        if self.path == "/gone":
            code = 410
        elif self.path == "/flaky" and self.seen[delivery] == 1:
            code = 503
        else:
            code = 200
            self.received.append({"path": self.path, "delivery": delivery, "body": json.loads(body)})
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _enqueue_mix(base_url: str, n: int, console: Console) -> list[JobHandle]:
    handles: list[JobHandle] = []
    for i in range(n):
        user = f"user-{i + 1}"
        handles.append(WelcomeEmail.enqueue(user_id=user, email=f"{user}@example.com", name=f"User {i + 1}"))
        handles.append(RecordAuditEvent.enqueue(actor_id=user, action="user.signed_up", target=user))
        handles.append(
            DeliverWebhook.enqueue(
                delivery_id=uuid.uuid4().hex, url=f"{base_url}/ok", event="user.created", data={"id": user}
            )
        )
    urgent = WelcomeEmail.with_options(priority=1).enqueue(user_id="vip", email="vip@example.com", name="VIP")
    later = RecordAuditEvent.with_options(delay=2).enqueue(actor_id="system", action="demo.delayed", target="demo")
    flaky = DeliverWebhook.enqueue(delivery_id=uuid.uuid4().hex, url=f"{base_url}/flaky", event="invoice.paid", data={})
    gone = DeliverWebhook.enqueue(delivery_id=uuid.uuid4().hex, url=f"{base_url}/gone", event="invoice.paid", data={})
    handles += [urgent, later, flaky, gone]
    # The guards: neither of these reaches Redis.
    try:
        WelcomeEmail.enqueue(user_id="x", email="not-an-email", name="X")
    except ValidationError as exc:
        console.print(
            f"[yellow]refused at enqueue[/] (invalid payload): {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}"
        )
    try:
        RecordAuditEvent.enqueue(actor_id="x", action="file.uploaded", target="f", metadata={"blob": "x" * 20_000})
    except PayloadTooLarge as exc:
        console.print(f"[yellow]refused at enqueue[/] (too large): {exc}")
    return handles


def _queue_table(handles: list[JobHandle], outcomes: Counter[str]) -> Table:
    """This run's jobs by queue and status."""
    by_queue: dict[str, Counter[Status]] = {}
    for handle in handles:
        queue = handle.job_type.job_options().queue if handle.job_type else "?"
        by_queue.setdefault(queue or "?", Counter())[handle.status()] += 1
    columns = (Status.QUEUED, Status.SCHEDULED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED)
    table = Table(title="this run's jobs by queue")
    table.add_column("queue")
    for status in columns:
        table.add_column({Status.FAILED: "dead-lettered"}.get(status, status.value), justify="right")
    for queue, counts in sorted(by_queue.items()):
        table.add_row(queue, *(str(counts[s]) for s in columns))
    table.caption = "outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none yet")
    return table


def run(settings: Settings, console: Console, *, jobs_per_kind: int = 4) -> int:
    registry = Registry.load(settings)
    # The first webhook retry would wait 5 s; the demo keeps the schedule's shape but shortens it.
    demo_backoff = backoff.schedule(1, 2, 4)
    workdir = Path(tempfile.mkdtemp(prefix="forgejobs-demo-"))
    resources = Resources(workdir / "outbox", workdir / "audit.jsonl", "ForgeStack <no-reply@forgestack.test>", 5.0)
    with choose_redis(settings.redis_url, DEFAULT_REDIS_URL) as choice, _receiver() as base_url:
        console.print(f"[bold]Redis:[/] {choice.description}")
        _Receiver.seen.clear()
        _Receiver.received.clear()
        console.print(f"[bold]webhook receiver:[/] {base_url}   [bold]outbox:[/] {resources.outbox_dir}")
        registry = Registry(
            [e.job_type for e in registry],
            registry.specs.model_copy(
                update={"jobs": {**registry.specs.jobs, "webhooks.deliver-webhook": _override(demo_backoff)}}
            ),
        )
        client = Client(RQBackend(choice.connection), registry)
        previous = set_client(client)
        try:
            handles = _enqueue_mix(base_url, jobs_per_kind, console)
            outcomes: Counter[str] = Counter()
            lock = threading.Lock()
            progress = Progress(
                TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
            )
            task = progress.add_task("jobs", total=len(handles))

            def on_outcome(name: str, outcome: Outcome) -> None:
                kind = {Succeeded: "succeeded", Retry: "retried", DeadLettered: "dead-lettered"}.get(
                    type(outcome), "other"
                )
                with lock:
                    outcomes[kind] += 1
                if isinstance(outcome, Retry):
                    console.print(f"[yellow]retry[/] {name} in {outcome.delay:g}s: {outcome.error}")
                elif isinstance(outcome, DeadLettered):
                    console.print(f"[red]dead letter[/] {name}: {outcome.record.reason.value}: {outcome.record.error}")
                if kind != "retried":
                    progress.advance(task)

            queues = sorted({e.options.queue or "" for e in registry})
            worker = Worker(
                settings,
                registry,
                queues=queues,
                connection=choice.connection,
                resources=resources,
                on_outcome=on_outcome,
            )
            thread = threading.Thread(target=worker.run, kwargs={"burst": True, "horizon": 10.0}, daemon=True)
            started = time.monotonic()
            quiet = logging.getLogger("forgejobs")
            previous_level = quiet.level
            quiet.setLevel(logging.CRITICAL)  # the display shows every outcome
            thread.start()
            with Live(console=console, refresh_per_second=8) as live:
                while thread.is_alive():
                    live.update(Group(progress, _queue_table(handles, outcomes)))
                    thread.join(0.15)
                live.update(Group(progress, _queue_table(handles, outcomes)))
            quiet.setLevel(previous_level)
            elapsed = time.monotonic() - started
            _cron_phase(console, settings, client, choice.connection, resources)
            return _summary(
                console, handles, outcomes, elapsed, resources, client, None if choice.embedded else choice.url
            )
        finally:
            set_client(previous)


CRON_SCHEDULE = "usage.aggregate-daily-usage"


def _cron_phase(console: Console, settings: Settings, client: Client, connection: Any, resources: Resources) -> None:
    """A declared cron job end to end: register, fire its next tick, work it, show the result."""
    store = RQSchedulerStore(connection)
    repeater = Repeater(client, store)
    added = repeater.sync().added
    scheduled = client.registry.schedules[CRON_SCHEDULE]
    tick = scheduled.schedule.next_after(datetime.now(UTC))
    console.print(
        f"\n[bold]cron:[/] {CRON_SCHEDULE} ({scheduled.schedule.describe()}, catch_up={scheduled.schedule.catch_up}, "
        f"from {scheduled.source}); next tick {tick:%Y-%m-%d %H:%M} UTC. "
        "One scheduler pass at that time (the demo's clock jumps there):"
    )
    try:
        fired = repeater.run_once(tick)
        worker = Worker(settings, client.registry, queues=["usage"], connection=connection, resources=resources)
        worker.run(burst=True, horizon=0)
        for handle in fired:
            note = " (already fired by an earlier run: its result)" if handle.existing else ""
            console.print(f"  {handle.id}: {handle.status().value}{note}, counts {handle.result(timeout=10)}")
        for path in sorted((resources.audit_log.parent / "usage").glob("*.json")):
            console.print(f"  wrote {path}")
    finally:
        for name in added:  # leave no repeat registered in a Redis the demo did not start
            store.remove(name)


def _override(strategy: Any) -> Any:
    from forgejobs.options import JobOverride

    return JobOverride(backoff=strategy)


def _summary(
    console: Console,
    handles: list[JobHandle],
    outcomes: Counter[str],
    elapsed: float,
    resources: Resources,
    client: Client,
    choice_url: str | None,
) -> int:
    statuses = Counter(h.status() for h in handles)
    console.print()
    console.print(
        f"[bold]summary[/] ({elapsed:.1f}s): [green]succeeded {outcomes['succeeded']}[/], "
        f"[yellow]retried {outcomes['retried']}[/], [red]dead-lettered {outcomes['dead-lettered']}[/]"
    )
    emails = sorted(resources.outbox_dir.glob("*.eml")) if resources.outbox_dir.exists() else []
    console.print(f"outbox: {len(emails)} messages in {resources.outbox_dir}")
    console.print(f"webhook receiver got {len(_Receiver.received)} deliveries")
    ours = {h.id for h in handles}
    for record in client.dead_letters(limit=100):
        if record.id in ours:
            console.print(f"dead letter {record.id}: {record.name} ({record.reason.value}) {record.error}")
    if choice_url:
        console.print(f"inspect them with: FORGEJOBS_REDIS_URL='{choice_url}' forgejobs dead list")
    pending = [h for h in handles if statuses and h.status() not in (Status.SUCCEEDED, Status.FAILED)]
    if pending:
        console.print(f"[red]{len(pending)} jobs did not finish[/]")
        return 1
    return 0
