"""Queue `webhooks` (concurrency 10): outgoing webhook delivery, signed the Standard Webhooks way.

The application calls `publish_event(...)`: one `webhook_deliveries` row per enabled endpoint of the
organisation that subscribes to the event type, then one `DeliverWebhook` job per row. The job POSTs the
event, records every attempt in `webhook_attempts`, and moves the delivery to `delivered`, `failed` or
`cancelled`:

| answer                                   | what happens                                                     |
|------------------------------------------|------------------------------------------------------------------|
| 2xx                                      | delivered                                                        |
| 410 Gone                                 | endpoint disabled, delivery cancelled, owners notified; dead letter |
| 429 / 503 with `Retry-After`             | run again after it (at most 1 h), without using an attempt       |
| other (3xx, 4xx, 5xx), timeout, refused  | retried on the backoff schedule; `failed` after the last attempt |
| internal address (SSRF guard)            | failed at once; dead letter                                      |
| stored URL httpx cannot send             | failed at once; dead letter                                      |

App-side helpers manage endpoints and their secrets: `create_endpoint`, `rotate_secret`,
`drop_previous_secrets`. See docs/catalog.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection

from forgejobs import Context, Job, Unrecoverable, backoff
from forgejobs.ratelimit import RateLimit

from .email import notify
from .http import BlockedDestination, unsendable
from .resources import Resources
from .signing import generate_secret, signature_headers
from .store import Store, new_id, owner_ids, utcnow, webhook_attempts, webhook_deliveries, webhook_endpoints

RATE_LIMIT = RateLimit(max=10, per=timedelta(seconds=1))
"""Per endpoint: at most 10 deliveries start in any one-second window, whatever the number of workers."""
RETRY_AFTER_CAP = 3600.0
"""A receiver's `Retry-After` is honoured up to one hour; a longer one is cut to this."""
MAX_RATE_LIMITED = 24
"""`Retry-After` is honoured (without using an attempt) until a delivery has had this many 429 or 503
answers; later ones count as failures, so a receiver that always says "later" cannot keep it alive for ever."""
EXCERPT_CHARS = 1000
"""How much of a response body `webhook_attempts.response_excerpt` keeps."""
ERROR_CHARS = 500
RESPONSE_READ_BYTES = 8 * 1024
"""At most this much of a response body is read: the rest is not needed and may be large."""
BODY_READ_SECONDS = 5.0
"""How long a response body is read for its excerpt once the status line has arrived."""
MAX_SECRETS = 3
"""Secrets an endpoint keeps while rotating: the current one and up to two previous ones."""
USER_AGENT = "forgejobs-webhooks/1"


class WebhookDeliveryError(Exception):
    """The receiver did not accept a delivery (a non-2xx answer, a timeout, a refused connection). Retried."""


class EndpointNotFound(LookupError):
    """No webhook endpoint has the given id."""


class DeliveryResult(BaseModel):
    """What a `DeliverWebhook` run did: `delivered` (sent now), `skipped` (was already delivered or
    cancelled) or `cancelled` (the endpoint is disabled)."""

    delivery_id: str
    outcome: Literal["delivered", "skipped", "cancelled"]
    status_code: int | None = None


