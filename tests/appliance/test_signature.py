from __future__ import annotations

import base64

import pytest
from linebot.v3 import SignatureValidator

from appliance.signature import sign, verify

# line-bot-sdk-python's own test vector (tests/test_webhook.py).
SDK_SECRET = b"channel_secret"
SDK_BODY = b"bodybodybodybody"
SDK_SIGNATURE = "/gg9a+LvFevTH1sd7XCQycD7tsWclCsInj7MhBHxN7k="


def test_sign_matches_line_sdk_test_vector() -> None:
    assert sign(SDK_SECRET, SDK_BODY) == SDK_SIGNATURE


def test_verify_accepts_line_sdk_test_vector() -> None:
    assert verify(SDK_SECRET, SDK_BODY, SDK_SIGNATURE)


@pytest.mark.parametrize(
    "claimed",
    [None, "", "invalid_signature", "not base64!", "A" * 200, SDK_SIGNATURE[:-4]],
)
def test_verify_refuses_missing_or_garbled_signatures(claimed: str | None) -> None:
    assert not verify(SDK_SECRET, SDK_BODY, claimed)


def test_verify_refuses_signature_under_another_secret() -> None:
    assert not verify(b"other_secret", SDK_BODY, SDK_SIGNATURE)


def test_verify_refuses_a_body_changed_by_one_byte() -> None:
    assert not verify(SDK_SECRET, SDK_BODY + b" ", SDK_SIGNATURE)


def test_verify_is_over_bytes_not_reserialised_json() -> None:
    body = b'{"events": [],  "destination": "U1"}'
    reserialised = b'{"events":[],"destination":"U1"}'
    assert verify(b"s", body, sign(b"s", body))
    assert not verify(b"s", reserialised, sign(b"s", body))


def test_sign_agrees_with_line_sdk_on_non_ascii_bodies() -> None:
    body = '{"events":[{"message":{"text":"こんにちは 👋"}}]}'.encode()
    assert SignatureValidator("secret").validate(body.decode(), sign(b"secret", body))


def test_verify_accepts_bytes_signature() -> None:
    assert verify(SDK_SECRET, SDK_BODY, SDK_SIGNATURE.encode())


def test_signature_is_a_base64_sha256_digest() -> None:
    assert len(base64.b64decode(sign(b"k", b"x"))) == 32
