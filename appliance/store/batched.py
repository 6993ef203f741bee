"""The loop-side front both stores share: group-committed operations (Batcher).

An operation is a future submitted to the batcher; the engine writes each batch
its own way (one SQLite transaction, one Redis pipeline) and resolves the
futures. What is the same for every engine lives here: the append's
bookkeeping (retry followers, the queue cap, depths), acks' early depth drop,
and the operations that are one submitted op and its awaited answer.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from appliance.errors import QueueFull
from appliance.store import ops
from appliance.store.batcher import Batcher
from appliance.store.futures import follow, resolved
from appliance.store.interface import BatchListener, CommitListener, Store
from appliance.store.records import (
    Delivery,
    Expired,
    Limits,
    Record,
    WebhookState,
    retry_digest,
)

#: The operations an engine's batches carry (the store's own, and any of the engine's).
OpT = TypeVar("OpT")


class BatchedStore(Store, Generic[OpT]):
    """A :class:`Store` whose operations go through one :class:`Batcher` on the loop."""

    def __init__(
        self,
        limits: Limits | None,
        on_batch: BatchListener | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or Limits()
        self._on_batch = on_batch
        self._clock = clock
        self._batcher: Batcher[OpT] = Batcher(self.limits.max_batch)
        self._drained = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[CommitListener] = []
        self._depth: defaultdict[str, int] = defaultdict(int)
        # Acks submitted and not yet committed: their rows are already out of the depth.
        self._acking: set[tuple[str, int]] = set()
        # Appends submitted but not yet committed, by digest: a concurrent
        # retry waits for the first copy instead of writing a second.
        self._writing: dict[bytes, asyncio.Future[Delivery | None]] = {}

    # -- what each engine does its own way --------------------------------------

    @abc.abstractmethod
    def _submit(self, op: ops.Op) -> None:
        """Hand ``op`` to the batcher, and have a flush scheduled if one is due."""

    def _known_retry(self, digest: bytes) -> bool:
        """Whether ``digest`` is a retry the store already holds, known without a write."""
        return False

    def _refusal(self) -> BaseException | None:
        """Why an append must fail at once, or None."""
        return None

    # -- the interface -----------------------------------------------------

    def configure(self, limits: Limits) -> None:
        self.limits = limits
        self._batcher.max_batch = limits.max_batch

    def append(
        self, tenant: str, body: bytes, signature: str, received_at: int
    ) -> asyncio.Future[Delivery | None]:
        assert self._loop is not None, "store is not open"
        digest = retry_digest(tenant, body, signature)
        if self._known_retry(digest):
            return resolved(self._loop, None)
        first = self._writing.get(digest)
        if first is not None:
            return follow(self._loop, first)
        refusal = self._refusal()
        if refusal is not None:
            failed: asyncio.Future[Delivery | None] = self._loop.create_future()
            failed.set_exception(refusal)
            return failed
        if self._depth[tenant] >= self.limits.queue_cap:
            raise QueueFull(f"tenant {tenant} has {self._depth[tenant]} unacked webhooks")
        future: asyncio.Future[Delivery | None] = self._loop.create_future()
        self._depth[tenant] += 1
        self._writing[digest] = future
        self._submit(ops.Append(tenant, body, signature, digest, received_at, future))
        return future

    async def pending(
        self, tenant: str, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Delivery]:
        future: asyncio.Future[list[Delivery]] = self._future()
        self._submit(ops.ReadPending(tenant, after, limit, max_bytes, future))
        return await future

    def mark_sent(self, seqs: Sequence[int]) -> None:
        if seqs:
            self._submit(ops.MarkSent(tuple(seqs)))

    def ack(self, tenant: str, seq: int) -> None:
        # The depth drops now, so an ack makes room under the cap at once; the
        # engine gives it back when the ack fails (or, in SQLite, turns out to
        # change nothing: a repeat).
        if (tenant, seq) in self._acking:
            return
        self._acking.add((tenant, seq))
        self._depth[tenant] -= 1
        self._submit(ops.Ack(tenant, seq))

    async def expire(self, older_than: int) -> list[Expired]:
        future: asyncio.Future[list[Expired]] = self._future()
        self._submit(ops.Expire(older_than, future))
        return await future

    async def prune(
        self, delivered_before: int, expired_before: int, expired_received_before: int | None = None
    ) -> int:
        future: asyncio.Future[int] = self._future()
        self._submit(
            self._prune_op(delivered_before, expired_before, expired_received_before, future)
        )
        return await future

    @staticmethod
    def _prune_op(
        delivered_before: int,
        expired_before: int,
        expired_received_before: int | None,
        future: asyncio.Future[int],
    ) -> ops.Prune:
        received_before = (
            expired_before if expired_received_before is None else expired_received_before
        )
        return ops.Prune(delivered_before, expired_before, received_before, future)

    async def records(
        self, tenant: str | None, state: WebhookState | None, limit: int
    ) -> list[Record]:
        future: asyncio.Future[list[Record]] = self._future()
        self._submit(ops.ReadRecords(tenant, state, limit, future))
        return await future

    async def record(self, delivery_id: str) -> tuple[Record, bytes, str] | None:
        future: asyncio.Future[tuple[Record, bytes, str] | None] = self._future()
        self._submit(ops.ReadRecord(delivery_id, future))
        return await future

    async def replay(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        future: asyncio.Future[list[Delivery]] = self._future()
        received_at = int(self._clock() * 1000)
        self._submit(ops.Replay(tuple(delivery_ids), received_at, future))
        return await future

    async def purge(self, tenant: str, received_before: int | None = None) -> int:
        future: asyncio.Future[int] = self._future()
        self._submit(ops.Purge(tenant, received_before, future))
        return await future

    def depth(self, tenant: str) -> int:
        return self._depth.get(tenant, 0)

    def depths(self) -> dict[str, int]:
        return {tenant: n for tenant, n in self._depth.items() if n > 0}

    def subscribe(self, on_commit: CommitListener) -> None:
        self._listeners.append(on_commit)

    # -- group commit --------------------------------------------------------

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None, "store is not open"
        return self._loop.create_future()

    def _batch_done(self) -> None:
        """After a batch is settled: flush the next one if it waits, else say drained."""
        if self._batcher.done():
            self._schedule_flush()
        elif self._batcher.idle:
            self._drained.set()

    @abc.abstractmethod
    def _schedule_flush(self) -> None:
        """Have the next batch written soon, on the loop."""
