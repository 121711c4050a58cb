"""Signing outgoing webhooks the Standard Webhooks way, and checking such signatures on the receiving side.

Every request carries three headers:

- `webhook-id`: the message id (the delivery id); receivers use it to ignore a message they already handled.
- `webhook-timestamp`: when this attempt was signed, in integer seconds since the epoch.
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one entry per secret
  (space-separated) while a secret is being rotated, so a receiver holding either secret can verify.

A secret is written `whsec_<base64 key>`; the HMAC key is the decoded part. `verify` is what a receiver
calls; it names the reason when it refuses (missing header, malformed or stale timestamp, no signature
matching any of its secrets).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300
"""Seconds a `webhook-timestamp` may differ from the receiver's clock, either way."""

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class WebhookVerificationError(Exception):
    """A webhook request failed verification; the message says why. Answer it with 400 or 401."""


def generate_secret(num_bytes: int = 32) -> str:
    """A new random signing secret, `whsec_` followed by `num_bytes` random bytes in base64."""
    if not 24 <= num_bytes <= 64:
        raise ValueError(f"a webhook secret should hold 24 to 64 random bytes, not {num_bytes}")
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(num_bytes)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a secret: the base64 after `whsec_` (a bare base64 string is accepted too)."""
    encoded = secret.strip()
    if encoded.startswith(SECRET_PREFIX):
        encoded = encoded[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not `whsec_` followed by base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, `v1,<base64 HMAC-SHA256>`, over `{msg_id}.{timestamp}.{body}` with the key of `secret`."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_headers(secrets: Sequence[str], msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for sending `body`, signed with every secret in `secrets`.

    `now` (epoch seconds, default the current time) becomes `webhook-timestamp`.
    """
    if isinstance(secrets, str):
        secrets = secrets.split()
    if not secrets:
        raise ValueError(f"no secret to sign webhook message {msg_id} with")
    timestamp = int(time.time() if now is None else now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets),
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str] | str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a received webhook; return None if it is authentic and fresh, else raise `WebhookVerificationError`.

    `body` must be the raw request body, exactly as received (not re-serialised JSON). `headers` are looked
    up without regard to case. `secrets` is one secret, several space-separated, or a sequence: during a
    rotation a signature made with any of them is accepted. The timestamp must be within `tolerance`
    seconds of `now` (default the current time), which limits replays of a captured request.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [h for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not lowered.get(h, "").strip()]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id = lowered[ID_HEADER].strip()
    raw_timestamp = lowered[TIMESTAMP_HEADER].strip()
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} {raw_timestamp[:40]!r} is not integer seconds")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} is {int(current - timestamp)} s old, more than the {tolerance} s allowed"
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} is {int(timestamp - current)} s in the future, more than the {tolerance} s allowed"
        )

    keys = secrets.split() if isinstance(secrets, str) else [s for secret in secrets for s in secret.split()]
    if not keys:
        raise WebhookVerificationError("no secret to verify against (is the endpoint's secret configured?)")
    offered = [
        candidate.encode("ascii", "replace")
        for version, _, candidate in (entry.partition(",") for entry in lowered[SIGNATURE_HEADER].split())
        if version == SIGNATURE_VERSION and candidate
    ]
    if not offered:
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} holds no {SIGNATURE_VERSION} signature")
    for secret in keys:
        expected = sign(secret, msg_id, timestamp, body).partition(",")[2].encode("ascii")
        # Compare against every offered signature without stopping early, each in constant time.
        matched = False
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return
    raise WebhookVerificationError("no signature matches any of the secrets (wrong secret, or body or id altered)")