class DeliverWebhook(
    Job,
    queue="webhooks",
    attempts=8,
    backoff=backoff.schedule(5, 300, 1800, 7200, 18000, 36000, 36000),
    rate_limit=RATE_LIMIT,
    rate_limit_key="endpoint_id",
    timeout="60s",
):
    """POST one stored event (a `webhook_deliveries` row) to its endpoint, signed with the endpoint's secrets.

    Waits between the 8 attempts: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 28 hours in all).
    Safe to run again: a delivery that is already delivered or cancelled is not sent twice.
    """

    delivery_id: str
    endpoint_id: str

    def perform(self, ctx: Context[Resources]) -> DeliveryResult:
        store = ctx.resources.db
        with store.begin() as conn:
            delivery = _load_delivery(conn, self.delivery_id, self.endpoint_id)
            endpoint = conn.execute(
                sa.select(webhook_endpoints).where(webhook_endpoints.c.id == self.endpoint_id)
            ).one()  # the foreign key guarantees it exists

        if delivery.status == "delivered":
            return DeliveryResult(delivery_id=self.delivery_id, outcome="skipped")
        if delivery.status == "cancelled":
            if endpoint.disabled_at is not None and _gone_here(store, self.delivery_id):
                # This delivery disabled the endpoint; a re-run (say the notification enqueue failed) makes
                # sure the owners hear of it. The notification job ids keep this from sending twice.
                _notify_owners(store, endpoint.org_id, self.endpoint_id)
                raise Unrecoverable(f"{origin(endpoint.url)} answered 410 Gone: endpoint {self.endpoint_id} disabled")
            return DeliveryResult(delivery_id=self.delivery_id, outcome="skipped")
        if endpoint.disabled_at is not None:
            with store.begin() as conn:
                _set_status(conn, self.delivery_id, "cancelled")
            ctx.logger.info("endpoint %s is disabled; delivery %s cancelled", self.endpoint_id, self.delivery_id)
            return DeliveryResult(delivery_id=self.delivery_id, outcome="cancelled")

        body = event_body(delivery.event_type, delivery.payload, delivery.created_at)
        try:
            signatures = signature_headers(endpoint.secrets.split(), self.delivery_id, body)
        except ValueError as exc:  # a malformed stored secret: no retry can fix it
            raise Unrecoverable(f"endpoint {self.endpoint_id}: cannot sign: {exc}") from exc
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, **signatures}
        url: str = endpoint.url
        # Errors, logs and dead letters name the origin only: hook URLs often carry a secret in the path or query.
        shown = f"{origin(url)} (endpoint {self.endpoint_id})"
        started = time.monotonic()
        problem = unsendable(url)
        if problem is not None:  # stored before create_endpoint checked this: no retry can send it
            _record(store, self.delivery_id, started, error=f"bad endpoint URL: {problem}", status="failed")
            raise Unrecoverable(f"delivery {self.delivery_id} not sent: bad endpoint URL for {shown}: {problem}")
        try:
            status_code, response_headers, excerpt = _post(ctx.resources.http, url, body, headers)
        except BlockedDestination as exc:
            _record(store, self.delivery_id, started, error=str(exc), status="failed")
            raise Unrecoverable(f"delivery {self.delivery_id} not sent: {exc}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:  # InvalidURL is no httpx.HTTPError
            _record(store, self.delivery_id, started, error=str(exc), status="failed")
            raise Unrecoverable(f"delivery {self.delivery_id} not sent: bad endpoint URL for {shown}: {exc}") from exc
        except httpx.HTTPError as exc:  # timeouts, refused or reset connections, protocol errors
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            _record(store, self.delivery_id, started, error=error, status="failed" if ctx.is_last_attempt else None)
            raise WebhookDeliveryError(f"POST {shown} failed: {error}") from exc
        except BaseException as exc:  # the job's timeout (a receiver that drips its headers), or a shutdown
            # A shutdown runs the same attempt again later; a timeout on the last attempt ends the delivery.
            final = ctx.is_last_attempt and isinstance(exc, Exception)
            error = f"interrupted: {type(exc).__name__}"
            _record(store, self.delivery_id, started, error=error, status="failed" if final else None)
            raise

        if 200 <= status_code < 300:
            _record(store, self.delivery_id, started, status_code, excerpt, status="delivered")
            return DeliveryResult(delivery_id=self.delivery_id, outcome="delivered", status_code=status_code)

        if status_code == 410:
            reason = f"410 Gone from {origin(url)}"
            with store.begin() as conn:
                _insert_attempt(conn, self.delivery_id, started, status_code, excerpt, None)
                _set_status(conn, self.delivery_id, "cancelled")
                conn.execute(
                    webhook_endpoints.update()
                    .where(webhook_endpoints.c.id == self.endpoint_id, webhook_endpoints.c.disabled_at.is_(None))
                    .values(disabled_at=utcnow(), disabled_reason=reason[:200])
                )
            _notify_owners(store, endpoint.org_id, self.endpoint_id)
            raise Unrecoverable(
                f"{reason}: endpoint {self.endpoint_id} disabled, delivery {self.delivery_id} cancelled"
            )

        retry_after = parse_retry_after(response_headers.get("retry-after")) if status_code in (429, 503) else None
        if retry_after is not None and _rate_limited_answers(store, self.delivery_id) < MAX_RATE_LIMITED:
            _record(store, self.delivery_id, started, status_code, excerpt)
            wait = min(retry_after, RETRY_AFTER_CAP)
            ctx.logger.info("%s answered %d; trying again in %.0f s", shown, status_code, wait)
            ctx.rate_limited(wait)

        _record(
            store, self.delivery_id, started, status_code, excerpt, status="failed" if ctx.is_last_attempt else None
        )
        kind = "a redirect (not followed)" if 300 <= status_code < 400 else str(status_code)
        raise WebhookDeliveryError(f"POST {shown} answered {kind}")


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL: what messages show of an endpoint, never its path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def event_body(event_type: str, data: Any, created_at: datetime) -> bytes:
    """The JSON body of a delivery: `{"type", "timestamp", "data"}`. The timestamp is when the event was
    published, so every attempt of one delivery sends the same bytes."""
    timestamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":")).encode()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (integer seconds or an HTTP date), or None if absent
    or unreadable. A date in the past gives 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" in an HTTP date means UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# -- the handler's steps ------------------------------------------------------------------------------------


