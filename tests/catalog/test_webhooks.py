"""Queue `webhooks`: DeliverWebhook against a real receiver on 127.0.0.1, on SQLite and PostgreSQL.

The receiver checks every signature with `jobs.signing.verify`, as a customer's server would, so signing
is proven end to end. Enqueues (notifications, deliveries) land in the fake queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from forgejobs import Unrecoverable
from forgejobs.errors import JobTimeout, RateLimited, RetryLater
from forgejobs.execution import WorkerShutdown
from forgejobs.ratelimit import RateLimit
from forgejobs.testing import FakeQueue, make_context
from jobs.email import Notification
from jobs.http import guarded_client
from jobs.resources import Resources
from jobs.signing import WebhookVerificationError, verify
from jobs.store import Store, memberships, new_id, users, webhook_attempts, webhook_deliveries, webhook_endpoints
from jobs.webhooks import (
    MAX_RATE_LIMITED,
    DeliverWebhook,
    EndpointNotFound,
    WebhookDeliveryError,
    create_endpoint,
    delivery_job_id,
    drop_previous_secrets,
    parse_retry_after,
    publish_event,
    rotate_secret,
)

# -- the receiver --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once this is set (to make the client time out)
    drip: float = 0.0  # seconds between the body's bytes: a receiver that answers slowly


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verification_error: str | None


class Receiver:
    """A webhook receiver: per path, the replies to give in turn (the last repeats) and the secret to verify with."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.replies: dict[str, list[Reply]] = {}
        self.secrets: dict[str, str] = {}
        self.requests: list[Received] = []
        self.lock = threading.Lock()

    def route(self, path: str, *replies: Reply) -> str:
        self.replies[path] = list(replies)
        return self.base_url + path

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            queue = self.replies.get(path) or [Reply(404)]
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def release(self) -> None:
        for queue in self.replies.values():
            for reply in queue:
                if reply.hold is not None:
                    reply.hold.set()


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            error: str | None = None
            try:
                verify(body, headers, receiver.secrets.get(self.path, ""))
            except WebhookVerificationError as exc:
                error = str(exc)
            with receiver.lock:
                receiver.requests.append(Received(self.path, headers, body, error))
            reply = receiver.next_reply(self.path) if error is None else Reply(401, error)
            if reply.hold is not None:
                reply.hold.wait(5)
            payload = reply.body.encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if not reply.drip:
                self.wfile.write(payload)
                return
            try:
                for byte in payload:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(reply.drip)  # the receiver's own slowness, not synchronisation
            except OSError:
                pass  # the client stopped reading

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Receiver("")))
    recv = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(recv)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield recv
    recv.release()
    server.shutdown()
    server.server_close()
    thread.join(5)


# -- helpers -------------------------------------------------------------------------------------------------


def endpoint(store: Store, org: dict[str, str], receiver: Receiver, path: str, *replies: Reply, **kw: Any) -> str:
    endpoint_id, secret = create_endpoint(store, org_id=org["org_id"], url=receiver.route(path, *replies), **kw)
    receiver.secrets[path] = secret
    return endpoint_id


def publish_one(store: Store, org: dict[str, str], data: dict[str, Any] | None = None) -> str:
    (delivery_id,) = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data=data or {"id": "in_1"})
    return delivery_id


def run(resources: Resources, delivery_id: str, endpoint_id: str, attempt: int = 1) -> Any:
    job = DeliverWebhook(delivery_id=delivery_id, endpoint_id=endpoint_id)
    return job.perform(make_context(job, resources=resources, attempt=attempt))


def delivery(store: Store, delivery_id: str) -> Any:
    with store.begin() as conn:
        return conn.execute(sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).one()


def attempts(store: Store, delivery_id: str) -> list[Any]:
    with store.begin() as conn:
        return list(
            conn.execute(
                sa.select(webhook_attempts)
                .where(webhook_attempts.c.delivery_id == delivery_id)
                .order_by(webhook_attempts.c.attempt)
            )
        )


