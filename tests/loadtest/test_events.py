"""Generated webhooks look like LINE's, carry unique markers and follow the mix."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from loadtest.events import (
    REPLY_TEXT,
    Mix,
    Templates,
    WebhookFactory,
    destination_for,
    gateway_calls,
    marker_of,
    new_ulid,
    ulid_ms,
)

NOW = 1_763_800_000_123


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load()


def factory(templates: Templates, mix: Mix | None = None, seed: int = 1) -> WebhookFactory:
    return WebhookFactory(templates, mix or Mix(), random.Random(seed))


def test_ulid_round_trips_its_milliseconds() -> None:
    ulid = new_ulid(NOW, 12345)
    assert len(ulid) == 26
    assert ulid_ms(ulid) == NOW
    assert new_ulid(NOW, 1) < new_ulid(NOW + 1, 0)


@pytest.mark.parametrize("text", ["", "short", "01G2KZKG2DS765NMRH3GZFD8A!", "I" * 26])
def test_ulid_ms_rejects_what_is_not_a_ulid(text: str) -> None:
    assert ulid_ms(text) is None


def test_bodies_are_line_webhooks_with_fresh_ids_and_the_tenant_destination(
    templates: Templates,
) -> None:
    gen = factory(templates)
    hooks = [gen.build(destination_for("shop-1"), NOW) for _ in range(300)]
    all_ids = []
    for hook in hooks:
        obj = json.loads(hook.body)
        assert obj["destination"] == destination_for("shop-1")
        assert len(obj["events"]) == hook.event_count >= 1
        for event in obj["events"]:
            assert ulid_ms(event["webhookEventId"]) == NOW
            assert event["timestamp"] == NOW
            assert event["deliveryContext"]["isRedelivery"] is (hook.kind == "redelivery")
            all_ids.append(event["webhookEventId"])
        assert marker_of(hook.body) == hook.marker == obj["events"][0]["webhookEventId"]
    assert len(set(all_ids)) == len(all_ids)


def test_mix_is_mostly_text_with_every_kind_present(templates: Templates) -> None:
    gen = factory(templates, seed=7)
    kinds = Counter(gen.build("U0", NOW).kind for _ in range(4000))
    assert set(kinds) == {"text", "sticker", "image", "follow", "postback", "multi", "redelivery"}
    assert kinds["text"] > 0.6 * 4000
    assert kinds["text"] > 4 * kinds["sticker"]


def test_multi_event_requests_carry_several_events_including_unknown_types(
    templates: Templates,
) -> None:
    gen = factory(
        templates, Mix(text=0, sticker=0, image=0, follow=0, postback=0, redelivery=0, multi=1)
    )
    hooks = [gen.build("U0", NOW) for _ in range(200)]
    assert all(2 <= h.event_count <= 5 for h in hooks)
    types = {e["type"] for h in hooks for e in json.loads(h.body)["events"]}
    assert "undefined" in types


def test_a_mix_of_only_zero_weights_is_refused(templates: Templates) -> None:
    with pytest.raises(ValueError, match="weights"):
        factory(templates, Mix(0, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"events": []}', b'{"events": [{"webhookEventId": "x"}]}']
)
def test_marker_of_foreign_bodies_is_none(body: bytes) -> None:
    assert marker_of(body) is None


def test_a_bridge_replies_to_message_events_with_loading_first_in_user_chats(
    templates: Templates,
) -> None:
    gen = factory(
        templates, Mix(text=1, sticker=0, image=0, follow=0, postback=0, multi=0, redelivery=0)
    )
    hook = next(h for h in (gen.build("U0", NOW) for _ in range(50)) if b'"type":"user"' in h.body)
    event = json.loads(hook.body)["events"][0]
    calls = gateway_calls(hook.body)
    assert calls == [
        ("/v2/bot/chat/loading/start", {"chatId": event["source"]["userId"], "loadingSeconds": 5}),
        (
            "/v2/bot/message/reply",
            {"replyToken": event["replyToken"], "messages": [{"type": "text", "text": REPLY_TEXT}]},
        ),
    ]


def test_follows_postbacks_and_foreign_bodies_get_no_reply(templates: Templates) -> None:
    gen = factory(
        templates, Mix(text=0, sticker=0, image=0, follow=1, postback=1, multi=0, redelivery=0)
    )
    assert all(gateway_calls(gen.build("U0", NOW).body) == [] for _ in range(20))
    assert gateway_calls(b"not json") == []
    assert gateway_calls(b'{"events": [{"type": "message"}]}') == []