def _load_delivery(conn: Connection, delivery_id: str, endpoint_id: str) -> sa.Row[Any]:
    row = conn.execute(sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).first()
    if row is None:
        raise Unrecoverable(f"webhook delivery {delivery_id} does not exist")
    if row.endpoint_id != endpoint_id:
        raise Unrecoverable(
            f"webhook delivery {delivery_id} belongs to endpoint {row.endpoint_id}, not {endpoint_id} as enqueued"
        )
    return row


def _post(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, httpx.Headers, str]:
    """POST and read the status, headers and the start of the body (never the whole of a huge answer, and
    for no longer than `BODY_READ_SECONDS` once the status is in: a receiver that drips its body slowly
    must not hold the job until its timeout kills it before the attempt is recorded)."""
    with client.stream("POST", url, content=body, headers=dict(headers)) as response:
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + BODY_READ_SECONDS
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= RESPONSE_READ_BYTES or time.monotonic() > deadline:
                break
        text = b"".join(chunks)[:RESPONSE_READ_BYTES].decode("utf-8", "replace")
        return response.status_code, response.headers, text[:EXCERPT_CHARS]


def _insert_attempt(
    conn: Connection, delivery_id: str, started: float, status_code: int | None, excerpt: str | None, error: str | None
) -> int:
    """Count the attempt on the delivery and record it; returns its number (1 for the first request sent)."""
    conn.execute(
        webhook_deliveries.update()
        .where(webhook_deliveries.c.id == delivery_id)
        .values(attempts=webhook_deliveries.c.attempts + 1)
    )
    number: int = conn.execute(
        sa.select(webhook_deliveries.c.attempts).where(webhook_deliveries.c.id == delivery_id)
    ).scalar_one()
    conn.execute(
        webhook_attempts.insert().values(
            delivery_id=delivery_id,
            attempt=number,
            status_code=status_code,
            latency_ms=max(0, round((time.monotonic() - started) * 1000)),
            response_excerpt=None if excerpt is None else excerpt[:EXCERPT_CHARS],
            error=None if error is None else error[:ERROR_CHARS],
            at=utcnow(),
        )
    )
    return number


