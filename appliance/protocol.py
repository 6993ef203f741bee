"""The bridge protocol's frames (PROTOCOL.md §2), both versions, without I/O.

Frames are UTF-8 JSON text frames holding one object with a ``type``.
:func:`decode` turns wire text into a frame object or raises
:class:`FrameError`; :func:`encode` does the reverse for a protocol version.
Frames of a type this version does not know decode to :class:`Unknown`,
which both sides ignore, so either side may add frame types without
breaking the other.

Protocol 2 (chosen with the ``linerelay.v2`` WebSocket subprotocol) batches:
consecutive webhooks of a tenant go in one ``webhooks`` frame, and an ``ack``
names a list of ids. In code an :class:`Ack` always holds a tuple of ids; on
the wire protocol 1 spells a one-id ack ``{"id": ...}`` and protocol 2
``{"ids": [...]}``. Either spelling is read in either protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
#: The protocols this code speaks, oldest first.
PROTOCOLS = (1, 2)
#: The WebSocket subprotocol a bridge offers to speak protocol 2.
SUBPROTOCOL_V2 = "linerelay.v2"

#: The largest frame a bridge may send the relay. Bridges send only acks and
#: nacks, so anything near this is abuse, not traffic (a protocol 2 ack of a
#: whole window of 256 ids is about 8 KiB).
MAX_BRIDGE_FRAME_BYTES = 16 * 1024

#: The longest ``nack`` reason kept; longer ones are truncated, not refused.
MAX_REASON_CHARS = 512


class FrameError(ValueError):
    """A frame that is not valid JSON, not an object, or lacks a required field."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on a connection: which tenant it serves and the in-flight window."""

    tenant: str
    window: int
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Webhook:
    """One stored webhook; ``body`` encodes (UTF-8) to the exact bytes LINE signed.

    ``replay``: an operator queued it again (PROTOCOL.md §7); on the wire
    ``"replay": true``, absent otherwise.
    """

    id: str
    tenant: str
    body: str
    signature: str
    received_at: int
    attempt: int
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Webhooks:
    """Protocol 2: consecutive webhooks of one tenant, in order of receipt."""

    items: tuple[Webhook, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """The bridge has these webhooks durably; the relay may forget them."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    """The bridge could not take webhook ``id``; the relay redelivers it later."""

    id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed frame of a type this version does not know; ignored."""

    type: str


Frame = Hello | Webhook | Webhooks | Ack | Nack | Unknown


def encode(frame: Hello | Webhook | Webhooks | Ack | Nack, protocol: int = 1) -> str:
    """The wire text of ``frame`` in ``protocol`` (1 or 2).

    Raises :class:`ValueError` for what protocol 1 cannot say: a ``webhooks``
    batch, or an ack of more or fewer than one id.
    """
    obj: dict[str, Any]
    match frame:
        case Hello():
            obj = {
                "type": "hello",
                "protocol": frame.protocol,
                "tenant": frame.tenant,
                "window": frame.window,
            }
        case Webhook():
            obj = {"type": "webhook", **_webhook(frame)}
        case Webhooks():
            if protocol < 2:
                raise ValueError("protocol 1 has no webhooks batches")
            obj = {"type": "webhooks", "items": [_webhook(item) for item in frame.items]}
        case Ack():
            if protocol >= 2:
                obj = {"type": "ack", "ids": list(frame.ids)}
            elif len(frame.ids) == 1:
                obj = {"type": "ack", "id": frame.ids[0]}
            else:
                raise ValueError("a protocol 1 ack names exactly one id")
        case Nack():
            obj = {"type": "nack", "id": frame.id, "reason": frame.reason}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _webhook(frame: Webhook) -> dict[str, Any]:
    obj = {
        "id": frame.id,
        "tenant": frame.tenant,
        "body": frame.body,
        "signature": frame.signature,
        "received_at": frame.received_at,
        "attempt": frame.attempt,
    }
    if frame.replay:
        obj["replay"] = True
    return obj


def decode(data: str | bytes) -> Frame:
    """Parse one frame; raises :class:`FrameError` when it is not a valid frame."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FrameError("frame is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("frame has no string 'type'")
    match kind:
        case "ack":
            return Ack(ids=_ack_ids(obj))
        case "nack":
            reason = obj.get("reason", "")
            if not isinstance(reason, str):
                raise FrameError("nack 'reason' is not a string")
            return Nack(id=_str(obj, "id"), reason=reason[:MAX_REASON_CHARS])
        case "hello":
            return Hello(
                tenant=_str(obj, "tenant"),
                window=_int(obj, "window"),
                protocol=_int(obj, "protocol"),
            )
        case "webhook":
            return _decode_webhook(obj)
        case "webhooks":
            items = obj.get("items")
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise FrameError("'items' must be a list of objects")
            return Webhooks(items=tuple(_decode_webhook(item) for item in items))
    return Unknown(type=kind)


def _ack_ids(obj: dict[str, Any]) -> tuple[str, ...]:
    if "ids" in obj:
        ids = obj["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise FrameError("'ids' must be a list of strings")
        return tuple(ids)
    return (_str(obj, "id"),)


def _decode_webhook(obj: dict[str, Any]) -> Webhook:
    return Webhook(
        id=_str(obj, "id"),
        tenant=_str(obj, "tenant"),
        body=_str(obj, "body"),
        signature=_str(obj, "signature"),
        received_at=_int(obj, "received_at"),
        attempt=_int(obj, "attempt"),
        # Only a JSON true is a replay; any other value is an unknown field's, ignored.
        replay=obj.get("replay") is True,
    )


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FrameError(f"'{key}' must be a string")
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    # bool is an int subclass; true is not a window size.
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f"'{key}' must be an integer")
    return value
