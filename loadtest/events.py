"""LINE-like webhook bodies for the load generator, built from real fixtures.

Each generated request is a LINE webhook body (``{"destination", "events"}``)
whose events are copies of real events from LINE's SDK test suites with a
fresh ``webhookEventId``, timestamp, reply token, message id and user. The
first event's ``webhookEventId`` is the request's *marker*: a ULID, unique per
request, whose time part is the moment the body was built. A simulated bridge
reads it back from the delivered body to count the delivery once and to
measure the end-to-end latency without any state shared with the sender, so
deliveries can land on any worker process (or machine).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
ULID_LENGTH = 26

_TEXTS = (
    "Hello, world",
    "こんにちは",
    "What are your opening hours?",
    "予約をお願いします",
    "Can I change my order?",
    "ありがとう!",
    "👍",
    "Where is my parcel?",
)


class TemplateError(ValueError):
    """A fixture file is not a LINE webhook body with events."""


def new_ulid(ms: int, randomness: int) -> str:
    """A ULID string: 48 bits of Unix milliseconds, then 80 bits of ``randomness``."""
    value = ((ms & ((1 << 48) - 1)) << 80) | (randomness & ((1 << 80) - 1))
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def ulid_ms(ulid: str) -> int | None:
    """The Unix milliseconds in a ULID's time part, or None when it is not a ULID."""
    # 26 base-32 digits hold 130 bits; a ULID's first digit is at most 7 (128 bits).
    if len(ulid) != ULID_LENGTH or ulid[0] not in "01234567":
        return None
    if any(char not in _CROCKFORD_VALUE for char in ulid):
        return None
    value = 0
    for char in ulid[:10]:
        value = value * 32 + _CROCKFORD_VALUE[char]
    return value


def marker_of(body: str | bytes) -> str | None:
    """The marker (first event's ``webhookEventId``) of a delivered body, if it has one."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    events = obj.get("events") if isinstance(obj, dict) else None
    if not isinstance(events, list) or not events or not isinstance(events[0], dict):
        return None
    marker = events[0].get("webhookEventId")
    if isinstance(marker, str) and ulid_ms(marker) is not None:
        return marker
    return None


def destination_for(tenant: str) -> str:
    """A stable bot user id (``U`` + 32 hex digits) standing in for a tenant's bot."""
    return "U" + hashlib.sha256(tenant.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Mix:
    """Relative weights of request kinds: a busy bot's traffic, mostly text."""

    text: int = 70
    sticker: int = 10
    image: int = 6
    follow: int = 4
    postback: int = 5
    multi: int = 3
    redelivery: int = 2

    def kinds(self) -> tuple[list[str], list[int]]:
        """Kind names and their weights, for :func:`random.Random.choices`."""
        names = [f.name for f in fields(self)]
        weights = [int(getattr(self, name)) for name in names]
        if any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError("mix weights must be non-negative and not all zero")
        return names, weights


@dataclass(frozen=True, slots=True)
class Templates:
    """Event templates per kind, each a list of real LINE events."""

    by_kind: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls) -> Templates:
        """The templates shipped in ``loadtest/fixtures``."""

        def events(name: str) -> list[dict[str, Any]]:
            text = resources.files("loadtest.fixtures").joinpath(name).read_text("utf-8")
            obj = json.loads(text)
            found = obj.get("events") if isinstance(obj, dict) else None
            if not isinstance(found, list) or not found:
                raise TemplateError(f"fixture {name} has no events")
            return [e for e in found if isinstance(e, dict)]

        return cls(
            by_kind={
                "text": events("text-user.json")
                + events("text-emojis.json")
                + events("text-group.json"),
                "sticker": events("sticker.json"),
                "image": events("image.json"),
                "follow": events("follow.json"),
                "postback": events("postback.json"),
                "redelivery": events("webhook-redelivery.json"),
                "multi": events("sdk-python-webhook.json"),
            }
        )


@dataclass(frozen=True, slots=True)
class Webhook:
    """One generated request: its kind, the exact bytes to sign and send, its marker."""

    kind: str
    body: bytes
    marker: str
    event_count: int


class WebhookFactory:
    """Builds webhook bodies with the configured mix; one per process (not thread-safe)."""

    def __init__(
        self, templates: Templates, mix: Mix, rng: random.Random, users: int = 10_000
    ) -> None:
        self._templates = templates
        self._names, self._weights = mix.kinds()
        self._rng = rng
        self._users = max(1, users)

    def build(self, destination: str, now_ms: int) -> Webhook:
        """A fresh webhook body for ``destination``, stamped ``now_ms``."""
        kind = self._rng.choices(self._names, self._weights)[0]
        pool = self._templates.by_kind[kind]
        if kind == "multi":
            picked = self._rng.sample(pool, k=min(len(pool), self._rng.randint(2, 5)))
        else:
            picked = [self._rng.choice(pool)]
        events = [
            self._event(template, now_ms, redelivery=kind == "redelivery") for template in picked
        ]
        body = {"destination": destination, "events": events}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return Webhook(
            kind=kind, body=data, marker=events[0]["webhookEventId"], event_count=len(events)
        )

    def _event(self, template: dict[str, Any], now_ms: int, *, redelivery: bool) -> dict[str, Any]:
        event = copy.deepcopy(template)
        rng = self._rng
        event["timestamp"] = now_ms
        event["mode"] = event.get("mode", "active")
        event["webhookEventId"] = new_ulid(now_ms, rng.getrandbits(80))
        event["deliveryContext"] = {"isRedelivery": redelivery}
        if "replyToken" in event:
            event["replyToken"] = f"{rng.getrandbits(128):032x}"
        source = event.get("source")
        if isinstance(source, dict) and "userId" in source:
            source["userId"] = (
                "U"
                + hashlib.md5(  # noqa: S324 - an id, not security
                    str(rng.randrange(self._users)).encode()
                ).hexdigest()
            )
        message = event.get("message")
        if isinstance(message, dict):
            if "id" in message:
                message["id"] = str(rng.randrange(10**17, 10**18))
            if message.get("type") == "text" and not message.get("emojis"):
                message["text"] = rng.choice(_TEXTS)
        return event


#: The text simulated bridges reply with.
REPLY_TEXT = "Thanks, we got your message."


def gateway_calls(body: str | bytes) -> list[tuple[str, dict[str, Any]]]:
    """The Messaging API calls a bridge makes for a delivered body: ``(path, JSON)`` pairs.

    Every message event with a reply token gets a reply; in a one-on-one chat
    the loading animation is started first, as the project's bridge does.
    Other events (follows, postbacks, unknown types) are acknowledged and
    left unanswered.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return []
    events = obj.get("events") if isinstance(obj, dict) else None
    calls: list[tuple[str, dict[str, Any]]] = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("type") != "message":
            continue
        token = event.get("replyToken")
        if not isinstance(token, str):
            continue
        source = event.get("source")
        if isinstance(source, dict) and source.get("type") == "user" and source.get("userId"):
            calls.append(
                ("/v2/bot/chat/loading/start", {"chatId": source["userId"], "loadingSeconds": 5})
            )
        calls.append(
            (
                "/v2/bot/message/reply",
                {"replyToken": token, "messages": [{"type": "text", "text": REPLY_TEXT}]},
            )
        )
    return calls
