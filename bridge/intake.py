"""What happens to a webhook frame before it is queued, without I/O.

:func:`prepare` verifies the signature over the exact bytes (the frame's
``body`` encoded as UTF-8) with the channel secret (or, after a rotation, the
previous one), splits the body into its
events and gives each its dedupe key and chat. A frame that fails here is
still acknowledged (redelivering it could never make it pass) but nothing
in it is acted on: a bad signature is a security event, a malformed body a
plain error; both are counted by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.protocol import Webhook
from appliance.signature import verify
from bridge.events import MalformedWebhook, body_digest, chat_key, dedupe_key, split_body
from bridge.inbox import Incoming


@dataclass(frozen=True, slots=True)
class Prepared:
    """A verified webhook: its identity for the inbox (its body digest; a replay's also
    names its delivery) and its events, ready for the inbox."""

    digest: str
    events: list[Incoming]
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """A webhook to acknowledge and drop; ``security`` marks a signature mismatch."""

    reason: str
    security: bool


def prepare(frame: Webhook, channel_secret: str, previous_secret: str = "") -> Prepared | Refused:
    """Verify and split ``frame``'s body; ``previous_secret``, when given, verifies too."""
    body = frame.body.encode("utf-8")
    if not verify(channel_secret.encode("utf-8"), body, frame.signature) and not (
        previous_secret and verify(previous_secret.encode("utf-8"), body, frame.signature)
    ):
        return Refused("signature mismatch", security=True)
    try:
        events = split_body(body)
    except MalformedWebhook as exc:
        return Refused(str(exc), security=False)
    digest = body_digest(body)
    # A replay is its own webhook to the inbox (its delivery names it), though its
    # events keep the keys of the body it copies.
    identity = f"{digest}:replay:{frame.id}" if frame.replay else digest
    items = []
    for index, raw in enumerate(events):
        chat = chat_key(raw) or f"event:{digest}:{index}"
        items.append(
            Incoming(
                index=index,
                key=dedupe_key(raw, digest, index),
                chat=chat,
                event=json.dumps(raw, ensure_ascii=False, separators=(",", ":")),
            )
        )
    return Prepared(identity, items, frame.replay)
