"""LINE webhook events as LINE sends them: split, parse, decide what to do.

A body holds several events; each is handled on its own. line-bot-sdk v3's
models are used where they parse; where they refuse (events that predate
``webhookEventId``, types the SDK does not know; see the fixtures' README)
the raw event dict is read instead, so every event yields a
:class:`LineEvent` and nothing here raises on odd input except
:func:`split_body` on a body that is not a webhook at all.

:func:`plan` is the dispatch table: a text message from a chat in active
mode becomes an :class:`Answer`; every other known type and every unknown
type becomes a :class:`Skip` with the reason, logged and acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from linebot.v3.webhooks import Event as SdkEvent
from linebot.v3.webhooks import (
    GroupSource,
    MessageEvent,
    RoomSource,
    TextMessageContent,
    UserSource,
)

log = logging.getLogger(__name__)

#: Event types LINE documents and the bridge deliberately does not answer.
QUIET_TYPES = frozenset(
    {
        "follow",
        "unfollow",
        "join",
        "leave",
        "postback",
        "beacon",
        "accountLink",
        "memberJoined",
        "memberLeft",
        "unsend",
        "videoPlayComplete",
        "things",
        "module",
        "activated",
        "deactivated",
        "botSuspended",
        "botResumed",
        "delivery",
        "membership",
        "messageEdited",
    }
)


class MalformedWebhook(ValueError):
    """A body that is not UTF-8 JSON, not an object, or whose ``events`` is not an array."""


@dataclass(frozen=True, slots=True)
class Source:
    """Who an event came from: the chat to answer in."""

    kind: str = ""
    user_id: str = ""
    group_id: str = ""
    room_id: str = ""

    @property
    def chat_id(self) -> str:
        """The push target: the group or room when there is one, else the user."""
        return self.group_id or self.room_id or self.user_id


@dataclass(frozen=True, slots=True)
class LineEvent:
    """One event, with the fields the bridge acts on read from the SDK model or the raw dict."""

    index: int
    raw: dict[str, Any]
    type: str
    event_id: str
    reply_token: str
    mode: str
    source: Source
    text: str | None
    redelivery: bool
    parsed_by_sdk: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """Ask the model about ``text`` and answer in the event's chat."""

    text: str
    reply_token: str
    push_to: str
    loading_chat: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to send; ``reason`` says why (logged)."""

    reason: str


Action = Answer | Skip


def split_body(body: bytes) -> list[Any]:
    """The ``events`` array of a webhook body; raises :class:`MalformedWebhook`."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedWebhook("body is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise MalformedWebhook("body is not a JSON object")
    events = obj.get("events")
    if not isinstance(events, list):
        raise MalformedWebhook("'events' is not an array")
    return events


def body_digest(body: bytes) -> str:
    """SHA-256 of the exact body bytes, hex: identifies one webhook whoever relays it."""
    return hashlib.sha256(body).hexdigest()


def dedupe_key(raw: object, digest: str, index: int) -> str:
    """The key an event is deduplicated by.

    LINE's ``webhookEventId`` when the event has one; old-format events have
    none, so the body's digest and the event's position stand in (the same
    bytes relayed twice are the same event).
    """
    if isinstance(raw, dict):
        event_id = raw.get("webhookEventId")
        if isinstance(event_id, str) and event_id:
            return f"id:{event_id}"
    return f"body:{digest}:{index}"


def chat_key(raw: object) -> str:
    """The chat an event belongs to, so events of one chat are answered in order."""
    source = _raw_source(raw.get("source") if isinstance(raw, dict) else None)
    return source.chat_id


def parse_event(index: int, raw: object) -> LineEvent:
    """Read one event; the SDK's model where it parses, the raw dict where it does not."""
    if not isinstance(raw, dict):
        return LineEvent(index, {}, "", "", "", "", Source(), None, False, False)
    try:
        model = SdkEvent.from_dict(raw)
    except (
        Exception
    ) as exc:  # the SDK raises KeyError, ValueError, ValidationError... on odd events
        log.debug(
            "event read without the SDK",
            extra={
                "index": index,
                "event_type": str(raw.get("type", ""))[:64],
                "why": type(exc).__name__,
            },
        )
        return _from_raw(index, raw)
    return _from_model(index, raw, model)


def _from_model(index: int, raw: dict[str, Any], model: Any) -> LineEvent:
    source = _sdk_source(getattr(model, "source", None))
    text = None
    if isinstance(model, MessageEvent) and isinstance(model.message, TextMessageContent):
        text = model.message.text
    context = getattr(model, "delivery_context", None)
    return LineEvent(
        index=index,
        raw=raw,
        type=str(model.type),
        event_id=str(getattr(model, "webhook_event_id", "") or ""),
        reply_token=str(getattr(model, "reply_token", "") or ""),
        mode=_enum_text(getattr(model, "mode", None)),
        source=source,
        text=text,
        redelivery=bool(getattr(context, "is_redelivery", False)),
        parsed_by_sdk=True,
    )


def _enum_text(value: Any) -> str:
    """The wire text of an SDK enum field (``EventMode.ACTIVE`` -> ``"active"``)."""
    value = getattr(value, "value", value)
    return value if isinstance(value, str) else ""


def _sdk_source(source: Any) -> Source:
    if isinstance(source, UserSource):
        return Source("user", user_id=source.user_id or "")
    if isinstance(source, GroupSource):
        return Source("group", user_id=source.user_id or "", group_id=source.group_id)
    if isinstance(source, RoomSource):
        return Source("room", user_id=source.user_id or "", room_id=source.room_id)
    return Source()


def _from_raw(index: int, raw: dict[str, Any]) -> LineEvent:
    message = raw.get("message")
    text = None
    if (
        raw.get("type") == "message"
        and isinstance(message, dict)
        and message.get("type") == "text"
        and isinstance(message.get("text"), str)
    ):
        text = message["text"]
    context = raw.get("deliveryContext")
    return LineEvent(
        index=index,
        raw=raw,
        type=_str(raw.get("type")),
        event_id=_str(raw.get("webhookEventId")),
        reply_token=_str(raw.get("replyToken")),
        mode=_str(raw.get("mode")),
        source=_raw_source(raw.get("source")),
        text=text,
        redelivery=isinstance(context, dict) and context.get("isRedelivery") is True,
        parsed_by_sdk=False,
    )


def _raw_source(source: object) -> Source:
    if not isinstance(source, dict):
        return Source()
    kind = _str(source.get("type"))
    if kind not in ("user", "group", "room"):
        return Source()
    return Source(
        kind,
        user_id=_str(source.get("userId")),
        group_id=_str(source.get("groupId")) if kind == "group" else "",
        room_id=_str(source.get("roomId")) if kind == "room" else "",
    )


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def plan(event: LineEvent) -> Action:
    """What to do with ``event``: answer a user's text, or skip with a reason."""
    if event.mode == "standby":
        # Another channel owns the chat (LINE's module mode); answering is not ours to do.
        return Skip("standby mode")
    if event.type == "message":
        if event.text is None:
            return Skip("not a text message")
        if not event.text.strip():
            return Skip("empty text")
        if not (event.reply_token or event.source.chat_id):
            return Skip("nowhere to answer")
        return Answer(
            text=event.text,
            reply_token=event.reply_token,
            push_to=event.source.chat_id,
            loading_chat=event.source.user_id if event.source.kind == "user" else "",
        )
    if event.type in QUIET_TYPES:
        return Skip(f"{event.type} event")
    return Skip("unknown event type")