def _set_status(conn: Connection, delivery_id: str, status: Literal["delivered", "failed", "cancelled"]) -> None:
    """Move a delivery that is still open (pending, or failed and being resent) to `status`."""
    values: dict[str, Any] = {"status": status}
    if status == "delivered":
        values["delivered_at"] = utcnow()
    conn.execute(
        webhook_deliveries.update()
        .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.status.in_(("pending", "failed")))
        .values(**values)
    )


def _record(
    store: Store,
    delivery_id: str,
    started: float,
    status_code: int | None = None,
    excerpt: str | None = None,
    *,
    error: str | None = None,
    status: Literal["delivered", "failed"] | None = None,
) -> None:
    """Record one attempt, and the delivery's new status if any, in a transaction of its own: committed
    before the handler raises for a retry, so no attempt goes unrecorded."""
    with store.begin() as conn:
        _insert_attempt(conn, delivery_id, started, status_code, excerpt, error)
        if status is not None:
            _set_status(conn, delivery_id, status)


def _rate_limited_answers(store: Store, delivery_id: str) -> int:
    with store.begin() as conn:
        count: int = conn.execute(
            sa.select(sa.func.count())
            .select_from(webhook_attempts)
            .where(webhook_attempts.c.delivery_id == delivery_id, webhook_attempts.c.status_code.in_((429, 503)))
        ).scalar_one()
    return count


def _gone_here(store: Store, delivery_id: str) -> bool:
    """Whether this delivery's latest attempt was answered 410 (so it is the one that disabled its endpoint)."""
    with store.begin() as conn:
        last = conn.execute(
            sa.select(webhook_attempts.c.status_code)
            .where(webhook_attempts.c.delivery_id == delivery_id)
            .order_by(webhook_attempts.c.attempt.desc())
            .limit(1)
        ).first()
    return last is not None and last.status_code == 410


def _notify_owners(store: Store, org_id: str, endpoint_id: str) -> None:
    """Enqueue a `webhook_endpoint_disabled` notification for each owner of the organisation, once each:
    the job id is derived from endpoint and user, so enqueueing again stores nothing new."""
    with store.begin() as conn:
        owners = owner_ids(conn, org_id)
    for user_id in owners:
        notify(user_id, "webhook_endpoint_disabled", endpoint_id, job_id=notification_job_id(endpoint_id, user_id))


def notification_job_id(endpoint_id: str, user_id: str) -> str:
    """The job id of the notification telling `user_id` that `endpoint_id` was disabled."""
    return f"webhook-disabled-{endpoint_id}-{user_id}"


def delivery_job_id(delivery_id: str) -> str:
    """The job id of the `DeliverWebhook` job of a delivery: enqueueing it twice stores one job."""
    return f"webhook-{delivery_id}"


# -- app side -------------------------------------------------------------------------------------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL {url!r} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError(f"webhook URL {url!r} must not carry credentials")
    if len(url) > 2000:
        raise ValueError(f"webhook URL is {len(url)} characters, more than 2000")
    problem = unsendable(url.strip())
    if problem is not None:
        raise ValueError(f"webhook URL {url!r} cannot be sent: {problem}")
    return url.strip()


def create_endpoint(store: Store, *, org_id: str, url: str, event_types: Iterable[str] = ()) -> tuple[str, str]:
    """Register a webhook endpoint for an organisation; returns `(endpoint_id, secret)`.

    `event_types` lists the event types it receives; empty means every type. Show the secret to the
    customer: their receiver needs it to verify signatures (`jobs.signing.verify`). The URL must be an
    http(s) URL httpx can send (`ValueError` naming what is wrong otherwise: a port beyond 65535, an address
    with leading zeros such as `0177.0.0.1`, a control character); whether its address is allowed is
    checked when delivering (it may resolve differently later).
    """
    checked = _check_url(url)
    endpoint_id = new_id("whe")
    secret = generate_secret()
    with store.begin() as conn:
        conn.execute(
            webhook_endpoints.insert().values(
                id=endpoint_id, org_id=org_id, url=checked, secrets=secret, event_types=sorted(set(event_types))
            )
        )
    return endpoint_id, secret