def attempts_of(store: Store, delivery_id: str) -> list[Any]:
    with store.begin() as conn:
        query = sa.select(webhook_attempts.c.error).where(webhook_attempts.c.delivery_id == delivery_id)
        return list(conn.execute(query).all())


def endpoint_row(store: Store, endpoint_id: str) -> Any:
    with store.begin() as conn:
        return conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)).one()


# -- delivering ----------------------------------------------------------------------------------------------


def test_a_2xx_answer_delivers_a_signed_event(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok", Reply(200, "thanks"))
    delivery_id = publish_one(store, org, {"id": "in_1", "amount": 1200})

    result = run(resources, delivery_id, endpoint_id)

    assert (result.outcome, result.status_code) == ("delivered", 200)
    (request,) = receiver.requests
    assert request.verification_error is None  # the receiver's verify() accepted the signature
    assert request.headers["webhook-id"] == delivery_id
    assert request.headers["content-type"] == "application/json"
    created = delivery(store, delivery_id).created_at
    assert json.loads(request.body) == {
        "type": "invoice.paid",
        "timestamp": created.isoformat().replace("+00:00", "Z"),
        "data": {"id": "in_1", "amount": 1200},
    }
    row = delivery(store, delivery_id)
    assert (row.status, row.attempts) == ("delivered", 1)
    assert row.delivered_at is not None and row.delivered_at.tzinfo is not None
    (attempt,) = attempts(store, delivery_id)
    assert (attempt.attempt, attempt.status_code, attempt.response_excerpt, attempt.error) == (1, 200, "thanks", None)
    assert attempt.latency_ms >= 0


def test_a_slowly_dripped_answer_is_cut_short(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobs.webhooks.BODY_READ_SECONDS", 0.2)
    endpoint_id = endpoint(store, org, receiver, "/slow", Reply(200, "x" * 400, drip=0.05))  # 20 s for all of it
    delivery_id = publish_one(store, org)
    started = time.monotonic()

    result = run(resources, delivery_id, endpoint_id)

    assert result.outcome == "delivered"
    assert time.monotonic() - started < 5
    assert delivery(store, delivery_id).status == "delivered"


def test_running_a_delivered_delivery_again_sends_nothing(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok", Reply(200))
    delivery_id = publish_one(store, org)
    run(resources, delivery_id, endpoint_id)

    again = run(resources, delivery_id, endpoint_id, attempt=2)

    assert again.outcome == "skipped"
    assert len(receiver.requests) == 1
    assert delivery(store, delivery_id).attempts == 1
    assert len(attempts(store, delivery_id)) == 1


def test_a_500_is_retried_and_recorded_and_a_retry_sends_the_same_bytes(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/fail", Reply(500, "x" * 5000))
    delivery_id = publish_one(store, org)

    # the message names the origin and the endpoint, never the path (hook URLs often carry a secret there)
    with pytest.raises(WebhookDeliveryError, match=r"POST http://127.0.0.1:\d+ \(endpoint whe_\w+\) answered 500$"):
        run(resources, delivery_id, endpoint_id, attempt=1)
    with pytest.raises(WebhookDeliveryError):
        run(resources, delivery_id, endpoint_id, attempt=2)

    row = delivery(store, delivery_id)
    assert (row.status, row.attempts) == ("pending", 2)
    first, second = attempts(store, delivery_id)
    assert (first.attempt, first.status_code, second.attempt) == (1, 500, 2)
    assert first.response_excerpt == "x" * 1000  # capped
    assert receiver.requests[0].body == receiver.requests[1].body
    assert all(r.verification_error is None for r in receiver.requests)


def test_the_last_attempt_marks_the_delivery_failed(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/fail", Reply(502))
    delivery_id = publish_one(store, org)

    with pytest.raises(WebhookDeliveryError, match="answered 502"):
        run(resources, delivery_id, endpoint_id, attempt=DeliverWebhook.job_options().attempts)

    assert delivery(store, delivery_id).status == "failed"


@pytest.mark.parametrize(("interruption", "status"), [(JobTimeout, "failed"), (WorkerShutdown, "pending")])
def test_a_run_interrupted_mid_request_is_recorded(
    store: Store,
    org: dict[str, str],
    resources: Resources,
    receiver: Receiver,
    interruption: type[BaseException],
    status: str,
) -> None:
    """The job's timeout (a receiver that drips its headers) or a shutdown lands inside the request."""
    endpoint_id = endpoint(store, org, receiver, "/hang", Reply(200))
    delivery_id = publish_one(store, org)

    def interrupted(request: httpx.Request) -> httpx.Response:
        raise interruption("interrupted")

    with httpx.Client(transport=httpx.MockTransport(interrupted)) as http, pytest.raises(interruption):
        last = DeliverWebhook.job_options().attempts
        run(dataclasses.replace(resources, http=http), delivery_id, endpoint_id, attempt=last)

    assert delivery(store, delivery_id).status == status  # a shutdown runs the same attempt again later
    ((error,),) = attempts_of(store, delivery_id)
    assert error == f"interrupted: {interruption.__name__}"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(302, headers={"location": "http://127.0.0.1:1/"}), "answered a redirect"),
        (Reply(503), "answered 503"),  # no Retry-After: an ordinary failure
        (Reply(429, headers={"retry-after": "soon"}), "answered 429"),  # unreadable Retry-After: the same
        (Reply(400, "bad payload"), "answered 400"),
    ],
)
def test_other_answers_are_failures_with_backoff(
    store: Store,
    org: dict[str, str],
    resources: Resources,
    receiver: Receiver,
    fake_queue: FakeQueue,
    reply: Reply,
    message: str,
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/other", reply)
    delivery_id = publish_one(store, org)

    with pytest.raises(WebhookDeliveryError, match=message) as info:
        run(resources, delivery_id, endpoint_id)

    assert not isinstance(info.value, RetryLater)
    assert [a.status_code for a in attempts(store, delivery_id)] == [reply.status]
    assert delivery(store, delivery_id).status == "pending"
    assert len(receiver.requests) == 1  # a redirect is not followed


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "120", 120.0),
        (503, "PLUS_600_SECONDS", 600.0),  # an HTTP date ten minutes ahead
        (429, "86400", 3600.0),  # a day is cut to the one-hour cap
    ],
)
def test_429_and_503_with_retry_after_wait_without_using_an_attempt(
    store: Store,
    org: dict[str, str],
    resources: Resources,
    receiver: Receiver,
    fake_queue: FakeQueue,
    status: int,
    retry_after: str,
    expected: float,
) -> None:
    if retry_after == "PLUS_600_SECONDS":
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    endpoint_id = endpoint(store, org, receiver, "/busy", Reply(status, headers={"retry-after": retry_after}))
    delivery_id = publish_one(store, org)

    with pytest.raises(RateLimited) as info:
        run(resources, delivery_id, endpoint_id, attempt=DeliverWebhook.job_options().attempts)

    assert expected - 5 <= info.value.delay <= expected
    (attempt,) = attempts(store, delivery_id)
    assert attempt.status_code == status
    assert delivery(store, delivery_id).status == "pending"  # even on the last attempt: none was used


