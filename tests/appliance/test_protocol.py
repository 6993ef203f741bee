from __future__ import annotations

import json

import pytest

from appliance import protocol
from appliance.protocol import Ack, FrameError, Hello, Nack, Unknown, Webhook, decode, encode


def test_frames_round_trip() -> None:
    frames = [
        Hello(tenant="shop-42", window=64),
        Webhook("d-000000000042", "shop-42", '{"events":[]}', "c2ln", 1763800000123, 2),
        Ack("d-000000000042"),
        Nack("d-000000000042", "busy"),
    ]
    for frame in frames:
        assert decode(encode(frame)) == frame


def test_webhook_body_encodes_back_to_the_exact_bytes() -> None:
    raw = '{"events":[{"text":"こんにちは\\n\\u00e9","emoji":"👋"}],  "x" : 1}'.encode()
    frame = Webhook("d-1", "t", raw.decode("utf-8"), "s", 0, 1)
    assert decode(encode(frame)).body.encode("utf-8") == raw  # type: ignore[union-attr]


def test_hello_matches_protocol_md() -> None:
    assert json.loads(encode(Hello(tenant="shop-42", window=64))) == {
        "type": "hello",
        "protocol": 1,
        "tenant": "shop-42",
        "window": 64,
    }


def test_unknown_frame_types_decode_as_unknown() -> None:
    assert decode('{"type": "status", "anything": [1]}') == Unknown("status")


def test_nack_reason_is_optional_and_truncated() -> None:
    assert decode('{"type":"nack","id":"d-1"}') == Nack("d-1", "")
    long = decode(json.dumps({"type": "nack", "id": "d-1", "reason": "x" * 10_000}))
    assert isinstance(long, Nack)
    assert len(long.reason) == protocol.MAX_REASON_CHARS


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '"ack"',
        "{}",
        '{"type": 1}',
        '{"type": "ack"}',
        '{"type": "ack", "id": 5}',
        '{"type": "nack", "id": "d-1", "reason": 3}',
        '{"type": "hello", "tenant": "t", "window": true, "protocol": 1}',
        '{"type": "webhook", "id": "d-1"}',
        "[" * 50_000,
    ],
)
def test_malformed_frames_raise_frame_error(text: str) -> None:
    with pytest.raises(FrameError):
        decode(text)


def test_bytes_frames_decode_like_text() -> None:
    assert decode(b'{"type":"ack","id":"d-7"}') == Ack("d-7")
