"""The catalog in production shape: `forgejobs worker` subprocesses on a real Redis, with the catalog's
resources built from FORGEJOBS_CATALOG_* settings, writing to PostgreSQL (or a SQLite file), sending through
a real SMTP server and delivering signed webhooks to a real HTTP server.

The application side (this test) fires the flows with the catalog's helpers; the worker runs everything
they lead to, including jobs enqueued by jobs and a delayed file purge, and exits when nothing is left.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from forgejobs import Client, Registry, Settings, set_client
from forgejobs.backends.redis import RedisBackend
from jobs import store as tables
from jobs.files import soft_delete_file
from jobs.flows import sign_up
from jobs.resources import CatalogSettings, Resources, build
from jobs.signing import WebhookVerificationError, verify
from jobs.store import new_id
from jobs.stripe import build_event, receive_stripe_event, sign_stripe_payload
from jobs.webhooks import create_endpoint, publish_event
from tests.catalog.conftest import POSTGRES_URL
from tests.catalog.smtp_server import Server, start_server
from tests.conftest import ROOT, WorkerProcess

STRIPE_SECRET = "whsec_end_to_end"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL a worker subprocess can use: a private PostgreSQL schema, or a SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    schema = f"fj_e2e_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means "no PostgreSQL here"
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {type(exc).__name__}: {exc}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class _Receiver(BaseHTTPRequestHandler):
    secret = ""
    verified: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            verify(body, dict(self.headers.items()), self.secret)
        except WebhookVerificationError:
            self.send_response(400)  # the delivery fails and the test's assertions say so
        else:
            self.verified.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.verified = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Server:
    return start_server(request)


@pytest.mark.redis
def test_a_worker_process_runs_the_catalog_flows_end_to_end(
    database_url: str,
    redis_url: str,
    smtp: Server,
    receiver: str,
    tmp_path: Path,
    start_cli: Callable[..., WorkerProcess],
) -> None:
    catalog_env = {
        "FORGEJOBS_JOBS": "jobs",
        "FORGEJOBS_SPECS": str(ROOT / "specs"),
        "FORGEJOBS_CATALOG_DATABASE_URL": database_url,
        "FORGEJOBS_CATALOG_MAIL_TRANSPORT": "smtp",
        "FORGEJOBS_CATALOG_SMTP_HOST": "127.0.0.1",
        "FORGEJOBS_CATALOG_SMTP_PORT": str(smtp.port),
        "FORGEJOBS_CATALOG_WEBHOOK_ALLOW": '["127.0.0.1"]',
        "FORGEJOBS_CATALOG_STORAGE_DIR": str(tmp_path / "storage"),
        "FORGEJOBS_CATALOG_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    }
    # The application's side: the same settings, read from the same variables.
    catalog = CatalogSettings(
        database_url=database_url,
        storage_dir=tmp_path / "storage",
        webhook_allow=["127.0.0.1"],
        stripe_webhook_secret=STRIPE_SECRET,
    )
    app: Resources = build(catalog=catalog)
    connection = redis.Redis.from_url(redis_url)
    client = Client(RedisBackend(connection), Registry.load(Settings(jobs="jobs", specs=ROOT / "specs")))
    previous = set_client(client)
    try:
        org_id, owner = new_id("org"), new_id("usr")
        with app.db.begin() as conn:
            conn.execute(tables.users.insert().values(id=owner, email="ada@example.com", name="Ada Lovelace"))
            conn.execute(tables.organisations.insert().values(id=org_id, name="Acme", stripe_customer_id="cus_e2e"))
            conn.execute(tables.memberships.insert().values(org_id=org_id, user_id=owner, role="owner"))
        member = sign_up(app.db, email="bo@example.com", name="Bo Member", org_id=org_id)
        failed = build_event(
            "invoice.payment_failed",
            {"id": "in_e2e", "object": "invoice", "customer": "cus_e2e", "subscription": None, "status": "open",
             "amount_due": 1200, "amount_paid": 0, "currency": "eur", "attempt_count": 1,
             "hosted_invoice_url": "https://invoice.example.com/in_e2e"},
            created=int(time.time()),
        )  # fmt: skip
        receive_stripe_event(app.db, failed, sign_stripe_payload(failed, STRIPE_SECRET), secret=STRIPE_SECRET)
        _endpoint, secret = create_endpoint(app.db, org_id=org_id, url=f"{receiver}/hooks")
        _Receiver.secret = secret
        (delivery,) = publish_event(app.db, org_id=org_id, event_type="member.joined", data={"user": member})
        file_id = new_id("fil")
        with app.db.begin() as conn:
            conn.execute(
                tables.files.insert().values(id=file_id, org_id=org_id, storage_key=f"{org_id}/r.pdf", name="r", size=4)
            )
        app.storage.put(f"{org_id}/r.pdf", b"%PDF")
        soft_delete_file(app.db, file_id, purge_after=timedelta(seconds=1))

        worker = start_cli("worker", "--burst", "--horizon", "5", "--concurrency", "1", env=catalog_env)
        assert worker.wait(timeout=90) == 0, worker.log()

        # email: the welcome email and the urgent dunning notice, through the SMTP server
        subjects = sorted(str(m["Subject"]) for m in smtp.recorder.messages())
        assert subjects == ["Payment failed for Acme: EUR 12.00 due", "Welcome to ForgeStack"], worker.log()
        # webhooks: one signed delivery, verified by the receiver
        assert [body["type"] for body in _Receiver.verified] == ["member.joined"]
        with app.db.begin() as conn:
            status = conn.execute(
                sa.select(tables.webhook_deliveries.c.status).where(tables.webhook_deliveries.c.id == delivery)
            ).scalar_one()
            invoice = conn.execute(sa.select(tables.invoices).where(tables.invoices.c.id == "in_e2e")).one()
            audit = conn.execute(sa.select(tables.audit_log.c.action)).scalars().all()
            activity = conn.execute(sa.select(tables.activity_feed.c.verb)).scalars().all()
            purged = conn.execute(sa.select(tables.files.c.purged_at).where(tables.files.c.id == file_id)).scalar_one()
            event = conn.execute(sa.select(tables.stripe_events.c.status)).scalar_one()
        assert status == "delivered"
        assert (invoice.org_id, invoice.status, invoice.amount_due) == (org_id, "open", 1200)
        assert (audit, activity, event) == (["user.signed_up"], ["member.joined"], "processed")
        assert purged is not None and not app.storage.exists(f"{org_id}/r.pdf")
        assert client.dead_letters() == []
    finally:
        set_client(previous)
        app.close()
        connection.close()
