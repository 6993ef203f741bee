"""Events as LINE sends them: every fixture body is read and dispatched without crashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.events import (
    Answer,
    MalformedWebhook,
    Skip,
    body_digest,
    chat_key,
    dedupe_key,
    parse_event,
    plan,
    split_body,
)
from tests.bridge.harness import FIXTURES

ALL_BODIES = sorted(FIXTURES.glob("*/*.json"))


def events_of(name: str) -> list[object]:
    return split_body((FIXTURES / name).read_bytes())


@pytest.mark.parametrize("path", ALL_BODIES, ids=lambda p: p.name)
def test_every_fixture_event_parses_and_gets_a_plan(path: Path) -> None:
    for index, raw in enumerate(split_body(path.read_bytes())):
        action = plan(parse_event(index, raw))
        assert isinstance(action, Answer | Skip)


def test_sdk_python_body_has_28_events_one_unknown() -> None:
    events = [parse_event(i, raw) for i, raw in enumerate(events_of("sdk-python/webhook.json"))]
    assert len(events) == 28
    unknown = [e for e in events if e.type == "undefined"]
    assert len(unknown) == 1
    assert plan(unknown[0]) == Skip("unknown event type")
    assert not unknown[0].parsed_by_sdk
    assert sum(e.parsed_by_sdk for e in events) == 27
    assert sum(e.redelivery for e in events) == 2


def test_text_message_parsed_by_the_sdk_is_answered() -> None:
    first = parse_event(0, events_of("sdk-python/webhook.json")[0])
    assert first.parsed_by_sdk
    assert plan(first) == Answer(
        text="Hello, world",
        reply_token="nHuyWiB7yP5Zw52FIkcQobQuGDXCTA",
        push_to="U206d25c2ea6bd87c17655609a1c37cb8",
        loading_chat="U206d25c2ea6bd87c17655609a1c37cb8",
    )


def test_old_format_text_event_falls_back_to_the_raw_dict_and_is_answered() -> None:
    event = parse_event(0, events_of("sdk-java/text-user.json")[0])
    assert not event.parsed_by_sdk
    assert event.event_id == ""
    action = plan(event)
    assert isinstance(action, Answer)
    assert action.text == "Hello, world"


def test_group_text_in_standby_mode_is_skipped() -> None:
    assert plan(parse_event(0, events_of("sdk-java/text-group.json")[0])) == Skip("standby mode")


def test_group_text_is_answered_in_the_group_without_loading_animation() -> None:
    raw = dict(events_of("sdk-java/text-group.json")[0])  # type: ignore[arg-type]
    raw["mode"] = "active"
    action = plan(parse_event(0, raw))
    assert isinstance(action, Answer)
    assert action.push_to == "u206d25c2ea6bd87c17655609a1c37cb8"
    assert action.loading_chat == ""


def test_unknown_type_and_unknown_source_are_skipped() -> None:
    first, second = (parse_event(i, e) for i, e in enumerate(events_of("sdk-java/unknown.json")))
    assert plan(first) == Skip("unknown event type")
    assert plan(second) == Skip("not a text message")


def test_known_non_message_types_are_skipped_by_name() -> None:
    assert plan(parse_event(0, events_of("sdk-java/follow.json")[0])) == Skip("follow event")


def test_standby_mode_is_never_answered() -> None:
    raw = dict(events_of("sdk-python/webhook.json")[0])  # type: ignore[arg-type]
    raw["mode"] = "standby"
    assert plan(parse_event(0, raw)) == Skip("standby mode")


@pytest.mark.parametrize("raw", [None, 5, "text", [], {}, {"type": 3, "source": "x"}])
def test_garbage_events_are_skipped_not_raised(raw: object) -> None:
    assert isinstance(plan(parse_event(0, raw)), Skip)


@pytest.mark.parametrize(
    "body", [b"\xff", b"not json", b"[]", b'{"events": {}}', b'{"destination": "U1"}']
)
def test_non_webhook_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        split_body(body)


def test_dedupe_key_prefers_webhook_event_id() -> None:
    assert dedupe_key({"webhookEventId": "01ABC"}, "d", 3) == "id:01ABC"
    assert dedupe_key({"type": "message"}, "d", 3) == "body:d:3"
    assert body_digest(b"x") != body_digest(b"y")


def test_chat_key_is_the_group_room_or_user() -> None:
    assert chat_key({"source": {"type": "group", "groupId": "C1", "userId": "U1"}}) == "C1"
    assert chat_key({"source": {"type": "user", "userId": "U1"}}) == "U1"
    assert chat_key({"source": "?"}) == ""
