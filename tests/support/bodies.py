"""Webhook bodies as LINE sends them, for tests that post to a relay."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def webhook_body(
    text: str,
    *,
    event_id: str | None = None,
    reply_token: str | None = None,
    user: str | None = None,
    redelivery: bool = False,
) -> bytes:
    """A current-format body with one text message event saying ``text``.

    Unique unless told otherwise: a fresh webhookEventId, reply token and user.
    Indented rather than compact: a bridge must get the bytes as they were
    posted, whitespace and all.
    """
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "webhookEventId": event_id or "01HZ" + uuid.uuid4().hex[:22].upper(),
        "deliveryContext": {"isRedelivery": redelivery},
        "source": {"type": "user", "userId": user or new_user()},
        "replyToken": reply_token or uuid.uuid4().hex,
        "message": {"id": "1", "type": "text", "quoteToken": "q", "text": text},
    }
    return json.dumps({"destination": "U" + "f" * 32, "events": [event]}, indent=1).encode()


def new_user() -> str:
    """A LINE user id nobody else in the run has."""
    return "U" + uuid.uuid4().hex


def tag_of(frame: dict[str, Any]) -> str:
    """The text of a :func:`webhook_body` delivered in a webhook frame."""
    text: str = json.loads(frame["body"])["events"][0]["message"]["text"]
    return text