def _secrets(conn: Connection, endpoint_id: str) -> list[str]:
    value = conn.execute(
        sa.select(webhook_endpoints.c.secrets).where(webhook_endpoints.c.id == endpoint_id).with_for_update()
    ).scalar()
    if value is None:
        raise EndpointNotFound(f"no webhook endpoint {endpoint_id}")
    return str(value).split()


def rotate_secret(store: Store, endpoint_id: str) -> str:
    """Give an endpoint a new secret and return it. Deliveries are signed with the new secret and the
    previous ones (at most `MAX_SECRETS` in all), so receivers keep verifying while they switch; call
    `drop_previous_secrets` once they have."""
    secret = generate_secret()
    with store.begin() as conn:
        kept = [secret, *_secrets(conn, endpoint_id)][:MAX_SECRETS]
        conn.execute(
            webhook_endpoints.update().where(webhook_endpoints.c.id == endpoint_id).values(secrets=" ".join(kept))
        )
    return secret


def drop_previous_secrets(store: Store, endpoint_id: str) -> None:
    """Stop signing with an endpoint's previous secrets: only the current (newest) one remains."""
    with store.begin() as conn:
        current = _secrets(conn, endpoint_id)[:1]
        conn.execute(
            webhook_endpoints.update().where(webhook_endpoints.c.id == endpoint_id).values(secrets=" ".join(current))
        )


def _subscribed(event_types: Sequence[str] | None, event_type: str) -> bool:
    return not event_types or event_type in event_types


def publish_event(
    store: Store, *, org_id: str, event_type: str, data: Mapping[str, Any], event_id: str | None = None
) -> list[str]:
    """Create a delivery for each enabled endpoint of `org_id` subscribed to `event_type` and, in the same
    transaction, one `DeliverWebhook` per delivery (`Store.enqueue`: sent after the commit, or an outbox
    row). Returns the delivery ids (each is the `webhook-id` header).

    `data` must be JSON-serialisable. Give `event_id` (your idempotency key for the event) to make
    publishing safe to repeat: the delivery ids are then derived from it, a second call creates no new
    rows, returns the same ids and enqueues again only what is still pending (the job ids are derived from
    the delivery ids, so a job still known is not stored twice), which also recovers a publish whose
    enqueue failed after the commit. Without it each call is a new event.
    """
    payload = json.loads(json.dumps(data))  # refuse what JSON cannot carry before anything is stored
    with store.transaction() as conn:
        endpoints = conn.execute(
            sa.select(webhook_endpoints.c.id, webhook_endpoints.c.event_types)
            .where(webhook_endpoints.c.org_id == org_id, webhook_endpoints.c.disabled_at.is_(None))
            .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
        ).all()
        targets: list[tuple[str, str]] = []
        for endpoint in endpoints:
            if not _subscribed(endpoint.event_types, event_type):
                continue
            delivery_id = new_id("msg") if event_id is None else _derived_id(endpoint.id, event_id)
            store.insert_ignore(
                conn,
                webhook_deliveries,
                {
                    "id": delivery_id,
                    "endpoint_id": endpoint.id,
                    "event_type": event_type,
                    "payload": payload,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": utcnow(),
                },
            )
            targets.append((delivery_id, endpoint.id))
        pending = set(
            conn.execute(
                sa.select(webhook_deliveries.c.id).where(
                    webhook_deliveries.c.id.in_([d for d, _ in targets]), webhook_deliveries.c.status == "pending"
                )
            ).scalars()
        )
        for delivery_id, endpoint_id in targets:
            if delivery_id in pending:
                job = DeliverWebhook(delivery_id=delivery_id, endpoint_id=endpoint_id)
                store.enqueue(conn, job, job_id=delivery_job_id(delivery_id))
    return [delivery_id for delivery_id, _ in targets]


def _derived_id(endpoint_id: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{endpoint_id}\x00{event_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"
