"""jobs.signing: Standard Webhooks signatures, checked against the specification's published test vector."""

from __future__ import annotations

import base64

import pytest

from jobs.signing import WebhookVerificationError, generate_secret, secret_key, sign, signature_headers, verify

# The test vector the Standard Webhooks reference libraries share.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000.0
BODY = b'{"type":"invoice.paid","data":{"id":"in_1"}}'


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    return {**headers, **overrides}


def test_sign_reproduces_the_specification_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_specification_vector() -> None:
    verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 10)


def test_generated_secrets_are_random_whsec_keys_of_32_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and second.startswith("whsec_")
    assert first != second
    assert len(secret_key(first)) == 32
    assert base64.b64encode(secret_key(first)).decode() == first.removeprefix("whsec_")


def test_signature_headers_round_trip_through_verify() -> None:
    secret = generate_secret()
    headers = signature_headers([secret], "msg_1", BODY, now=NOW)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(NOW))
    assert headers["webhook-signature"] == sign(secret, "msg_1", int(NOW), BODY)
    verify(BODY, headers, secret, now=NOW)


def test_header_names_are_matched_without_regard_to_case() -> None:
    upper = {name.upper(): value for name, value in vector_headers().items()}
    verify(VECTOR_BODY, upper, VECTOR_SECRET, now=VECTOR_TIMESTAMP)


def test_during_rotation_each_secret_signs_and_either_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signature_headers([new, old], "msg_rot", BODY, now=NOW)

    signatures = headers["webhook-signature"].split(" ")
    assert signatures == [sign(new, "msg_rot", int(NOW), BODY), sign(old, "msg_rot", int(NOW), BODY)]
    verify(BODY, headers, old, now=NOW)  # a receiver that has not switched yet
    verify(BODY, headers, new, now=NOW)  # one that has
    verify(BODY, headers, [generate_secret(), new], now=NOW)  # a receiver holding several accepts any
    verify(BODY, headers, f"{generate_secret()} {old}", now=NOW)  # space-separated, as stored
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(BODY, headers, generate_secret(), now=NOW)


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (VECTOR_BODY + b" ", vector_headers(), "no signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-id": "msg_other"}), "no signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)}), "no signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-signature": "v1,AAAA"}), "no signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-signature": "v1a,whatever"}), "no v1 signature"),
        (VECTOR_BODY, vector_headers(**{"webhook-timestamp": "16142653.3"}), "not integer seconds"),
        (VECTOR_BODY, vector_headers(**{"webhook-timestamp": ""}), "missing header.*webhook-timestamp"),
        (VECTOR_BODY, {"webhook-id": VECTOR_ID}, "missing header.*webhook-timestamp, webhook-signature"),
    ],
    ids=["tampered-body", "other-id", "other-timestamp", "bad-signature", "no-v1", "bad-timestamp", "empty", "missing"],
)
def test_verify_refuses_and_says_why(body: bytes, headers: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify(body, headers, VECTOR_SECRET, now=VECTOR_TIMESTAMP)


def test_a_matching_signature_among_others_is_enough() -> None:
    headers = vector_headers(**{"webhook-signature": f"v1,AAAA v1a,xyz {VECTOR_SIGNATURE}"})
    verify(VECTOR_BODY, headers, VECTOR_SECRET, now=VECTOR_TIMESTAMP)


def test_stale_and_future_timestamps_are_refused_outside_the_tolerance() -> None:
    verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 300)
    with pytest.raises(WebhookVerificationError, match="301 s old, more than the 300 s allowed"):
        verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 301)
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP - 301)
    verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 3000, tolerance=3600)


def test_a_receiver_without_a_secret_refuses_rather_than_accepts() -> None:
    with pytest.raises(WebhookVerificationError, match="no secret"):
        verify(VECTOR_BODY, vector_headers(), "", now=VECTOR_TIMESTAMP)


def test_malformed_secrets_and_signing_without_one_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="not `whsec_` followed by base64"):
        sign("whsec_not base64!", "msg", 1, b"")
    with pytest.raises(ValueError, match="no secret to sign webhook message msg_1"):
        signature_headers([], "msg_1", b"")
