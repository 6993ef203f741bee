"""The bridge protocol's frames (PROTOCOL.md §2), without I/O.

Frames are UTF-8 JSON text frames holding one object with a ``type``.
:func:`decode` turns wire text into a frame object or raises
:class:`FrameError`; :func:`encode` does the reverse. Frames of a type this
version does not know decode to :class:`Unknown`, which both sides ignore, so
either side may add frame types without breaking the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1

#: The largest frame a bridge may send the relay. Bridges send only acks and
#: nacks, so anything near this is abuse, not traffic.
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
    """One stored webhook; ``body`` encodes (UTF-8) to the exact bytes LINE signed."""

    id: str
    tenant: str
    body: str
    signature: str
    received_at: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Ack:
    """The bridge has the webhook ``id`` durably; the relay may forget it."""

    id: str


@dataclass(frozen=True, slots=True)
class Nack:
    """The bridge could not take webhook ``id``; the relay redelivers it later."""

    id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed frame of a type this version does not know; ignored."""

    type: str


Frame = Hello | Webhook | Ack | Nack | Unknown


def encode(frame: Hello | Webhook | Ack | Nack) -> str:
    """The wire text of ``frame``."""
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
            obj = {
                "type": "webhook",
                "id": frame.id,
                "tenant": frame.tenant,
                "body": frame.body,
                "signature": frame.signature,
                "received_at": frame.received_at,
                "attempt": frame.attempt,
            }
        case Ack():
            obj = {"type": "ack", "id": frame.id}
        case Nack():
            obj = {"type": "nack", "id": frame.id, "reason": frame.reason}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


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
            return Ack(id=_str(obj, "id"))
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
            return Webhook(
                id=_str(obj, "id"),
                tenant=_str(obj, "tenant"),
                body=_str(obj, "body"),
                signature=_str(obj, "signature"),
                received_at=_int(obj, "received_at"),
                attempt=_int(obj, "attempt"),
            )
    return Unknown(type=kind)


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
