"""The operations a store batches, as types: what each carries and who waits for it.

Writes the relay does not wait for (attempt marks, acks) carry no future;
everything else is answered through its future once its batch is settled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from appliance.store.records import Delivery, Expired, Record, WebhookState


@dataclass(slots=True)
class Append:
    """Queue a webhook; answered with its delivery once durable."""

    tenant: str
    body: bytes
    signature: str
    digest: bytes
    received_at: int
    future: asyncio.Future[Delivery | None]


@dataclass(slots=True)
class MarkSent:
    """One more attempt for each of these rows."""

    seqs: tuple[int, ...]


@dataclass(slots=True)
class Ack:
    """A bridge acked this row of this tenant."""

    tenant: str
    seq: int


@dataclass(slots=True)
class ReadPending:
    """A page of a tenant's unacked webhooks (see :meth:`Store.pending`)."""

    tenant: str
    after: int
    limit: int
    max_bytes: int | None
    future: asyncio.Future[list[Delivery]]


@dataclass(slots=True)
class Expire:
    """Mark unacked rows received before ``older_than`` (ms) expired."""

    older_than: int
    future: asyncio.Future[list[Expired]]
    #: For a store that expires a slice of its tenants at a time: where this slice
    #: starts ("0": the first), and once answered, where the next one does.
    cursor: str = "0"
    #: Set by such a store once answered: another slice is due.
    more: bool = False


@dataclass(slots=True)
class Prune:
    """Delete delivered rows acked before ``delivered_before`` (ms) and expired ones that
    expired before ``expired_before`` (see :meth:`Store.prune`)."""

    delivered_before: int
    expired_before: int
    #: Expired rows with no expiry time (stored before it was) go by receipt, before this.
    expired_received_before: int
    future: asyncio.Future[int]
    #: Set by a store that prunes a step at a time: another step is due.
    more: bool = False


@dataclass(slots=True)
class ReadRecords:
    """Stored webhooks, newest first (see :meth:`Store.records`)."""

    tenant: str | None
    state: WebhookState | None
    limit: int
    future: asyncio.Future[list[Record]]


@dataclass(slots=True)
class ReadRecord:
    """One stored webhook with its body and signature, or None."""

    delivery_id: str
    future: asyncio.Future[tuple[Record, bytes, str] | None]


@dataclass(slots=True)
class Replay:
    """Queue stored webhooks again (see :meth:`Store.replay`); all or nothing."""

    delivery_ids: tuple[str, ...]
    received_at: int
    future: asyncio.Future[list[Delivery]]


@dataclass(slots=True)
class Purge:
    """Delete a tenant's rows (received before ``received_before`` ms, if given)."""

    tenant: str
    received_before: int | None
    future: asyncio.Future[int]


Op = (
    Append
    | MarkSent
    | Ack
    | ReadPending
    | Expire
    | Prune
    | Purge
    | ReadRecords
    | ReadRecord
    | Replay
)
#: Reads and maintenance: run in the batch's transaction, answered through their future.
Query = ReadPending | Expire | Prune | Purge | ReadRecords | ReadRecord | Replay
