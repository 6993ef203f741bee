"""The durable per-tenant webhook queue: one interface, one implementation per engine.

- :mod:`~appliance.store.records`: what is stored and handed out (``Delivery``, ids).
- :mod:`~appliance.store.interface`: the :class:`Store` the relay is written against.
- :mod:`~appliance.store.ops` and :mod:`~appliance.store.batcher`: the typed
  operations and the group commit that batches them, as pure logic.
- :mod:`~appliance.store.sqlite`: one node, one SQLite file (the default).
- :mod:`~appliance.store.redis`: several processes and nodes on Redis Streams
  (imported only when configured: SQLite users do not pay for redis-py).

:func:`create_store` builds the one the config names; nothing else needs to know which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.store.futures import wait_until
from appliance.store.interface import BatchListener, CommitListener, OwnershipListener, Store
from appliance.store.records import (
    Delivery,
    Expired,
    Limits,
    Record,
    WebhookState,
    new_delivery_id,
    retry_digest,
)
from appliance.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from appliance.config import RelayConfig
    from appliance.state import StateDir

__all__ = [
    "BatchListener",
    "CommitListener",
    "Delivery",
    "Expired",
    "Limits",
    "OwnershipListener",
    "Record",
    "SQLiteStore",
    "Store",
    "WebhookState",
    "create_store",
    "new_delivery_id",
    "retry_digest",
    "store_limits",
    "wait_until",
]


def store_limits(config: RelayConfig) -> Limits:
    """The store's tunables from the relay config: what :meth:`Store.configure` is given
    on every reload, so each of them applies on reload."""
    return Limits(
        queue_cap=config.queue_cap,
        dedupe_window=config.dedupe_window,
        max_batch=config.commit_max_batch,
        min_replicas=config.redis_min_replicas,
        # Waiting for replicas longer than the ack deadline is pointless: by then
        # the webhook was answered 503.
        replica_wait_ms=config.ack_deadline_ms,
    )


def create_store(
    config: RelayConfig, state: StateDir, on_batch: BatchListener | None = None
) -> Store:
    """The store the config names (not yet opened)."""
    if config.store == "redis":
        from appliance.store.redis import RedisStore  # noqa: PLC0415 (redis-py only if used)

        return RedisStore(
            config.redis_url,
            store_limits(config),
            on_batch=on_batch,
            lease_ttl=config.redis_lease_ttl,
        )
    return SQLiteStore(state.store, store_limits(config), on_batch=on_batch)
