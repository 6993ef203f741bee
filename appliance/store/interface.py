"""The store interface the relay needs: append with retry dedupe, per-tenant FIFO, acks, expiry,
and the operator's view: records kept after delivery or expiry, read back and replayed.

:class:`Store` is written against by the ingress, the hub and the tests
(tests/appliance/test_store.py runs the same behaviour against every
implementation). :func:`appliance.store.create_store` picks the configured one.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence

from appliance.store.records import Delivery, Expired, Limits, Record, WebhookState

CommitListener = Callable[[Sequence[Delivery]], None]
BatchListener = Callable[[int, float], None]
#: Called with a tenant and whether this process now serves its bridges (True)
#: or another process does (False); see :meth:`Store.claim`.
OwnershipListener = Callable[[str, bool], None]


class Store(abc.ABC):
    """The queue the relay needs: append with retry dedupe, per-tenant FIFO, acks, expiry.

    Coroutines run on the relay's event loop. ``append`` returns a future so
    the caller can answer by a deadline while the write goes on: a webhook
    that commits after its 503 is kept and delivered (LINE's retry of it is
    then a known duplicate).
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Start; load queue depths and recent digests."""

    @abc.abstractmethod
    def configure(self, limits: Limits) -> None:
        """Use new limits from now on (config reload)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and stop."""

    @abc.abstractmethod
    def append(
        self, tenant: str, body: bytes, signature: str, received_at: int
    ) -> asyncio.Future[Delivery | None]:
        """Queue a webhook. The future gives the delivery once committed, or None for a retry.

        Raises :class:`QueueFull` at once when the tenant is at its cap; the
        future fails with :class:`StoreError` if the commit fails.
        """

    @abc.abstractmethod
    async def pending(
        self, tenant: str, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Delivery]:
        """Up to ``limit`` unacked webhooks of ``tenant`` with ``seq > after``, oldest first.

        With ``max_bytes``, the page ends with the webhook whose body takes it
        to that many bytes or past (so it holds at least one), and a queue of
        large bodies is read back in pages of bounded memory. A page shorter
        than ``limit`` and under ``max_bytes`` is therefore the end of the queue.
        """

    @abc.abstractmethod
    def mark_sent(self, seqs: Sequence[int]) -> None:
        """Record one more attempt for each row (written with the next batch)."""

    @abc.abstractmethod
    def ack(self, tenant: str, seq: int) -> None:
        """Mark the row delivered (written with the next batch); unknown and already
        acked rows are ignored, so an ack may safely be repeated."""

    @abc.abstractmethod
    async def expire(self, older_than: int) -> list[Expired]:
        """Mark unacked rows received before ``older_than`` (ms) expired; returns them."""

    @abc.abstractmethod
    async def prune(
        self, delivered_before: int, expired_before: int, expired_received_before: int | None = None
    ) -> int:
        """Delete delivered rows acked before ``delivered_before`` (ms) and expired ones
        that expired before ``expired_before``; returns the count. Queued rows are never
        pruned.

        Each clock starts when the row stopped being queued, not at receipt: a
        webhook acked or expired late (after a long outage) is still kept its whole
        retention. Rows from before the store recorded those times count from
        receipt: a delivered row with no ack time goes once received before
        ``delivered_before``, an expired row with no expiry time once received
        before ``expired_received_before`` (default ``expired_before``; the relay
        passes ``max_unacked_age`` less, when such a row expired if the relay ran).
        """

    @abc.abstractmethod
    async def records(
        self, tenant: str | None, state: WebhookState | None, limit: int
    ) -> list[Record]:
        """Up to ``limit`` stored webhooks, newest first, of ``tenant`` and in ``state``
        (None: any)."""

    @abc.abstractmethod
    async def record(self, delivery_id: str) -> tuple[Record, bytes, str] | None:
        """The webhook ``delivery_id``: its record, body and signature; None if unknown
        or pruned."""

    @abc.abstractmethod
    async def replay(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        """Queue these webhooks again for their tenants; the new deliveries, same order.

        Each copy has the same body and signature, a new id, ``replay_of`` set and
        ``received_at`` now; it is not subject to retry dedupe but is to the queue
        cap (:class:`QueueFull`), is committed with the next batch and is given to
        commit listeners like any new webhook. All or nothing: an id unknown or
        pruned raises :class:`UnknownWebhook` and nothing is queued.
        """

    @abc.abstractmethod
    async def purge(self, tenant: str, received_before: int | None = None) -> int:
        """Delete the rows of ``tenant`` (received before ``received_before`` ms, if
        given); returns how many of them were still unacked."""

    @abc.abstractmethod
    def depth(self, tenant: str) -> int:
        """Unacked webhooks of ``tenant`` (committed or being committed)."""

    @abc.abstractmethod
    def depths(self) -> dict[str, int]:
        """Unacked webhooks per tenant with any."""

    @abc.abstractmethod
    def oldest(self) -> dict[str, int]:
        """When (ms) the oldest committed unacked webhook of each tenant with any was received.

        Read at every metrics scrape, so it costs one index search per tenant
        with something queued. Raises :class:`StoreError` if the store cannot
        be read.
        """

    @abc.abstractmethod
    def subscribe(self, on_commit: CommitListener) -> None:
        """Call ``on_commit`` on the loop with each batch of newly committed webhooks.

        Each tenant's webhooks come in order of ``seq``. A store shared by
        several processes gives a process the webhooks of the tenants it
        serves (:meth:`claim`), whichever process committed them, and those it
        commits itself for any other tenant.
        """

    # -- several processes: who serves a tenant's bridges ----------------------
    # A store of one process serves every tenant here: these defaults say so.

    def claim(self, tenant: str) -> None:  # noqa: B027 (a store of one process: nothing to do)
        """A bridge of ``tenant`` just connected to this process: serve it from here.

        The newest connection anywhere wins: a store shared by several
        processes takes the tenant over from whichever served it (its
        connections stand by), and tells this process's ownership listeners
        with ``(tenant, False)`` if a newer connection elsewhere wins instead.
        """

    def release(self, tenant: str) -> None:  # noqa: B027 (idem)
        """No bridge of ``tenant`` is connected to this process any more."""

    def watch_ownership(self, on_change: OwnershipListener) -> None:  # noqa: B027 (idem)
        """Call ``on_change(tenant, serving)`` when a tenant this process claimed is
        taken by another process (False), or when one it lost is free again and
        taken back for its standby connections here (True)."""

    def health(self) -> str | None:
        """None while the store is usable; otherwise why not (for ``/readyz``)."""
        return None
