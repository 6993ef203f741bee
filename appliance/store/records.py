"""What the store keeps and hands out: webhooks as records, their ids and retry digests.

Plain data, shared by every store implementation and by the hub.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

DELIVERY_PREFIX = "d-"


def new_delivery_id() -> str:
    """A fresh wire id: ``d-`` and 96 random bits, so it reveals nothing and never repeats."""
    return DELIVERY_PREFIX + secrets.token_hex(12)


def retry_digest(tenant: str, body: bytes, signature: str) -> bytes:
    """What makes two requests the same retry: tenant, exact bytes, the signature's digest.

    The signature counts by the digest it decodes to, not by its spelling:
    the unused low bits of the last base64 character give one digest four
    spellings, and a retry must not become a new webhook by changing them.
    """
    try:
        claimed = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        claimed = signature.encode()
    h = hashlib.sha256(tenant.encode())
    h.update(b"\0" + claimed + b"\0")
    h.update(body)
    return h.digest()


@dataclass(slots=True)
class Delivery:
    """One queued webhook: ``seq`` orders the queue, ``id`` is what a bridge sees.

    ``attempts`` counts the times it was sent to a bridge. ``replay_of`` is the
    delivery id an operator replayed (its frame then says ``"replay": true``);
    None for LINE's own webhooks.
    """

    seq: int
    id: str
    tenant: str
    body: bytes
    signature: str
    received_at: int
    attempts: int = 0
    replay_of: str | None = None


class WebhookState(StrEnum):
    """Where a stored webhook is: waiting for a bridge, acked by one, or given up."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Record:
    """A stored webhook without its body and signature: what an operator lists.

    ``size`` is the body's length in bytes; ``acked_at`` (ms) is set once a
    bridge acked it, ``expired_at`` (ms) once the relay expired it (None for a
    webhook expired before stores recorded it); ``received_at`` (ms) of a
    replay is when it was replayed. Retention counts from ``acked_at`` or
    ``expired_at`` (``Store.prune``).
    """

    seq: int
    id: str
    tenant: str
    state: WebhookState
    received_at: int
    attempts: int
    size: int
    acked_at: int | None
    replay_of: str | None
    expired_at: int | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """A webhook that outlived ``max_unacked_age`` unacked."""

    seq: int
    id: str
    tenant: str
    received_at: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The store's tunables (from the relay config; changeable on reload).

    ``min_replicas`` and ``replica_wait_ms`` are for a store with replicas
    (Redis: ``WAIT min_replicas replica_wait_ms`` after each batch's appends,
    and an append that fewer replicas confirmed in time fails); a store
    without replicas (SQLite) ignores them.
    """

    queue_cap: int = 10_000
    dedupe_window: float = 300.0
    max_batch: int = 512
    min_replicas: int = 0
    replica_wait_ms: int = 800
