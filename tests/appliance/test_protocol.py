from __future__ import annotations

import json

import pytest

from appliance import protocol
from appliance.protocol import (
    Ack,
    FrameError,
    Hello,
    Nack,
    Unknown,
    Webhook,
    Webhooks,
    decode,
    encode,
)

HOOK = Webhook("d-000000000042", "shop-42", '{"events":[]}', "c2ln", 1763800000123, 2)


def test_frames_round_trip_in_protocol_1() -> None:
    frames = [
        Hello(tenant="shop-42", window=64),
        HOOK,
        Ack(("d-000000000042",)),
        Nack("d-000000000042", "busy"),
    ]
    for frame in frames:
        assert decode(encode(frame)) == frame


def test_frames_round_trip_in_protocol_2() -> None:
    frames = [
        Hello(tenant="shop-42", window=256, protocol=2),
        Webhooks((HOOK, Webhook("d-2", "shop-42", "{}", "s", 1, 1))),
        Ack(("d-1", "d-2", "d-3")),
        Nack("d-1", "busy"),
    ]
    for frame in frames:
        assert decode(encode(frame, 2)) == frame


def test_protocol_2_frames_match_protocol_md() -> None:
    batch = json.loads(encode(Webhooks((HOOK,)), 2))
    assert batch == {
        "type": "webhooks",
        "items": [
            {
                "id": "d-000000000042",
                "tenant": "shop-42",
                "body": '{"events":[]}',
                "signature": "c2ln",
                "received_at": 1763800000123,
                "attempt": 2,
            }
        ],
    }
    assert json.loads(encode(Ack(("a", "b")), 2)) == {"type": "ack", "ids": ["a", "b"]}
    assert json.loads(encode(Ack(("a",)), 1)) == {"type": "ack", "id": "a"}


def test_a_replay_says_so_in_both_protocols_and_others_do_not() -> None:
    replay = Webhook("d-9", "shop-42", '{"events":[]}', "c2ln", 1, 1, replay=True)
    one = json.loads(encode(replay))
    two = json.loads(encode(Webhooks((HOOK, replay)), 2))
    assert one["replay"] is True
    assert two["items"][1]["replay"] is True
    assert "replay" not in two["items"][0]
    assert "replay" not in json.loads(encode(HOOK))
    assert decode(encode(replay)) == replay
    assert decode(encode(Webhooks((HOOK, replay)), 2)) == Webhooks((HOOK, replay))


@pytest.mark.parametrize("value", ["true", "1", '"yes"', "null", "false"])
def test_only_a_json_true_marks_a_replay(value: str) -> None:
    text = encode(HOOK)[:-1] + f',"replay":{value}}}'
    frame = decode(text)
    assert isinstance(frame, Webhook)
    assert frame.replay is (value == "true")


def test_protocol_1_cannot_say_batches() -> None:
    with pytest.raises(ValueError, match="batches"):
        encode(Webhooks((HOOK,)), 1)
    with pytest.raises(ValueError, match="exactly one id"):
        encode(Ack(("a", "b")), 1)


def test_either_ack_spelling_is_read() -> None:
    assert decode('{"type":"ack","id":"d-1"}') == Ack(("d-1",))
    assert decode('{"type":"ack","ids":["d-1","d-2"]}') == Ack(("d-1", "d-2"))


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
        '{"type": "ack", "ids": "d-1"}',
        '{"type": "ack", "ids": [1]}',
        '{"type": "webhooks", "items": [{"id": "d-1"}]}',
        '{"type": "webhooks", "items": "x"}',
        "[" * 50_000,
    ],
)
def test_malformed_frames_raise_frame_error(text: str) -> None:
    with pytest.raises(FrameError):
        decode(text)


def test_bytes_frames_decode_like_text() -> None:
    assert decode(b'{"type":"ack","id":"d-7"}') == Ack(("d-7",))