def test_endless_retry_after_answers_end_up_counting_as_failures(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/busy", Reply(429, headers={"retry-after": "1"}))
    delivery_id = publish_one(store, org)
    with store.begin() as conn:
        conn.execute(
            webhook_attempts.insert(),
            [
                {"delivery_id": delivery_id, "attempt": n, "status_code": 429, "latency_ms": 1}
                for n in range(1, MAX_RATE_LIMITED + 1)
            ],
        )

    with pytest.raises(WebhookDeliveryError, match="answered 429"):
        run(resources, delivery_id, endpoint_id)


def test_a_410_disables_the_endpoint_cancels_notifies_the_owners_once_and_dead_letters(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    second_owner = new_id("usr")
    with store.begin() as conn:
        conn.execute(users.insert().values(id=second_owner, email=f"{second_owner}@example.com", name="Cy Owner"))
        conn.execute(memberships.insert().values(org_id=org["org_id"], user_id=second_owner, role="owner"))
    endpoint_id = endpoint(store, org, receiver, "/gone", Reply(410, "unsubscribed"))
    delivery_id = publish_one(store, org)
    url = receiver.base_url  # the origin only: the path is not repeated in messages

    with pytest.raises(Unrecoverable, match=f"410 Gone from {url}: endpoint"):
        run(resources, delivery_id, endpoint_id)

    row = endpoint_row(store, endpoint_id)
    assert row.disabled_at is not None
    assert row.disabled_reason == f"410 Gone from {url}"
    assert delivery(store, delivery_id).status == "cancelled"
    assert [a.status_code for a in attempts(store, delivery_id)] == [410]
    for owner in (org["owner_id"], second_owner):
        fake_queue.assert_enqueued(
            Notification, count=1, user_id=owner, kind="webhook_endpoint_disabled", ref=endpoint_id
        )
    fake_queue.refute_enqueued(Notification, user_id=org["member_id"])

    # A re-run (e.g. after the notification enqueue failed) sends nothing and notifies nobody twice.
    with pytest.raises(Unrecoverable):
        run(resources, delivery_id, endpoint_id, attempt=2)
    assert len(receiver.requests) == 1
    assert len(fake_queue.enqueued(Notification)) == 2


def test_a_rerun_after_a_lost_notification_enqueue_notifies_without_sending_again(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/gone", Reply(410))
    delivery_id = publish_one(store, org)
    with pytest.raises(Unrecoverable):
        run(resources, delivery_id, endpoint_id)
    fake_queue.clear()  # as if the notification had never reached the queue

    with pytest.raises(Unrecoverable, match="410 Gone"):
        run(resources, delivery_id, endpoint_id, attempt=2)

    fake_queue.assert_enqueued(Notification, count=1, user_id=org["owner_id"], ref=endpoint_id)
    assert len(receiver.requests) == 1
    # Another delivery to the endpoint it disabled is cancelled quietly: no request, no second notice.
    fake_queue.clear()
    other = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={})
    assert other == []  # a disabled endpoint gets no new deliveries
    with store.begin() as conn:
        conn.execute(
            webhook_deliveries.insert().values(
                id="msg_late",
                endpoint_id=endpoint_id,
                event_type="invoice.paid",
                payload={},
                created_at=datetime.now(UTC),
            )
        )
    assert run(resources, "msg_late", endpoint_id).outcome == "cancelled"
    fake_queue.refute_enqueued(Notification)
    assert len(receiver.requests) == 1


def test_a_disabled_endpoint_cancels_its_pending_deliveries_without_sending(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok", Reply(200))
    delivery_id = publish_one(store, org)
    with store.begin() as conn:
        conn.execute(
            webhook_endpoints.update()
            .where(webhook_endpoints.c.id == endpoint_id)
            .values(disabled_at=datetime.now(UTC), disabled_reason="turned off by the customer")
        )

    result = run(resources, delivery_id, endpoint_id)

    assert result.outcome == "cancelled"
    assert delivery(store, delivery_id).status == "cancelled"
    assert receiver.requests == []
    assert run(resources, delivery_id, endpoint_id).outcome == "skipped"
    fake_queue.refute_enqueued(Notification)


def test_a_timeout_is_recorded_and_retried(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/slow", Reply(200, hold=threading.Event()))
    delivery_id = publish_one(store, org)
    impatient = dataclasses.replace(resources, http=guarded_client(allow=["127.0.0.1"], timeout=0.2))

    try:
        with pytest.raises(WebhookDeliveryError, match="ReadTimeout"):
            run(impatient, delivery_id, endpoint_id)
    finally:
        impatient.http.close()

    (attempt,) = attempts(store, delivery_id)
    assert attempt.status_code is None
    assert attempt.error.startswith("ReadTimeout")
    assert delivery(store, delivery_id).status == "pending"


def test_a_refused_connection_is_recorded_and_retried(
    store: Store, org: dict[str, str], resources: Resources, fake_queue: FakeQueue
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint_id, _ = create_endpoint(store, org_id=org["org_id"], url=f"http://127.0.0.1:{port}/hook")
    delivery_id = publish_one(store, org)

    with pytest.raises(WebhookDeliveryError, match="ConnectError"):
        run(resources, delivery_id, endpoint_id, attempt=8)

    (attempt,) = attempts(store, delivery_id)
    assert (attempt.status_code, attempt.error.startswith("ConnectError")) == (None, True)
    assert delivery(store, delivery_id).status == "failed"  # it was the last attempt


def test_a_blocked_destination_fails_the_delivery_at_once(
    store: Store, org: dict[str, str], resources: Resources, fake_queue: FakeQueue
) -> None:
    endpoint_id, _ = create_endpoint(store, org_id=org["org_id"], url="http://169.254.169.254/latest/meta-data/")
    delivery_id = publish_one(store, org)

    with pytest.raises(Unrecoverable, match="refusing to connect to 169.254.169.254: link-local"):
        run(resources, delivery_id, endpoint_id)

    assert delivery(store, delivery_id).status == "failed"
    (attempt,) = attempts(store, delivery_id)
    assert attempt.status_code is None and "refusing to connect" in attempt.error


def test_no_log_record_carries_the_path_or_query_of_a_hook_url(
    store: Store,
    org: dict[str, str],
    resources: Resources,
    receiver: Receiver,
    fake_queue: FakeQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok?token=s3cr3tpath", Reply(200, "thanks"))
    delivery_id = publish_one(store, org)

    with caplog.at_level(logging.DEBUG):  # `forgejobs -vv worker`: the root logger at DEBUG
        assert run(resources, delivery_id, endpoint_id).outcome == "delivered"

    assert [r.path for r in receiver.requests] == ["/ok?token=s3cr3tpath"]  # the secret did travel
    leaked = [
        f"{r.name}: {r.getMessage()}" for r in caplog.records if "/ok" in r.getMessage() or "s3cr3t" in r.getMessage()
    ]
    assert leaked == []


def stored_endpoint(store: Store, org: dict[str, str], url: str) -> str:
    """An endpoint row written directly, as one stored before `create_endpoint` checked what it checks now."""
    endpoint_id = new_id("whe")
    with store.begin() as conn:
        conn.execute(
            webhook_endpoints.insert().values(
                id=endpoint_id, org_id=org["org_id"], url=url, secrets="whsec_" + "A" * 32, event_types=[]
            )
        )
    return endpoint_id


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://0177.0.0.1:18091/a?token=s3cr3t", "Invalid IPv4 address"),
        ("http://hooks.example.com:99999/a", "port"),
        ("http://hooks.example.com/a\x7fb", "non-printable"),
    ],
)
def test_a_stored_url_httpx_cannot_send_fails_the_delivery_at_once(
    store: Store, org: dict[str, str], resources: Resources, fake_queue: FakeQueue, url: str, reason: str
) -> None:
    endpoint_id = stored_endpoint(store, org, url)
    delivery_id = publish_one(store, org)

    with pytest.raises(Unrecoverable, match=reason) as caught:
        run(resources, delivery_id, endpoint_id)

    assert "s3cr3t" not in str(caught.value) and "/a" not in str(caught.value)
    assert delivery(store, delivery_id).status == "failed"
    (attempt,) = attempts(store, delivery_id)
    assert attempt.status_code is None and reason in attempt.error


def test_a_job_for_a_missing_or_mismatched_delivery_is_unrecoverable(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok", Reply(200))
    other_id = endpoint(store, org, receiver, "/other", Reply(200), event_types=["customer.created"])
    delivery_id = publish_one(store, org)

    with pytest.raises(Unrecoverable, match="webhook delivery msg_nope does not exist"):
        run(resources, "msg_nope", endpoint_id)
    with pytest.raises(Unrecoverable, match=f"belongs to endpoint {endpoint_id}, not {other_id}"):
        run(resources, delivery_id, other_id)
    assert receiver.requests == []


# -- the queue end to end ------------------------------------------------------------------------------------


def test_a_delivery_that_fails_once_succeeds_on_the_backoff_schedule(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/flaky", Reply(500, "try later"), Reply(204))
    fake_queue.resources = resources
    start = fake_queue.clock.now()
    delivery_id = publish_one(store, org)

    result = fake_queue.drain()

    assert (result.succeeded, result.retried, result.failed) == (1, 1, 0)
    assert fake_queue.clock.now() - start == timedelta(seconds=5)  # the first wait of the schedule
    assert [a.status_code for a in attempts(store, delivery_id)] == [500, 204]
    assert (delivery(store, delivery_id).status, delivery(store, delivery_id).attempts) == ("delivered", 2)
    assert [r.verification_error for r in receiver.requests] == [None, None]
    assert endpoint_row(store, endpoint_id).disabled_at is None


def test_a_rate_limited_delivery_waits_its_retry_after_on_the_queue(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint(store, org, receiver, "/busy", Reply(429, headers={"retry-after": "30"}), Reply(200))
    fake_queue.resources = resources
    start = fake_queue.clock.now()
    delivery_id = publish_one(store, org)

    result = fake_queue.drain()

    assert (result.succeeded, result.retried, result.failed) == (1, 1, 0)
    assert fake_queue.clock.now() - start == timedelta(seconds=30)
    assert [a.status_code for a in attempts(store, delivery_id)] == [429, 200]
    assert delivery(store, delivery_id).status == "delivered"


def test_the_job_declares_its_queue_retries_and_per_endpoint_rate_limit() -> None:
    options = DeliverWebhook.job_options()
    assert options.name == "webhooks.deliver-webhook"
    assert options.queue == "webhooks"
    assert options.attempts == 8
    assert [options.backoff.delay(n) for n in range(1, 8)] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert options.rate_limit == RateLimit(max=10, per=timedelta(seconds=1))
    assert options.rate_limit_key == "endpoint_id"
    assert options.timeout == timedelta(seconds=60)


# -- app side ------------------------------------------------------------------------------------------------


def test_publish_event_creates_deliveries_for_enabled_subscribed_endpoints_only(
    store: Store, org: dict[str, str], receiver: Receiver, fake_queue: FakeQueue
) -> None:
    every = endpoint(store, org, receiver, "/every", Reply(200))
    invoices = endpoint(store, org, receiver, "/invoices", Reply(200), event_types=["invoice.paid", "invoice.failed"])
    endpoint(store, org, receiver, "/customers", Reply(200), event_types=["customer.created"])
    disabled = endpoint(store, org, receiver, "/disabled", Reply(200))
    with store.begin() as conn:
        conn.execute(
            webhook_endpoints.update().where(webhook_endpoints.c.id == disabled).values(disabled_at=datetime.now(UTC))
        )

    delivery_ids = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={"id": "in_9"})

    assert len(delivery_ids) == 2
    rows = {delivery(store, d).endpoint_id: delivery(store, d) for d in delivery_ids}
    assert set(rows) == {every, invoices}
    assert all(
        (r.status, r.attempts, r.payload, r.event_type) == ("pending", 0, {"id": "in_9"}, "invoice.paid")
        for r in rows.values()
    )
    jobs = fake_queue.enqueued(DeliverWebhook)
    assert sorted((j.endpoint_id, j.delivery_id) for j in jobs) == sorted((e, r.id) for e, r in rows.items())
    assert sorted(p.job_id for p in fake_queue.backend.log) == sorted(delivery_job_id(d) for d in delivery_ids)

    (other,) = publish_event(store, org_id=org["org_id"], event_type="customer.deleted", data={})
    assert delivery(store, other).endpoint_id == every  # only the endpoint taking every event


def test_publishing_with_an_event_id_twice_creates_and_enqueues_nothing_new(
    store: Store, org: dict[str, str], receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint(store, org, receiver, "/a", Reply(200))
    endpoint(store, org, receiver, "/b", Reply(200))

    first = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={"n": 1}, event_id="evt_42")
    second = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={"n": 1}, event_id="evt_42")

    assert first == second and len(first) == 2
    with store.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)).scalar_one() == 2
    assert len(fake_queue.enqueued(DeliverWebhook)) == 2  # the second enqueue of each job id stored nothing
    third = publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={"n": 1}, event_id="evt_43")
    assert set(third).isdisjoint(first)


def test_publish_event_refuses_data_json_cannot_carry_before_storing_anything(
    store: Store, org: dict[str, str], receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint(store, org, receiver, "/a", Reply(200))
    with pytest.raises(TypeError, match="not JSON serializable"):
        publish_event(store, org_id=org["org_id"], event_type="invoice.paid", data={"when": datetime.now(UTC)})
    with store.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)).scalar_one() == 0


def test_rotation_signs_with_both_secrets_until_the_previous_is_dropped(
    store: Store, org: dict[str, str], resources: Resources, receiver: Receiver, fake_queue: FakeQueue
) -> None:
    endpoint_id = endpoint(store, org, receiver, "/ok", Reply(200))
    old = receiver.secrets["/ok"]

    new = rotate_secret(store, endpoint_id)

    assert endpoint_row(store, endpoint_id).secrets.split() == [new, old]
    run(resources, publish_one(store, org), endpoint_id)  # the receiver still verifies with the old secret
    receiver.secrets["/ok"] = new
    run(resources, publish_one(store, org), endpoint_id)  # and once it switched, with the new one
    assert [len(r.headers["webhook-signature"].split()) for r in receiver.requests] == [2, 2]
    assert [r.verification_error for r in receiver.requests] == [None, None]

    drop_previous_secrets(store, endpoint_id)
    assert endpoint_row(store, endpoint_id).secrets == new
    receiver.secrets["/ok"] = old
    with pytest.raises(WebhookDeliveryError, match="answered 401"):  # the old secret no longer verifies
        run(resources, publish_one(store, org), endpoint_id)


def test_rotation_keeps_at_most_three_secrets_and_unknown_endpoints_are_named(
    store: Store, org: dict[str, str]
) -> None:
    endpoint_id, first = create_endpoint(store, org_id=org["org_id"], url="https://hooks.example.com/in")
    second = rotate_secret(store, endpoint_id)
    third = rotate_secret(store, endpoint_id)
    fourth = rotate_secret(store, endpoint_id)
    assert endpoint_row(store, endpoint_id).secrets.split() == [fourth, third, second]
    assert first not in endpoint_row(store, endpoint_id).secrets
    with pytest.raises(EndpointNotFound, match="no webhook endpoint whe_missing"):
        rotate_secret(store, "whe_missing")
    with pytest.raises(EndpointNotFound, match="no webhook endpoint whe_missing"):
        drop_previous_secrets(store, "whe_missing")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/in", "must be an absolute http:// or https:// URL"),
        ("/relative/path", "must be an absolute http:// or https:// URL"),
        ("https://user:pw@hooks.example.com/", "must not carry credentials"),
        ("http://0177.0.0.1:18091/a", "cannot be sent: Invalid IPv4 address: '0177.0.0.1'"),
        ("http://01.2.3.4/a", "cannot be sent: Invalid IPv4 address"),
        ("http://hooks.example.com:99999/a", "port"),
        ("http://hooks.example.com/a\x7fb", "cannot be sent: Invalid non-printable ASCII character"),
    ],
)
def test_create_endpoint_refuses_unusable_urls(store: Store, org: dict[str, str], url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_endpoint(store, org_id=org["org_id"], url=url)


def test_parse_retry_after() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Tue, 01 Jan 2030 00:01:30 GMT", now) == 90.0
    assert parse_retry_after("Mon, 31 Dec 2029 23:00:00 GMT", now) == 0.0  # already past
    for unreadable in (None, "", "-5", "1.5", "soon", "Tue, 99 Foo 2030"):
        assert parse_retry_after(unreadable, now) is None
