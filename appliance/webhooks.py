"""The operator's view of stored webhooks: list, show, read, replay, and erase a tenant's.

Webhooks are queued, delivered (a bridge acked them) or expired (none did in
``max_unacked_age``); delivered and expired ones are kept for
``retain_delivered`` and ``retain_expired`` (docs/operations.md,
"Retention"), then pruned. :class:`Webhooks` is what the admin JSON API, the
console and ``linerelay webhooks`` use: the running relay holds one as
``relay.webhooks``; on a stopped relay the CLI makes one over the store file.

A :class:`WebhookRecord` never holds the body or the signature: a body is
read only when asked for (:meth:`Webhooks.body`), since it is personal data.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import QueuedWebhooks, UnknownWebhook
from appliance.payload import event_types
from appliance.store import Record, Store, WebhookState

if TYPE_CHECKING:
    from appliance.hub import Hub

__all__ = ["MAX_LIST", "Purged", "WebhookRecord", "WebhookState", "Webhooks"]

log = logging.getLogger(__name__)

#: Most records one list returns.
MAX_LIST = 1000
#: Event types remembered by delivery id (bodies never change), so a console
#: polling its list does not read every body again.
EVENT_TYPES_CACHE = 4096
#: Bodies larger than this are not read to list their event types (``show``
#: still gives them): a list of large bodies would read megabytes on the event
#: loop. LINE's webhooks are a few kilobytes.
EVENT_TYPES_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """One webhook as an operator sees it; never the body or the signature."""

    id: str
    tenant: str
    state: WebhookState
    #: Unix ms; for a replay, when it was replayed.
    received_at: int
    #: Times sent to a bridge.
    attempts: int
    #: Body bytes.
    size: int
    #: Unix ms when a bridge acked it (delivered), else None.
    acked_at: int | None
    #: The delivery id it replays; None for LINE's own webhooks.
    replay_of: str | None
    #: The body's events' types, e.g. ("message", "follow"); in a list, () for a body
    #: over :data:`EVENT_TYPES_MAX_BODY` bytes.
    event_types: tuple[str, ...]
    #: Unix ms when the relay expired it (no bridge acked it in time), else None.
    expired_at: int | None = None

    @classmethod
    def of(cls, record: Record, types: tuple[str, ...]) -> WebhookRecord:
        """The operator's view of a store record whose body has ``types``."""
        return cls(
            record.id,
            record.tenant,
            record.state,
            record.received_at,
            record.attempts,
            record.size,
            record.acked_at,
            record.replay_of,
            types,
            record.expired_at,
        )

    def to_json(self) -> dict[str, Any]:
        """The admin API's JSON object for this record."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state.value,
            "received_at": self.received_at,
            "attempts": self.attempts,
            "size": self.size,
            "acked_at": self.acked_at,
            "expired_at": self.expired_at,
            "replay_of": self.replay_of,
            "event_types": list(self.event_types),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WebhookRecord:
        """A record from :meth:`to_json`'s object (the CLI reads the admin API's)."""
        return cls(
            str(obj["id"]),
            str(obj["tenant"]),
            WebhookState(obj["state"]),
            int(obj["received_at"]),
            int(obj["attempts"]),
            int(obj["size"]),
            None if obj.get("acked_at") is None else int(obj["acked_at"]),
            None if obj.get("replay_of") is None else str(obj["replay_of"]),
            tuple(str(t) for t in obj.get("event_types", ())),
            None if obj.get("expired_at") is None else int(obj["expired_at"]),
        )


@dataclass(frozen=True, slots=True)
class Purged:
    """What a tenant purge erased: every stored webhook of ``tenant``, ``queued`` of
    them not yet taken by a bridge."""

    tenant: str
    queued: int


class Webhooks:
    """Stored webhooks for operators, over a :class:`Store` (and the hub, when serving)."""

    def __init__(self, store: Store, hub: Hub | None = None) -> None:
        self.store = store
        self.hub = hub
        self._types: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    async def list(
        self, tenant: str | None = None, state: WebhookState | None = None, limit: int = 50
    ) -> list[WebhookRecord]:
        """Up to ``limit`` (at most :data:`MAX_LIST`) webhooks, newest first."""
        records = await self.store.records(tenant, state, max(1, min(limit, MAX_LIST)))
        # Bodies not yet seen are read together: one store batch, not one each.
        types = await asyncio.gather(*(self._event_types(r) for r in records))
        return [WebhookRecord.of(r, t) for r, t in zip(records, types, strict=True)]

    async def show(self, delivery_id: str) -> WebhookRecord:
        """The webhook ``delivery_id``; raises :class:`UnknownWebhook`."""
        record, body, _ = await self._read(delivery_id)
        return WebhookRecord.of(record, self._remember(delivery_id, event_types(body)))

    async def body(self, delivery_id: str) -> bytes:
        """The exact bytes LINE sent for ``delivery_id``; raises :class:`UnknownWebhook`."""
        _, body, _ = await self._read(delivery_id)
        return body

    async def replay(self, delivery_ids: Sequence[str]) -> builtins.list[str]:
        """Queue these webhooks again, byte-identical, with ``"replay": true``; the new
        delivery ids, same order. All or nothing: an unknown or pruned id raises
        :class:`UnknownWebhook` and nothing is queued; a full queue raises
        :class:`QueueFull`."""
        if not delivery_ids:
            return []
        copies = await self.store.replay(delivery_ids)
        for copy in copies:
            log.info(
                "webhook replayed",
                extra={"tenant": copy.tenant, "delivery": copy.id, "replay_of": copy.replay_of},
            )
        return [copy.id for copy in copies]

    async def purge(self, tenant: str, include_queued: bool = False) -> Purged:
        """Erase every stored webhook of ``tenant`` (an erasure request).

        Queued webhooks are lost with it, so unless ``include_queued`` a tenant
        with any raises :class:`QueuedWebhooks` and nothing is erased.
        """
        # Checked and submitted in one step of the loop: a webhook accepted after
        # the check is written after the purge, and survives it.
        queued = self.store.depth(tenant)
        if queued and not include_queued:
            raise QueuedWebhooks(tenant, queued)
        erased = await self.store.purge(tenant)
        self._types.clear()
        if erased and self.hub is not None:
            self.hub.reload(tenant)
        log.info("tenant purged", extra={"tenant": tenant, "queued_erased": erased})
        return Purged(tenant, erased)

    async def _read(self, delivery_id: str) -> tuple[Record, bytes, str]:
        found = await self.store.record(delivery_id)
        if found is None:
            raise UnknownWebhook(delivery_id)
        return found

    async def _event_types(self, record: Record) -> tuple[str, ...]:
        known = self._types.get(record.id)
        if known is not None:
            self._types.move_to_end(record.id)
            return known
        if record.size > EVENT_TYPES_MAX_BODY:
            return ()
        found = await self.store.record(record.id)
        return self._remember(record.id, event_types(found[1]) if found else ())

    def _remember(self, delivery_id: str, types: tuple[str, ...]) -> tuple[str, ...]:
        self._types[delivery_id] = types
        while len(self._types) > EVENT_TYPES_CACHE:
            self._types.popitem(last=False)
        return types
