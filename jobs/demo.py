"""`forgejobs demo`: the catalog's flows fired, worked by a worker, and shown.

Runs against FORGEJOBS_REDIS_URL, else a Redis on 127.0.0.1:6379, else an
embedded one (see forgejobs.embedded). Everything else is local and
temporary: a SQLite catalog database, an email outbox folder, a storage
folder, and a webhook receiver on 127.0.0.1 that checks every signature and
whose endpoints succeed, fail once, or answer 410 Gone.

The flows: sign-ups (workflows of welcome email, audit, activity), an
invitation, signed Stripe events (checkout, subscription, a paid and a failed
invoice) through billing to email (the checkout a workflow), webhook
deliveries, usage aggregation (and the declared cron job's next tick), the
month's invoicing workflow, a soft-deleted file purged after a shortened delay
and a restored one kept. Then a summary per queue, the workflow runs with two
step trees, the outbox, what the receiver got, and the rows the jobs wrote.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forgejobs import Client, PayloadTooLarge, Registry, Settings, backoff, set_client
from forgejobs.backends.redis import RedisBackend
from forgejobs.embedded import RedisChoice, choose_redis, redact_url
from forgejobs.execution import DeadLettered, Outcome, Retry, Succeeded
from forgejobs.options import JobOverride
from forgejobs.scheduling import MemoryRepeatStore, Repeater
from forgejobs.settings import DEFAULT_REDIS_URL
from forgejobs.worker import Worker
from forgejobs.workflows import workflow_run
from forgejobs.workflows.cli import run_tree
from forgejobs.workflows.run import store_for

from . import store as tables
from .audit import RecordAuditEvent
from .email import invite
from .files import restore_file, soft_delete_file
from .flows import sign_up
from .resources import CatalogSettings, Resources, build
from .signing import WebhookVerificationError, verify
from .store import Store, new_id, utcnow
from .stripe import InvalidStripeEvent, build_event, receive_stripe_event, sign_stripe_payload
from .usage import record_usage
from .webhooks import create_endpoint, publish_event
from .workflows import StartMonthlyInvoicing

log = logging.getLogger(__name__)


class _Receiver(BaseHTTPRequestHandler):
    """A subscriber's endpoint. /ok answers 200; /flaky answers 503 to a delivery's first try, then 200;
    /gone answers 410. Every request's Standard Webhooks signature is checked first."""

    secrets: dict[str, str] = {}  # path -> the endpoint's secret
    seen: Counter[str] = Counter()
    received: list[dict[str, Any]] = []
    bad_signatures = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            verify(body, dict(self.headers.items()), self.secrets.get(self.path, ""))
        except WebhookVerificationError:
            type(self).bad_signatures += 1
            self._answer(400)
            return
        delivery = self.headers.get("webhook-id", "?")
        self.seen[delivery] += 1
        if self.path == "/gone":
            code = 410
        elif self.path == "/flaky" and self.seen[delivery] == 1:
            code = 503
        else:
            code = 200
            self.received.append({"path": self.path, "delivery": delivery, "body": json.loads(body)})
        self._answer(code)

    def _answer(self, code: int) -> None:
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _receiver() -> Iterator[str]:
    _Receiver.secrets, _Receiver.seen, _Receiver.received, _Receiver.bad_signatures = {}, Counter(), [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# The demo keeps the shape of the slow schedules but shortens them.
DEMO_OVERRIDES = {
    "webhooks.deliver-webhook": JobOverride(backoff=backoff.schedule(1, 2, 4)),
}
FILE_PURGE_AFTER = timedelta(seconds=2)  # production: 24 h
STRIPE_CUSTOMER = "cus_demo_acme"


def _seed(store: Store) -> dict[str, str]:
    """Two organisations, each with an owner; Acme is a Stripe customer."""
    ids = {"acme": new_id("org"), "globex": new_id("org"), "ada": new_id("usr"), "grace": new_id("usr")}
    with store.begin() as conn:
        conn.execute(
            tables.users.insert(),
            [
                {"id": ids["ada"], "email": "ada@acme.example.com", "name": "Ada Lovelace"},
                {"id": ids["grace"], "email": "grace@globex.example.com", "name": "Grace Hopper"},
            ],
        )
        conn.execute(
            tables.organisations.insert(),
            [
                # Linked to its Stripe customer already, as after checkout: the events below may be worked in any
                # order, and a billing job that finds no organisation for a customer waits 30 s for the link.
                {
                    "id": ids["acme"],
                    "name": "Acme",
                    "billing_email": "billing@acme.example.com",
                    "stripe_customer_id": STRIPE_CUSTOMER,
                },
                {
                    "id": ids["globex"],
                    "name": "Globex",
                    "billing_email": "billing@globex.example.com",
                    "stripe_customer_id": None,
                },
            ],
        )
        conn.execute(
            tables.memberships.insert(),
            [
                {"org_id": ids["acme"], "user_id": ids["ada"], "role": "owner"},
                {"org_id": ids["globex"], "user_id": ids["grace"], "role": "owner"},
            ],
        )
    return ids


def _fire_flows(
    resources: Resources, ids: dict[str, str], base_url: str, stripe_secret: str, n: int, console: Console
) -> None:
    store, acme = resources.db, ids["acme"]
    # Sign-ups: each starts a workflow of a welcome email, an audit event and an activity entry.
    for i in range(n):
        sign_up(store, email=f"user{i + 1}@acme.example.com", name=f"User {i + 1}", org_id=acme)
    invite(store, org_id=acme, email="linus@example.com", invited_by=ids["ada"])

    # Stripe: signed events through the ingress, as a web handler would pass them on.
    customer, subscription, now = STRIPE_CUSTOMER, "sub_demo_acme", int(time.time())
    events = [
        build_event(
            "checkout.session.completed",
            {
                "id": "cs_demo",
                "object": "checkout.session",
                "client_reference_id": acme,
                "customer": customer,
                "subscription": subscription,
            },
            created=now - 30,
        ),
        build_event(
            "customer.subscription.created",
            {
                "id": subscription,
                "object": "subscription",
                "customer": customer,
                "status": "active",
                "items": {
                    "data": [{"price": {"id": "price_team"}, "quantity": 5, "current_period_end": now + 86400 * 30}]
                },
                "current_period_end": now + 86400 * 30,
                "cancel_at_period_end": False,
            },
            created=now - 20,
        ),
        build_event(
            "invoice.paid",
            {
                "id": "in_demo_paid",
                "object": "invoice",
                "customer": customer,
                "subscription": subscription,
                "status": "paid",
                "amount_due": 4900,
                "amount_paid": 4900,
                "currency": "usd",
                "attempt_count": 1,
                "hosted_invoice_url": "https://invoice.stripe.test/i/in_demo_paid",
            },
            created=now - 10,
        ),
        build_event(
            "invoice.payment_failed",
            {
                "id": "in_demo_failed",
                "object": "invoice",
                "customer": customer,
                "subscription": subscription,
                "status": "open",
                "amount_due": 4900,
                "amount_paid": 0,
                "currency": "usd",
                "attempt_count": 1,
                "hosted_invoice_url": "https://invoice.stripe.test/i/in_demo_failed",
            },
            created=now - 5,
        ),
    ]
    for payload in events:
        receive_stripe_event(store, payload, sign_stripe_payload(payload, stripe_secret), secret=stripe_secret)
    replay = receive_stripe_event(store, events[2], sign_stripe_payload(events[2], stripe_secret), secret=stripe_secret)
    console.print(
        f"[yellow]stripe replay[/] of {replay.event_id}: stored once, nothing enqueued (duplicate={replay.duplicate})"
    )
    try:
        receive_stripe_event(store, events[2], sign_stripe_payload(events[2], "whsec_wrong"), secret=stripe_secret)
    except InvalidStripeEvent as exc:
        console.print(f"[yellow]stripe refused[/] (bad signature): {escape(str(exc))}")

    # Webhooks: three endpoints of Acme, one event each.
    for path in ("/ok", "/flaky", "/gone"):
        _endpoint, secret = create_endpoint(store, org_id=acme, url=f"{base_url}{path}")
        _Receiver.secrets[path] = secret
    publish_event(store, org_id=acme, event_type="invoice.paid", data={"invoice": "in_demo_paid"})

    # Usage: today's events; the cron phase at the end fires the declared schedule's next tick (midnight
    # UTC), whose job aggregates the day before it: today.
    now_utc = utcnow()
    for org, metric, quantity in ((acme, "api.requests", 120), (acme, "api.requests", 80), (ids["globex"], "seats", 3)):
        record_usage(store, org_id=org, metric=metric, quantity=quantity, at=now_utc)
    # This month's invoicing run so far: a workflow, one step per organisation, then the summary.
    StartMonthlyInvoicing.enqueue(month=f"{now_utc:%Y-%m}")

    # Files: one soft-deleted and purged after the (shortened) delay, one deleted then restored.
    purged, kept = new_id("fil"), new_id("fil")
    with store.begin() as conn:
        for file_id in (purged, kept):
            conn.execute(
                tables.files.insert().values(
                    id=file_id, org_id=acme, storage_key=f"{acme}/{file_id}.pdf", name=f"{file_id}.pdf", size=4
                )
            )
    for file_id in (purged, kept):
        resources.storage.put(f"{acme}/{file_id}.pdf", b"%PDF")
        soft_delete_file(store, file_id, purge_after=FILE_PURGE_AFTER)
    restore_file(store, kept)

    # The guards: neither reaches Redis.
    try:
        RecordAuditEvent.enqueue(actor_id="x", action="not an action", target="t")
    except ValidationError as exc:
        error = exc.errors()[0]
        console.print(f"[yellow]refused at enqueue[/] (invalid payload): {error['loc'][0]}: {escape(error['msg'])}")
    try:
        RecordAuditEvent.enqueue(actor_id="x", action="file.uploaded", target="f", metadata={"blob": "x" * 20_000})
    except PayloadTooLarge as exc:
        console.print(f"[yellow]refused at enqueue[/] (too large): {escape(str(exc))}")


class _Display:
    """Outcomes per queue as the worker reports them, and a progress bar over done + pending."""

    def __init__(self, registry: Registry, console: Console) -> None:
        self.queue_of = {e.job_type.job_name(): e.options.queue or "?" for e in registry}
        self.by_queue: dict[str, Counter[str]] = {}
        self.totals: Counter[str] = Counter()
        self.dead: list[DeadLettered] = []
        self.lock = threading.Lock()
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.task = self.progress.add_task("jobs", total=None)

    def on_outcome(self, name: str, outcome: Outcome) -> None:
        kind = {Succeeded: "succeeded", Retry: "retried", DeadLettered: "dead-lettered"}.get(type(outcome), "other")
        with self.lock:
            self.by_queue.setdefault(self.queue_of.get(name, "?"), Counter())[kind] += 1
            self.totals[kind] += 1
        if isinstance(outcome, Retry):
            self.console.print(f"[yellow]retry[/] {name} in {outcome.delay:g}s: {escape(str(outcome.error))}")
        elif isinstance(outcome, DeadLettered):
            self.dead.append(outcome)
            self.console.print(
                f"[red]dead letter[/] {name}: {outcome.record.reason.value}: {escape(outcome.record.error)}"
            )

    def finished(self) -> int:
        return self.totals["succeeded"] + self.totals["dead-lettered"] + self.totals["other"]

    def table(self) -> Table:
        columns = ("succeeded", "retried", "dead-lettered")
        table = Table(title="jobs by queue")
        table.add_column("queue")
        for column in columns:
            table.add_column(column, justify="right")
        with self.lock:
            for queue, counts in sorted(self.by_queue.items()):
                table.add_row(queue, *(str(counts[c]) for c in columns))
        return table

    def render(self, pending: int) -> Group:
        done = self.finished()
        self.progress.update(self.task, completed=done, total=done + pending)
        return Group(self.progress, self.table())


def run(settings: Settings, console: Console, *, jobs_per_kind: int = 4, keep: bool = False) -> int:
    """Run the demo; `jobs_per_kind` is the number of sign-ups. Returns the exit code.

    Everything the demo writes is its own: a new temporary folder (the catalog database, the outbox, the
    storage) and Redis keys under a key prefix of its own (`forgejobs-demo-<random>`), so it never touches
    another application's jobs on a shared server. Both are removed at the end, also when the demo fails,
    unless `keep` is true: then it says where they are and how to look at them."""
    workdir = Path(tempfile.mkdtemp(prefix="forgejobs-demo-"))
    prefix = workdir.name  # forgejobs-demo-<random>: its keys and its folder share the name
    demo_settings = settings.model_copy(update={"key_prefix": prefix})
    try:
        return _run(demo_settings, console, workdir, jobs_per_kind, keep)
    finally:
        if keep:
            console.print(f"[bold]kept:[/] the demo's folder {escape(str(workdir))}", soft_wrap=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(settings: Settings, console: Console, workdir: Path, jobs_per_kind: int, keep: bool) -> int:
    stripe_secret = "whsec_" + secrets.token_urlsafe(24)
    catalog = CatalogSettings(
        database_url=f"sqlite:///{workdir / 'catalog.db'}",
        outbox_dir=workdir / "outbox",
        storage_dir=workdir / "storage",
        webhook_allow=["127.0.0.1"],  # the demo's receiver is local; production allows only public addresses
        stripe_webhook_secret=stripe_secret,
        http_timeout=5.0,
    )
    loaded = Registry.load(settings)
    registry = Registry(
        [e.job_type for e in loaded],
        loaded.specs.model_copy(update={"jobs": {**loaded.specs.jobs, **DEMO_OVERRIDES}}),
    )
    resources = build(settings, catalog)
    try:
        with choose_redis(settings.redis_url, DEFAULT_REDIS_URL) as choice, _receiver() as base_url:
            try:
                return _work(settings, console, choice, base_url, registry, resources, jobs_per_kind, stripe_secret)
            finally:
                _keep_or_clean(console, choice, settings.key_prefix, keep, catalog)
    finally:
        resources.close()


def _work(
    settings: Settings,
    console: Console,
    choice: RedisChoice,
    base_url: str,
    registry: Registry,
    resources: Resources,
    jobs_per_kind: int,
    stripe_secret: str,
) -> int:
    console.print(f"[bold]Redis:[/] {choice.description} (keys under {settings.key_prefix}:)")
    console.print(f"[bold]catalog database:[/] {resources.settings.database_url}")
    console.print(f"[bold]webhook receiver:[/] {base_url}   [bold]outbox:[/] {resources.settings.outbox_dir}")
    client = Client(RedisBackend.for_connection(choice.connection, settings), registry)
    previous = set_client(client)
    try:
        display = _Display(registry, console)
        ids = _seed(resources.db)
        _fire_flows(resources, ids, base_url, stripe_secret, jobs_per_kind, console)
        worker = Worker(
            settings,
            registry,
            connection=choice.connection,
            resources=resources,
            on_outcome=display.on_outcome,
        )
        started = time.monotonic()
        thread = threading.Thread(target=worker.run, kwargs={"burst": True, "horizon": 10.0}, daemon=True)
        quiet = logging.getLogger("forgejobs")
        previous_level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the display shows every outcome
        thread.start()
        try:
            with Live(console=console, refresh_per_second=8) as live:
                while thread.is_alive():
                    live.update(display.render(worker.pending(horizon=10.0)))
                    thread.join(0.15)
                live.update(display.render(0))
        finally:
            quiet.setLevel(previous_level)
        elapsed = time.monotonic() - started
        _cron_phase(console, settings, client, choice.connection, resources)
        _workflow_phase(console, client)
        pending = worker.pending(horizon=3600)
        return _summary(console, display, elapsed, resources, pending)
    finally:
        set_client(previous)


def _keep_or_clean(console: Console, choice: RedisChoice, prefix: str, keep: bool, catalog: CatalogSettings) -> None:
    """Remove the demo's Redis keys (every key under its own prefix), or say how to look at them."""
    if not keep:
        removed = 0
        batch: list[Any] = []
        for key in choice.connection.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += choice.connection.delete(*batch)
                batch = []
        if batch:
            removed += choice.connection.delete(*batch)
        console.print(f"cleaned up: {removed} Redis keys under {prefix}: and the demo's folder (--keep keeps them)")
        return
    emails = len(list(catalog.outbox_dir.glob("*.eml"))) if catalog.outbox_dir.exists() else 0
    outbox = escape(str(catalog.outbox_dir))
    console.print(f"[bold]kept:[/] the outbox, {emails} sent emails as .eml files, in {outbox}", soft_wrap=True)
    if choice.url is None or choice.embedded:
        console.print(
            "[bold]kept:[/] nothing in Redis: the demo ran on an embedded Redis, which stopped with it "
            "(set FORGEJOBS_REDIS_URL to run it on a server whose jobs you can inspect afterwards)"
        )
        return
    url = redact_url(choice.url)
    env = f"FORGEJOBS_REDIS_URL='{url}' FORGEJOBS_KEY_PREFIX='{prefix}'"
    console.print(f"[bold]kept:[/] the demo's jobs, under the key prefix {prefix} on {escape(url)}", soft_wrap=True)
    console.print(
        escape(f"inspect them (from the repository root) with: {env} ./dev forgejobs dead list"), soft_wrap=True
    )
    console.print(escape("  (or jobs, job ID, info instead of dead list); remove them with:"), soft_wrap=True)
    console.print(
        escape(f"  redis-cli -u '{url}' --scan --pattern '{prefix}:*' | xargs redis-cli -u '{url}' del"),
        soft_wrap=True,
    )


CRON_SCHEDULE = "usage.aggregate-daily-usage"


def _cron_phase(console: Console, settings: Settings, client: Client, connection: Any, resources: Resources) -> None:
    """A declared cron job end to end: register, fire its next tick, work it, show the result.

    The repeat is registered in memory, not in rq-scheduler's keys, which have no prefix: on a shared Redis the
    demo must neither fire nor unregister another application's repeats."""
    store = MemoryRepeatStore()
    repeater = Repeater(client, store)
    scheduled = client.registry.schedules[CRON_SCHEDULE]
    now = datetime.now(UTC)
    tick = scheduled.schedule.next_after(now)
    store.upsert(scheduled, tick)
    console.print(
        f"\n[bold]cron:[/] {CRON_SCHEDULE} ({scheduled.schedule.describe()}, catch_up={scheduled.schedule.catch_up}, "
        f"from {scheduled.source}); next tick {tick:%Y-%m-%d %H:%M} UTC. "
        "One scheduler pass at that time (the demo's clock jumps there):"
    )
    fired = repeater.run_once(tick)
    worker = Worker(settings, client.registry, queues=["usage"], connection=connection, resources=resources)
    worker.run(burst=True, horizon=0)
    for handle in fired:
        result = handle.result(timeout=10)
        shown = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        console.print(f"  {handle.id}: {handle.status().value}: {shown}")


SHOWN_WORKFLOWS = ("checkout", "monthly_invoicing")


def _workflow_phase(console: Console, client: Client) -> None:
    """The workflow runs the demo started, and the step trees of the checkout's and the invoicing's
    (as `forgejobs workflows show RUN` prints them)."""
    handles = [workflow_run(run_id, client) for run_id in store_for(client).runs()]
    kinds = Counter(f"{h.name} {h.status()}" for h in handles)
    console.print(
        f"\n[bold]workflows:[/] {len(handles)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    )
    for name in SHOWN_WORKFLOWS:
        for handle in (h for h in handles if h.name == name):
            console.print(run_tree(handle))


def _count(resources: Resources, table: sa.Table, *where: Any) -> int:
    with resources.db.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def _summary(console: Console, display: _Display, elapsed: float, resources: Resources, pending: int) -> int:
    totals = display.totals
    console.print()
    console.print(
        f"[bold]summary[/] ({elapsed:.1f}s): [green]succeeded {totals['succeeded']}[/], "
        f"[yellow]retried {totals['retried']}[/], [red]dead-lettered {totals['dead-lettered']}[/]"
    )
    outbox = resources.settings.outbox_dir
    emails = sorted(outbox.glob("*.eml")) if outbox.exists() else []
    console.print(f"outbox: {len(emails)} messages in {outbox}")
    shown: EmailMessage | None = None
    for path in emails:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        console.print(f"  to {escape(str(message['To']))}: {escape(str(message['Subject']))}")
        if "invited you" in str(message["Subject"]):
            shown = message
    if shown is not None:  # one message as its recipient would read it (the plain-text part)
        text = shown.get_body(("plain",))
        lines = text.get_content().strip().splitlines() if text is not None else []
        console.print(f"  [dim]{escape(str(shown['Subject']))}, text part:[/]")
        for line in lines[:12]:
            console.print(f"  [dim]|[/] {escape(line)}")
    received = Counter(r["path"] for r in _Receiver.received)
    console.print(
        f"webhook receiver got {len(_Receiver.received)} deliveries with valid signatures "
        f"({', '.join(f'{p} {c}' for p, c in sorted(received.items()))}); {_Receiver.bad_signatures} bad signatures"
    )
    if _Receiver.received:
        console.print(f"  [dim]one of them:[/] {escape(json.dumps(_Receiver.received[0]['body'], sort_keys=True))}")
    rows = {
        "audit events": _count(resources, tables.audit_log),
        "activity entries": _count(resources, tables.activity_feed),
        "stripe events": _count(resources, tables.stripe_events),
        "subscriptions": _count(resources, tables.subscriptions),
        "invoices": _count(resources, tables.invoices),
        "usage aggregates": _count(resources, tables.usage_aggregates),
        "webhook attempts": _count(resources, tables.webhook_attempts),
        "disabled endpoints": _count(
            resources, tables.webhook_endpoints, tables.webhook_endpoints.c.disabled_at.is_not(None)
        ),
        "files purged": _count(resources, tables.files, tables.files.c.purged_at.is_not(None)),
        "files kept": _count(resources, tables.files, tables.files.c.purged_at.is_(None)),
    }
    console.print("rows: " + ", ".join(f"{name} {n}" for name, n in rows.items()))
    with resources.db.begin() as conn:
        aggregates = conn.execute(
            sa.select(tables.organisations.c.name, tables.usage_aggregates)
            .join(tables.organisations, tables.organisations.c.id == tables.usage_aggregates.c.org_id)
            .order_by(tables.organisations.c.name, tables.usage_aggregates.c.metric)
        ).all()
    for row in aggregates:
        console.print(
            f"  usage {row.period} {row.period_start}: {row.name} {row.metric} = {row.quantity} ({row.events} events)"
        )
    for dead in display.dead:
        record = dead.record
        console.print(f"dead letter {record.id}: {record.name} ({record.reason.value}) {escape(record.error)}")
    if pending:
        console.print(f"[red]{pending} jobs did not finish[/]")
        return 1
    return 0
