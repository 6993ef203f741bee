"""A bridge's side of the protocol (bridge/wire.py): negotiation and answers, without I/O."""

from __future__ import annotations

import json

import pytest

from appliance.protocol import (
    MAX_BRIDGE_FRAME_BYTES,
    SUBPROTOCOL_V2,
    Ack,
    Hello,
    Unknown,
    Webhook,
    Webhooks,
    decode,
)
from appliance.store import new_delivery_id
from bridge.wire import (
    MAX_ACK_IDS,
    OFFER,
    IntakeResult,
    acks,
    delivered,
    negotiated,
    offer,
    replies,
)


def hook(n: int) -> Webhook:
    return Webhook(f"d-{n:012d}", "shop", '{"events":[]}', "sig", 1763800000000 + n, 1)


def ids_of(text: str) -> tuple[str, ...]:
    frame = decode(text)
    assert isinstance(frame, Ack)
    return frame.ids


def wire(frames: list[str]) -> list[dict[str, object]]:
    return [json.loads(text) for text in frames]


def test_protocol_2_is_offered_and_protocol_1_is_asked_for_by_offering_nothing() -> None:
    assert OFFER == (SUBPROTOCOL_V2,)
    assert offer(2) == [SUBPROTOCOL_V2]
    assert offer(1) is None
    with pytest.raises(ValueError, match="no such protocol"):
        offer(3)


@pytest.mark.parametrize(
    ("selected", "protocol"),
    [(SUBPROTOCOL_V2, 2), (None, 1), ("", 1), ("linerelay.v3", 1)],
)
def test_only_a_relay_selecting_linerelay_v2_speaks_protocol_2(
    selected: str | None, protocol: int
) -> None:
    assert negotiated(selected) == protocol


def test_a_frame_delivers_its_webhook_or_its_batch_in_order_and_anything_else_nothing() -> None:
    one, batch = hook(1), (hook(2), hook(3), hook(4))
    assert delivered(one) == (one,)
    assert delivered(Webhooks(batch)) == batch
    assert delivered(Webhooks(())) == ()
    assert delivered(Hello("shop", 256, 2)) == ()
    assert delivered(Unknown("future-thing")) == ()


def test_protocol_2_acks_every_webhook_taken_in_one_frame_and_nacks_the_rest_one_by_one() -> None:
    hooks = [hook(n) for n in range(1, 6)]
    results = [
        IntakeResult(True),
        IntakeResult(False, "queue unavailable"),
        IntakeResult(True),
        IntakeResult(False, "queue unavailable"),
        IntakeResult(True),
    ]
    ack_frames, nack_frames = replies(hooks, results, 2)
    assert wire(ack_frames) == [{"type": "ack", "ids": [hooks[0].id, hooks[2].id, hooks[4].id]}]
    assert wire(nack_frames) == [
        {"type": "nack", "id": hooks[1].id, "reason": "queue unavailable"},
        {"type": "nack", "id": hooks[3].id, "reason": "queue unavailable"},
    ]


def test_protocol_1_acks_each_webhook_alone_with_the_one_id_spelling() -> None:
    hooks = [hook(1), hook(2), hook(3)]
    results = [IntakeResult(True), IntakeResult(False, "busy"), IntakeResult(True)]
    ack_frames, nack_frames = replies(hooks, results, 1)
    assert wire(ack_frames) == [
        {"type": "ack", "id": hooks[0].id},
        {"type": "ack", "id": hooks[2].id},
    ]
    assert wire(nack_frames) == [{"type": "nack", "id": hooks[1].id, "reason": "busy"}]


def test_nothing_taken_sends_no_ack_frame_in_either_protocol() -> None:
    refused = [IntakeResult(False, "queue unavailable")] * 2
    for protocol in (1, 2):
        ack_frames, nack_frames = replies([hook(1), hook(2)], refused, protocol)
        assert ack_frames == []
        assert len(nack_frames) == 2
        assert acks([], protocol) == []


def test_ack_frames_read_back_as_the_ids_they_name() -> None:
    ids = [hook(n).id for n in range(1, 257)]
    (batch,) = acks(ids, 2)
    assert decode(batch) == decode(json.dumps({"type": "ack", "ids": ids}))
    assert [decode(text) for text in acks(ids[:3], 1)] == [
        decode(json.dumps({"type": "ack", "id": i})) for i in ids[:3]
    ]


def test_acks_of_more_ids_than_a_frame_may_name_are_split_under_the_relays_frame_limit() -> None:
    ids = [new_delivery_id() for _ in range(MAX_ACK_IDS * 2 + 1)]
    frames = acks(ids, 2)
    named = [ids_of(text) for text in frames]
    assert [len(batch) for batch in named] == [MAX_ACK_IDS, MAX_ACK_IDS, 1]
    assert [i for batch in named for i in batch] == ids
    assert max(len(text.encode()) for text in frames) < MAX_BRIDGE_FRAME_BYTES


def test_results_must_match_the_webhooks_one_to_one() -> None:
    with pytest.raises(ValueError, match="1 results for 2 webhooks"):
        replies([hook(1), hook(2)], [IntakeResult(True)], 2)
