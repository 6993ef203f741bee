"""The store for several processes and nodes: Redis Streams (PROTOCOL.md §6).

Every relay process configured with the same Redis is one relay. Keys, under
a prefix (``linerelay:``):

=====================  ==========================================================
``q:TENANT``           stream: the tenant's queued (unacked) webhooks, entry id
                       ``SEQ-0``, fields ``i`` (delivery id), ``b`` (body bytes),
                       ``s`` (signature), ``r`` (received_at, ms); consumer group
                       ``relay``, one consumer per relay process
``seq``                counter: the next ``seq`` (never reused, like SQLite's rowid)
``att``                hash: seq → attempts (times sent to a bridge)
``dd:DIGEST``          retry detection: when (ms) that retry digest was stored,
                       expiring with the dedupe window
``r:SEQ``              hash: a delivered or expired webhook, kept until pruned,
                       with when it was acked (``at``) or expired (``xt``)
``delivered:TENANT``,  sorted sets of those records' seqs by received_at (the
``expired:TENANT``     operator's lists)
``retain:delivered``,  sorted sets of those seqs, every tenant's, by when they
``retain:expired``     were acked or expired: their retention's start (pruning)
``retain:indexed``     set once the records stored before ``retain:*`` existed
                       are in it; ``retain:cursors``: how far that got (PRUNE,
                       appliance/store/redis_lua.py)
``rq:TENANT``          sorted set: the queued webhooks' seqs by received_at (expiry)
``ids``                hash: delivery id → ``TENANT:SEQ`` (the operator's lookups)
``stored``             set: tenants with anything stored
``owner:TENANT``       the tenant's lease: ``PROCESS|CONNECTED_AT``, with a TTL
``owners``             channel: a tenant whose lease was taken or given up
``bell:PROCESS``       stream: wakes a process's reader when what it owns changes
=====================  ==========================================================

**Writes** go through the same group commit as SQLite's (appliance/store/batcher.py):
every operation that arrives while a batch is out goes into the next one, and
a batch is **one pipeline, one round trip**: one script call stores all its
webhooks (retry check, cap and XADD in one atomic step per webhook), then the
attempt marks, the acks and the reads. A webhook is answered 200 only after
Redis replied to that pipeline, that is (with ``appendfsync always``, see
docs/redis.md) after the AOF was fsynced; with ``redis_min_replicas = N``, after
``WAIT N`` too (``Limits.min_replicas``, so a reload changes it). An append the
replicas did not confirm in time fails (503) although the primary has it: it is
delivered all the same, and LINE's retry of it is a known retry.

**Delivery.** A tenant's webhooks are delivered by one process at a time, the
one holding the tenant's *lease* (``owner:TENANT``): the process where the
newest bridge connection of the tenant landed. Taking the lease takes over, in
the same atomic step, every entry pending on another process's consumer
(XAUTOCLAIM). The owner learns of new webhooks, whichever process stored them,
from one reader task: a blocking ``XREAD`` over the streams it owns (and its
bell), then ``XREADGROUP`` fenced by the lease in one script, so only the
lease holder moves a tenant's group forward and it sees every new entry, in
order, without gaps. A bridge's ack is ``XACK`` (and the entry moves out of
the queue into its retained record). Leases are renewed every third of
``lease_ttl``; a process that dies loses them when they lapse, and a standby
connection elsewhere takes over; a process whose bridge disconnects gives its
leases up at once. The hub learns of this through :meth:`watch_ownership`.

**Housekeeping** walks every stored tenant: the queue depths and heads every
``REFRESH_INTERVAL``, and the expiry sweep. A script holds Redis's one thread,
so each walk goes a slice of the tenants per call (SSCAN over ``stored``): no
call holds Redis more than a few milliseconds, however many tenants
(docs/redis.md, "What the periodic scripts cost").

**Redis unreachable.** The first failure marks the store down (one warning
line, :meth:`health` says why, ``linerelay_store_up`` is 0): appends fail at
once (503), acks, attempt marks, reads and leases wait, and a task pings with
backoff; when Redis answers again the waiting work is written, leases are
taken again and the reader resumes (one info line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from appliance.errors import QueueFull, StoreError, UnknownWebhook
from appliance.store import ops
from appliance.store.batched import BatchedStore
from appliance.store.interface import BatchListener, OwnershipListener
from appliance.store.records import (
    Delivery,
    Expired,
    Limits,
    Record,
    WebhookState,
    new_delivery_id,
)
from appliance.store.redis_lua import SCRIPTS

log = logging.getLogger(__name__)

PREFIX = "linerelay:"
#: Errors that mean Redis cannot be reached now (LOADING: restarting, replaying its AOF).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
#: Seconds between queue-depth refreshes (other processes change the queues too).
REFRESH_INTERVAL = 5.0
#: Stored tenants read per script call of a refresh (about: SSCAN's COUNT), and
#: walked per call of an expiry sweep. A script holds Redis's one thread, so a
#: pass over every tenant is cut into calls of a few milliseconds at most, and
#: other clients' commands run in between (docs/redis.md, "What the periodic
#: scripts cost").
HEADS_SLICE = 100
EXPIRE_SLICE = 200
#: Queued webhooks expired per call at most: a mass expiry is cut up too.
EXPIRE_BUDGET = 50
#: The reader's XREAD blocks at most this long (ms) before it looks again: a
#: connection that died silently is noticed.
READ_BLOCK_MS = 10_000
#: New entries taken per tenant per read.
READ_COUNT = 512
#: Retained records deleted per prune step.
PRUNE_STEP = 5000
#: Backoff between reconnection attempts, seconds.
RECONNECT_FIRST, RECONNECT_MAX = 0.1, 2.0
#: Seconds after Redis came back in which a failure is still the same outage: a
#: connection opened before it (a blocking read in flight) fails as it ends.
RELAPSE_WINDOW = 2.0
#: Socket timeouts, seconds: connecting, and waiting for an answer.
CONNECT_TIMEOUT, ANSWER_TIMEOUT = 2.0, 10.0
#: The longest WAIT for replicas (ms): well within ANSWER_TIMEOUT, whatever the
#: ack deadline, so waiting for replicas is never taken for Redis being gone.
MAX_REPLICA_WAIT_MS = int(ANSWER_TIMEOUT * 1000) // 2


@dataclass(slots=True)
class _Claim:
    """Take ``tenant``'s lease: ``insist`` (a bridge connected here now) or if free."""

    tenant: str
    connected_at: int
    insist: bool


@dataclass(slots=True)
class _Release:
    """Give ``tenant``'s lease up."""

    tenant: str


@dataclass(slots=True)
class _Heads:
    """Read the depths and heads of a slice of the stored tenants (HEADS) from
    ``cursor``; answered with the next cursor and the slice's tenants."""

    cursor: bytes
    future: asyncio.Future[tuple[bytes, list[str]]]


_Op = ops.Op | _Claim | _Release | _Heads
# Each operation with its result or its error.
_Result = tuple[_Op, Any, BaseException | None]


class RedisStore(BatchedStore[_Op]):
    """:class:`Store` on Redis Streams, shared by every process configured with it."""

    def __init__(
        self,
        url: str,
        limits: Limits | None = None,
        on_batch: BatchListener | None = None,
        clock: Callable[[], float] = time.time,
        lease_ttl: float = 10.0,
        prefix: str = PREFIX,
        name: str | None = None,
    ) -> None:
        super().__init__(limits, on_batch, clock)
        self.url = url
        self._wire_ids: list[str] = []
        # The replicas the batch being written waits for (limits may change
        # while it is out), and whether the last WAIT fell short (one warning
        # a shortage, not one a batch).
        self._replicas_needed = 0
        self._replicas_short = False
        self._replay_ids: dict[int, list[str]] = {}
        self.lease_ttl = lease_ttl
        self.prefix = prefix
        #: This process's consumer name and lease holder id: unique per start.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._ownership: list[OwnershipListener] = []
        self._head: dict[str, int] = {}
        # Leases: tenants held (with the connection time they were claimed
        # with), and tenants with a standby connection here, to take when free.
        self._owned: dict[str, int] = {}
        self._wanted: set[str] = set()
        # The reader's position per owned tenant (a stream entry id).
        self._cursors: dict[str, bytes] = {}
        self._bell = b"0-0"
        self._last_claim = 0
        # Health: None when Redis answers, else why not.
        self._down: str | None = "not opened"
        self._down_since = 0.0
        self._up_since = -RELAPSE_WINDOW
        self._up = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- keys ------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Connect, load the scripts, read queue depths; start the reader and lease tasks.

        Raises :class:`StoreError` if Redis cannot be reached: a relay does not
        start on a store it cannot use.
        """
        self._loop = asyncio.get_running_loop()
        common: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            # Fail fast: a request must not wait through retries (it is answered 503).
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=ANSWER_TIMEOUT, **common)
        # The blocking XREAD gets a connection of its own, with no answer timeout.
        self._reader = aioredis.Redis.from_url(
            self.url, socket_timeout=None, single_connection_client=True, **common
        )
        try:
            await self._load_scripts()
            await self._refresh()
        except (*UNREACHABLE, ResponseError) as exc:
            await self._close_clients()
            raise StoreError(f"cannot use Redis at {_safe_url(self.url)}: {exc}") from exc
        self._mark_up()
        for job in (
            self._read_loop(),
            self._lease_loop(),
            self._watch_owners(),
            self._refresh_loop(),
        ):
            self._spawn(job)

    async def close(self) -> None:
        """Finish queued work (or fail it, if Redis is down), give leases up, disconnect."""
        if self._redis is None:
            return
        self._closing = True
        if self._down is None:
            for tenant in list(self._owned):
                self._submit(_Release(tenant))
            self._owned.clear()
            self._request_flush()
        while not self._batcher.idle and self._down is None:
            self._drained.clear()
            self._request_flush()
            await self._drained.wait()
        self._fail_pending(StoreError("store closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*UNREACHABLE):
            await self._redis.delete(self._key("bell", self.name))
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self._redis, self._reader):
            if client is not None:
                with contextlib.suppress(*UNREACHABLE):
                    await client.aclose()
        self._redis = self._reader = None

    def health(self) -> str | None:
        return self._down

    # -- the interface -----------------------------------------------------

    def _refusal(self) -> BaseException | None:
        if self._down is not None:
            # Fail fast: never a 200 that Redis has not confirmed.
            return StoreError(f"Redis unreachable: {self._down}")
        return None

    async def expire(self, older_than: int) -> list[Expired]:
        # A slice of the tenants at a time (EXPIRE: one script call each, each in
        # a batch of its own): Redis, and this process's other writes, are served
        # in between. The hub hears of the pass's expiries when it ends, as before.
        expired: list[Expired] = []
        cursor = "0"
        while True:
            future: asyncio.Future[list[Expired]] = self._future()
            op = ops.Expire(older_than, future, cursor)
            self._submit(op)
            expired += await future
            if not op.more:
                return expired
            cursor = op.cursor

    async def prune(
        self, delivered_before: int, expired_before: int, expired_received_before: int | None = None
    ) -> int:
        # A step at a time (one script call each): Redis serves others in between.
        total = 0
        while True:
            future: asyncio.Future[int] = self._future()
            op = self._prune_op(delivered_before, expired_before, expired_received_before, future)
            self._submit(op)
            total += await future
            if not op.more:
                return total

    def oldest(self) -> dict[str, int]:
        # Kept up to date by every write's answer and refreshed every few
        # seconds; no round trip at scrape time (this runs on the loop).
        return {t: r for t, r in self._head.items() if r >= 0 and self._depth.get(t, 0) > 0}

    # -- ownership ---------------------------------------------------------------

    def watch_ownership(self, on_change: OwnershipListener) -> None:
        self._ownership.append(on_change)

    def claim(self, tenant: str) -> None:
        # Connection times in this process strictly increase: the newest wins.
        now = max(int(self._clock() * 1000), self._last_claim + 1)
        self._last_claim = now
        self._wanted.discard(tenant)
        self._owned[tenant] = now
        self._submit(_Claim(tenant, now, insist=True))

    def release(self, tenant: str) -> None:
        self._wanted.discard(tenant)
        self._cursors.pop(tenant, None)
        if self._owned.pop(tenant, None) is not None:
            self._submit(_Release(tenant))

    def owns(self, tenant: str) -> bool:
        return tenant in self._owned

    def _lost(self, tenant: str, why: str) -> None:
        """This process no longer holds ``tenant``'s lease: stand by, take it when free."""
        if self._owned.pop(tenant, None) is None:
            return
        self._cursors.pop(tenant, None)
        self._wanted.add(tenant)
        log.info("store: tenant lease lost", extra={"tenant": tenant, "why": why})
        for listener in self._ownership:
            listener(tenant, False)

    def _gained(self, tenant: str, connected_at: int, cursor: bytes) -> None:
        was_wanted = tenant in self._wanted
        self._wanted.discard(tenant)
        self._owned[tenant] = connected_at
        self._cursors[tenant] = cursor
        self._ring()
        if was_wanted:
            log.info("store: tenant taken over", extra={"tenant": tenant})
            for listener in self._ownership:
                listener(tenant, True)

    def _ring(self) -> None:
        """Wake the reader: the tenants it reads changed."""
        if self._redis is not None and self._down is None:
            self._spawn(self._ring_bell())

    async def _ring_bell(self) -> None:
        assert self._redis is not None
        bell = self._key("bell", self.name)
        with contextlib.suppress(*UNREACHABLE):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(bell, {"x": "1"}, maxlen=1)
                pipe.pexpire(bell, 86_400_000)
                await pipe.execute()

    # -- group commit --------------------------------------------------------

    def _spawn(self, job: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _submit(self, op: _Op) -> None:
        if self._batcher.submit(op) and self._down is None:
            self._schedule_flush()
        elif self._down is not None:
            # Written once Redis answers again (see _mark_up).
            self._batcher.scheduled = False

    def _request_flush(self) -> None:
        if self._down is None and self._batcher.request_flush():
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        assert self._loop is not None, "store is not open"
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch = self._batcher.take()
        if not batch:
            if self._batcher.idle:
                self._drained.set()
            return
        self._spawn(self._write(batch))

    async def _write(self, batch: list[_Op]) -> None:
        started = time.perf_counter()
        try:
            results = await self._execute(batch)
        except asyncio.CancelledError:
            raise
        except UNREACHABLE as exc:
            self._mark_down(exc)
            # Appends are answered now (503); the rest waits for Redis.
            failure = StoreError(f"Redis unreachable: {exc}")
            keep: list[_Op] = [op for op in batch if not isinstance(op, ops.Append)]
            self._settle([(op, None, failure) for op in batch if isinstance(op, ops.Append)])
            self._batcher.put_back(keep)
            self._batcher.scheduled = False
            return
        except Exception as exc:
            # A bug or a reply out of shape: fail the batch rather than hang it.
            log.exception("store: batch failed")
            failure = StoreError(f"batch failed: {exc}")
            results = [(op, None, failure) for op in batch]
        # A refresh's reads are not commits: a batch of them alone is not reported.
        size = sum(1 for op in batch if not isinstance(op, _Heads))
        if self._on_batch is not None and size:
            self._on_batch(size, time.perf_counter() - started)
        self._settle(results)
        self._batch_done()

    async def _execute(self, batch: list[_Op]) -> list[_Result]:
        """One pipeline for the batch; each operation's result, in batch order."""
        assert self._redis is not None
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                plan = self._plan(pipe, batch)
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                # Redis restarted or its scripts were flushed: load them, go again.
                await self._load_scripts()
                continue
            for reply in replies:
                if isinstance(reply, UNREACHABLE):
                    raise reply
            return self._unplan(plan, replies, batch)
        raise AssertionError("unreachable")  # pragma: no cover

    def _eval(self, pipe: Pipeline, script: str, *args: Any) -> None:
        pipe.execute_command("EVALSHA", SCRIPTS[script].sha, 0, self.prefix, *args)

    def _plan(self, pipe: Pipeline, batch: list[_Op]) -> list[tuple[str, list[_Op]]]:
        """Queue the batch's commands on ``pipe``; returns what each reply answers."""
        plan: list[tuple[str, list[_Op]]] = []
        # Leases, attempt marks and acks before the appends: an ack makes room
        # under the cap for the batch's appends.
        for op in batch:
            if isinstance(op, _Claim):
                mode = "insist" if op.insist else "free"
                ttl = int(self.lease_ttl * 1000)
                self._eval(pipe, "claim", op.tenant, self.name, op.connected_at, ttl, mode)
                plan.append(("claim", [op]))
            elif isinstance(op, _Release):
                self._eval(pipe, "release", op.tenant, self.name)
                plan.append(("release", [op]))
        marks = [seq for op in batch if isinstance(op, ops.MarkSent) for seq in op.seqs]
        if marks:
            self._eval(pipe, "mark_sent", *marks)
            plan.append(("mark_sent", [op for op in batch if isinstance(op, ops.MarkSent)]))
        acks = [op for op in batch if isinstance(op, ops.Ack)]
        if acks:
            pairs = [value for op in acks for value in (op.tenant, op.seq)]
            self._eval(pipe, "ack", int(self._clock() * 1000), *pairs)
            plan.append(("ack", list(acks)))
        appends = [op for op in batch if isinstance(op, ops.Append)]
        self._wire_ids = [new_delivery_id() for _ in appends]
        if appends:
            args: list[Any] = []
            for op, wire_id in zip(appends, self._wire_ids, strict=True):
                args += [op.tenant, op.digest.hex(), wire_id, op.body, op.signature, op.received_at]
            now = int(self._clock() * 1000)
            window = int(self.limits.dedupe_window * 1000)
            self._eval(pipe, "append", now, window, self.limits.queue_cap, *args)
            plan.append(("append", list(appends)))
            self._replicas_needed = self.limits.min_replicas
            if self._replicas_needed > 0:
                # Within the answer timeout, or a long WAIT would read as Redis gone.
                wait_ms = min(self.limits.replica_wait_ms, MAX_REPLICA_WAIT_MS)
                pipe.execute_command("WAIT", self._replicas_needed, wait_ms)
                plan.append(("wait", []))
        for op in batch:
            self._plan_query(pipe, op, plan)
        # Last: a refresh's reading is then newer than every other answer of the
        # batch, and is taken after them (_refresh).
        for op in batch:
            if isinstance(op, _Heads):
                self._eval(pipe, "heads", op.cursor, HEADS_SLICE)
                plan.append(("heads", [op]))
        return plan

    def _plan_query(self, pipe: Pipeline, op: _Op, plan: list[tuple[str, list[_Op]]]) -> None:
        """Queue the command of a read or maintenance operation (others: nothing)."""
        if isinstance(op, ops.ReadPending):
            limit = -1 if op.max_bytes is None else op.max_bytes
            self._eval(pipe, "pending", op.tenant, op.after, op.limit, limit)
            plan.append(("pending", [op]))
        elif isinstance(op, ops.Expire):
            now = int(self._clock() * 1000)
            self._eval(
                pipe, "expire", now, op.older_than, self.name, op.cursor,
                EXPIRE_SLICE, EXPIRE_BUDGET,
            )  # fmt: skip
            plan.append(("expire", [op]))
        elif isinstance(op, ops.Prune):
            self._eval(
                pipe, "prune", op.delivered_before, op.expired_before,
                op.expired_received_before, PRUNE_STEP,
            )  # fmt: skip
            plan.append(("prune", [op]))
        elif isinstance(op, ops.ReadRecords):
            state = "" if op.state is None else op.state.value
            self._eval(pipe, "records", op.tenant or "", state, op.limit)
            plan.append(("records", [op]))
        elif isinstance(op, ops.ReadRecord):
            self._eval(pipe, "record", op.delivery_id)
            plan.append(("record", [op]))
        elif isinstance(op, ops.Replay):
            wire = [new_delivery_id() for _ in op.delivery_ids]
            n = len(op.delivery_ids)
            self._eval(
                pipe, "replay", op.received_at, self.limits.queue_cap, n,
                *op.delivery_ids, *wire,
            )  # fmt: skip
            self._replay_ids[id(op)] = wire
            plan.append(("replay", [op]))
        elif isinstance(op, ops.Purge):
            before = -1 if op.received_before is None else op.received_before
            self._eval(pipe, "purge", op.tenant, before)
            plan.append(("purge", [op]))

    def _unplan(
        self, plan: list[tuple[str, list[_Op]]], replies: list[Any], batch: list[_Op]
    ) -> list[_Result]:
        """Each operation of ``batch`` with its result or error, from the pipeline's replies."""
        results: dict[int, _Result] = {}
        appends_failed: BaseException | None = None
        for (kind, covered), reply in zip(plan, replies, strict=True):
            if kind == "wait":
                appends_failed = self._replicas_answer(reply)
                continue
            if isinstance(reply, BaseException):
                log.error("store: Redis refused a command", extra={"kind": kind, "why": str(reply)})
                failure = StoreError(f"Redis {kind} failed: {reply}")
                for op in covered:
                    results[id(op)] = (op, None, failure)
                continue
            for op, result in self._decode(kind, covered, reply):
                results[id(op)] = (op, result, None)
        if appends_failed is not None:
            # Every append the script answered, stored or a known retry: neither
            # may be confirmed before the replicas have it (_settle_append).
            for key, (op, result, error) in list(results.items()):
                if isinstance(op, ops.Append) and error is None:
                    results[key] = (op, result, appends_failed)
        return [results.get(id(op), (op, None, None)) for op in batch]

    def _replicas_answer(self, reply: Any) -> StoreError | None:
        """What WAIT's ``reply`` means for the batch's appends: None if enough replicas
        have them; otherwise the error they fail with. Logs a shortage once, and its end."""
        needed = self._replicas_needed
        if not isinstance(reply, BaseException) and int(reply) >= needed:
            if self._replicas_short:
                self._replicas_short = False
                log.info("store: Redis replicas caught up", extra={"replicas": int(reply)})
            return None
        got = str(reply) if isinstance(reply, BaseException) else f"{int(reply)} replicas"
        if not self._replicas_short:
            self._replicas_short = True
            log.warning(
                "store: Redis replicas behind, webhooks answered 503",
                extra={"needed": needed, "got": got},
            )
        return StoreError(f"WAIT {needed}: {got} acknowledged in time")

    def _decode(self, kind: str, covered: list[_Op], reply: Any) -> list[tuple[_Op, Any]]:
        if kind == "append":
            out: list[tuple[_Op, Any]] = []
            for i, op in enumerate(covered):
                assert isinstance(op, ops.Append)
                seq, length = int(reply[2 * i]), int(reply[2 * i + 1])
                out.append((op, (seq, length, self._wire_ids[i])))
            return out
        if kind == "ack":
            changed = [int(flag) for flag in reply[: len(covered)]]
            self._heads(reply[len(covered) :])
            return list(zip(covered, changed, strict=True))
        if kind == "pending":
            op = covered[0]
            assert isinstance(op, ops.ReadPending)
            return [(op, [self._delivery(op.tenant, entry) for entry in reply])]
        if kind == "expire":
            op = covered[0]
            assert isinstance(op, ops.Expire)
            cursor, more, rows, heads = reply
            op.cursor, op.more = cursor.decode(), int(more) == 1
            self._heads(heads)
            expired = [
                Expired(int(seq), wire_id.decode(), tenant.decode(), int(received_at))
                for seq, wire_id, tenant, received_at in rows
            ]
            return [(op, expired)]
        if kind == "purge":
            self._heads(reply[1:])
            return [(covered[0], int(reply[0]))]
        if kind == "prune":
            op = covered[0]
            assert isinstance(op, ops.Prune)
            op.more = int(reply[1]) == 1
            return [(op, int(reply[0]))]
        if kind == "records":
            op = covered[0]
            assert isinstance(op, ops.ReadRecords)
            found = sorted((_record(item) for item in reply), key=lambda r: -r.seq)
            return [(op, found[: op.limit])]
        if kind == "record":
            op = covered[0]
            if reply is None:
                return [(op, None)]
            fields = _fields(reply[4])
            return [(op, (_record(reply), fields[b"b"], fields[b"s"].decode()))]
        if kind == "replay":
            op = covered[0]
            assert isinstance(op, ops.Replay)
            wire = self._replay_ids.pop(id(op))
            return [(op, self._replayed(op, wire, reply))]
        if kind == "heads":
            return [(covered[0], self._slice_heads(reply))]
        if kind == "claim":
            op = covered[0]
            assert isinstance(op, _Claim)
            return [(op, reply[1] if int(reply[0]) == 1 else None)]
        return [(op, reply) for op in covered]  # release, mark_sent

    def _replayed(
        self, op: ops.Replay, wire: list[str], reply: list[Any]
    ) -> list[Delivery] | UnknownWebhook | QueueFull:
        """The copies :data:`REPLAY` queued, or why it queued none."""
        if reply[0] == b"missing":
            return UnknownWebhook(tuple(raw.decode() for raw in reply[1:]))
        if reply[0] == b"full":
            return QueueFull(f"tenant {reply[1].decode()} has {int(reply[2])} unacked webhooks")
        copies = []
        for i, original in enumerate(op.delivery_ids):
            seq, length, raw_tenant, body, signature = reply[1 + i]
            tenant = raw_tenant.decode()
            self._depth[tenant] = int(length)
            copies.append(
                Delivery(
                    int(seq), wire[i], tenant, body, signature.decode(), op.received_at, 0, original
                )
            )
        return copies

    def _delivery(self, tenant: str, entry: list[Any]) -> Delivery:
        entry_id, raw, attempts = entry
        fields = _fields(raw)
        replay_of = fields.get(b"p")
        return Delivery(
            seq=int(entry_id.split(b"-")[0]),
            id=fields[b"i"].decode(),
            tenant=tenant,
            body=fields[b"b"],
            signature=fields[b"s"].decode(),
            received_at=int(fields[b"r"]),
            attempts=int(attempts),
            replay_of=None if replay_of is None else replay_of.decode(),
        )

    def _heads(self, flat: list[Any]) -> None:
        for i in range(0, len(flat), 3):
            tenant = flat[i].decode()
            self._depth[tenant] = int(flat[i + 1])
            self._head[tenant] = int(flat[i + 2])

    def _slice_heads(self, reply: list[Any]) -> tuple[bytes, list[str]]:
        """Take a HEADS reply's depths and heads; returns its next cursor and tenants."""
        cursor, names, numbers = reply
        values = numbers.split()
        tenants = []
        start = 0
        for i in range(0, len(values), 3):
            end = start + int(values[i])
            tenant = names[start:end].decode()
            start = end
            self._depth[tenant] = int(values[i + 1])
            self._head[tenant] = int(values[i + 2])
            tenants.append(tenant)
        return cursor, tenants

    def _settle(self, results: list[_Result]) -> None:
        """Runs on the loop after each batch: resolve futures, then tell listeners."""
        committed: list[Delivery] = []
        for op, result, error in results:
            if isinstance(op, ops.Append):
                self._writing.pop(op.digest, None)
                delivery = self._settle_append(op, result, error)
                if delivery is not None:
                    committed.append(delivery)
                continue
            if isinstance(op, ops.Ack):
                self._acking.discard((op.tenant, op.seq))
                if error is not None:
                    self._depth[op.tenant] += 1
                continue
            if isinstance(op, _Claim):
                self._settle_claim(op, result, error)
                continue
            if isinstance(op, ops.Replay) and error is None:
                if isinstance(result, Exception):  # UnknownWebhook or QueueFull: nothing queued
                    op.future.set_exception(result)
                    continue
                committed.extend(result)
            if isinstance(op, ops.MarkSent | _Release) or op.future.done():
                continue
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)
        # The tenants this process owns are told by the reader, in stream order
        # whoever stored them; the rest as they commit here.
        told = [d for d in committed if d.tenant not in self._owned]
        if told:
            for listener in self._listeners:
                listener(told)

    def _settle_append(
        self, op: ops.Append, result: Any, error: BaseException | None
    ) -> Delivery | None:
        """Resolve an append's future. ``error`` with a ``result``: the script answered
        but too few replicas confirmed it in time (:meth:`_replicas_answer`)."""
        if result is None:
            self._depth[op.tenant] -= 1
            op.future.set_exception(error or StoreError("no answer for this webhook"))
            return None
        seq, length, wire_id = result
        if seq <= 0:
            self._depth[op.tenant] -= 1
            if seq < 0:
                self._depth[op.tenant] = length
                op.future.set_exception(
                    QueueFull(f"tenant {op.tenant} has {length} unacked webhooks")
                )
            elif error is not None:
                op.future.set_exception(error)  # a known retry, the replicas behind
            else:
                op.future.set_result(None)  # a retry within the window
            return None
        if length == 1:
            self._head[op.tenant] = op.received_at
        # Other processes' appends count too: Redis' length is the depth.
        self._depth[op.tenant] = max(length, self._depth[op.tenant])
        if error is not None:
            # Queued on the primary all the same (and delivered from there like any
            # other: at least once), but not confirmed: the answer is a 503, and
            # LINE's retry of it is a known retry.
            op.future.set_exception(error)
            return None
        delivery = Delivery(seq, wire_id, op.tenant, op.body, op.signature, op.received_at)
        op.future.set_result(delivery)
        return delivery

    def _settle_claim(self, op: _Claim, result: Any, error: BaseException | None) -> None:
        tenant = op.tenant
        if error is not None:
            log.warning("store: lease not taken", extra={"tenant": tenant, "why": str(error)})
            return
        if not op.insist:
            # Taken because it was free: only if still wanted (not claimed since).
            if result is not None and tenant in self._wanted:
                self._gained(tenant, op.connected_at, result)
            elif result is not None and tenant not in self._owned:
                self._submit(_Release(tenant))  # nobody here needs it any more
            return
        if self._owned.get(tenant, op.connected_at) != op.connected_at:
            return  # a newer local claim is on its way
        if result is None:
            self._lost(tenant, "a newer bridge connection is served by another process")
        elif tenant in self._owned or tenant in self._wanted:
            self._gained(tenant, op.connected_at, result)
        else:
            self._submit(_Release(tenant))  # released while the claim was out

    def _fail_pending(self, error: StoreError) -> None:
        leftover = self._batcher.pending
        self._batcher.pending = []
        for op in leftover:
            if isinstance(op, ops.Append):
                self._writing.pop(op.digest, None)
            future = getattr(op, "future", None)
            if future is not None and not future.done():
                future.set_exception(error)
        self._drained.set()

    # -- health ----------------------------------------------------------------

    def _mark_down(self, exc: BaseException) -> None:
        if self._down is not None:
            return
        self._down = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        self._down_since = now
        self._up.clear()
        if now - self._up_since < RELAPSE_WINDOW:
            # The same outage for the operator: one warning an outage.
            log.info(
                "store: Redis unreachable again just after coming back", extra={"why": self._down}
            )
        else:
            log.warning("store: Redis unreachable", extra={"why": self._down})
        if not self._closing:
            self._spawn(self._reconnect())

    def _mark_up(self) -> None:
        was = self._down
        self._down = None
        self._up.set()
        if was != "not opened":
            log.info(
                "store: Redis reachable again",
                extra={"down_s": round(time.monotonic() - self._down_since, 1)},
            )
        if self._batcher.pending:
            self._request_flush()

    async def _reconnect(self) -> None:
        """Ping with backoff until Redis answers; then resume (see the module doc)."""
        delay = RECONNECT_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)
            try:
                # Connections from before the outage are dead: none may be reused.
                assert self._redis is not None
                await self._redis.connection_pool.disconnect()
                await self._load_scripts()
                await self._refresh()
            except (*UNREACHABLE, ResponseError):
                continue
            break
        # What was owned is taken again, as a take-over: another process may have
        # served the tenant meanwhile, so its bridge gets the unacked ones again,
        # in order. What was wanted is tried at the next lease tick.
        for tenant, connected_at in list(self._owned.items()):
            self._lost(tenant, "Redis was unreachable")
            self._batcher.pending.insert(0, _Claim(tenant, connected_at, insist=True))
        self._up_since = time.monotonic()
        self._mark_up()

    async def _load_scripts(self) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for script in SCRIPTS.values():
                pipe.script_load(script.body)
            await pipe.execute()

    async def _refresh(self) -> None:
        """Queue depths and heads of every stored tenant, as Redis has them, a slice
        of the tenants at a time (HEADS), and forget the tenants Redis no longer has.

        Each slice is read in a batch of the group commit, after the rest of it,
        and taken as it is decoded, as a write's answer is. Batches are written
        one at a time, so every write of this process answered before a slice is
        taken was done before it was read: a slice is never older than what this
        process knows from its own writes, and never undoes it (slices gathered
        and swapped in at the end would undo the writes answered since each was
        read). Writes answered after a slice are applied after it, as always; an
        append's depth is the larger of its answer and the depth here, so one in
        flight while its tenant is read is counted when it is answered.

        A tenant in no slice was not stored throughout the pass (SSCAN): one known
        here before the pass and left alone by this process since is gone (purged,
        by any node or the CLI) and is forgotten; one this process wrote to
        meanwhile stays, as its write's answer left it.
        """
        # Copies, not a loop: this runs on the loop, and there may be many tenants.
        depths, heads = dict(self._depth), dict(self._head)
        seen: set[str] = set()
        cursor = b"0"
        while True:
            # Each slice is awaited: the loop, and Redis, serve others in between.
            cursor, tenants = await self._heads_slice(cursor)
            seen.update(tenants)
            if cursor == b"0":
                break
        for tenant in (depths.keys() | heads.keys()) - seen:
            now = self._depth.get(tenant), self._head.get(tenant)
            if now == (depths.get(tenant), heads.get(tenant)):
                self._depth.pop(tenant, None)
                self._head.pop(tenant, None)

    async def _heads_slice(self, cursor: bytes) -> tuple[bytes, list[str]]:
        """One slice of a refresh: its tenants' depths and heads taken, the next cursor."""
        if self._down is None:
            future: asyncio.Future[tuple[bytes, list[str]]] = self._future()
            self._submit(_Heads(cursor, future))
            return await future
        # Opening, or Redis coming back: no batch is written meanwhile.
        assert self._redis is not None
        reply = await self._redis.evalsha(SCRIPTS["heads"].sha, 0, self.prefix, cursor, HEADS_SLICE)
        return self._slice_heads(reply)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            await self._up.wait()
            try:
                await self._refresh()
            except UNREACHABLE as exc:
                self._mark_down(exc)
            except (ResponseError, StoreError) as exc:
                log.warning("store: depth refresh failed", extra={"why": str(exc)})

    # -- the reader ------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Hand the owned tenants' new webhooks to the listeners, in order, as they come."""
        assert self._reader is not None
        bell = self._key("bell", self.name)
        while True:
            await self._up.wait()
            streams: dict[str, bytes] = {bell: self._bell}
            for tenant, cursor in self._cursors.items():
                streams[self._key("q", tenant)] = cursor
            try:
                got: Any = await self._reader.xread(streams, count=1, block=READ_BLOCK_MS)  # type: ignore[arg-type]
            except UNREACHABLE as exc:
                self._mark_down(exc)
                continue
            except ResponseError as exc:
                log.warning("store: read failed", extra={"why": str(exc)})
                await asyncio.sleep(RECONNECT_FIRST)
                continue
            woken: dict[str, bytes] = {}
            for key, entries in got or ():
                last = entries[-1][0]
                if key.decode() == bell:
                    self._bell = last
                else:
                    woken[key.decode()[len(self._key("q", "")) :]] = last
            if woken:
                await self._read_new(woken)

    async def _read_new(self, woken: dict[str, bytes]) -> None:
        """New entries of the ``woken`` tenants, fenced by their leases (see READ_NEW)."""
        assert self._redis is not None
        tenants = [t for t in woken if t in self._cursors]
        if not tenants:
            return
        try:
            reply = await self._redis.evalsha(
                SCRIPTS["read_new"].sha, 0, self.prefix, self.name, READ_COUNT, *tenants
            )
        except NoScriptError:
            await self._load_scripts()
            return
        except UNREACHABLE as exc:
            self._mark_down(exc)
            return
        for tenant_raw, status, *rest in reply:
            tenant = tenant_raw.decode()
            if tenant not in self._cursors:
                continue  # released meanwhile
            if status == b"lost":
                self._lost(tenant, "another process holds its lease")
                continue
            deliveries = [self._delivery(tenant, entry) for entry in rest[0]]
            last = deliveries[-1].seq if deliveries else 0
            seen = int(woken[tenant].split(b"-")[0])
            # Past what XREAD saw too: entries up to it are this group's already.
            self._cursors[tenant] = f"{max(last, seen)}-0".encode()
            if deliveries:
                for listener in self._listeners:
                    listener(deliveries)

    # -- leases ------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew the leases held; try to take the ones wanted, every third of the TTL."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            await self._up.wait()
            await self._tick()

    async def _tick(self) -> None:
        assert self._redis is not None
        owned = [t for t in self._owned if t in self._cursors]
        if owned:
            try:
                reply = await self._redis.evalsha(
                    SCRIPTS["renew"].sha,
                    0,
                    self.prefix,
                    self.name,
                    int(self.lease_ttl * 1000),
                    *owned,
                )
            except NoScriptError:
                await self._load_scripts()
                return
            except UNREACHABLE as exc:
                self._mark_down(exc)
                return
            for tenant, state in zip(owned, reply, strict=True):
                if int(state) != 1:
                    # Taken by another process, or lapsed: either way what this
                    # process sent may have been sent elsewhere since; start over.
                    self._lost(tenant, "lease taken" if int(state) == 0 else "lease lapsed")
        for tenant in list(self._wanted):
            self._submit(_Claim(tenant, 0, insist=False))

    async def _watch_owners(self) -> None:
        """Lease changes as they happen: re-check one lost, try for one given up."""
        channel = self._key("owners")
        while True:
            await self._up.wait()
            assert self._redis is not None
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    tenant = message["data"].decode()
                    if tenant in self._wanted:
                        self._submit(_Claim(tenant, 0, insist=False))
                    elif tenant in self._cursors:
                        self._spawn(self._check_lease(tenant))
            except UNREACHABLE as exc:
                self._mark_down(exc)
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    # Typed from redis-py 8.2 only: through Any, either way.
                    await cast(Any, pubsub).aclose()

    async def _check_lease(self, tenant: str) -> None:
        assert self._redis is not None
        try:
            owner: Any = await self._redis.get(self._key("owner", tenant))
        except UNREACHABLE as exc:
            self._mark_down(exc)
            return
        if tenant in self._cursors and not (owner or b"").startswith(f"{self.name}|".encode()):
            self._lost(tenant, "another process took its lease")


def _fields(raw: list[Any]) -> dict[bytes, Any]:
    """A stream entry's or a hash's flat field list as a dict."""
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def _record(item: list[Any]) -> Record:
    """A :class:`Record` from a RECORD or RECORDS reply item."""
    tenant, seq, state, attempts, raw = item
    fields = _fields(raw)
    size = fields.get(b"size")
    acked = fields.get(b"at")
    expired = fields.get(b"xt")
    replay_of = fields.get(b"p")
    return Record(
        seq=int(seq),
        id=fields[b"i"].decode(),
        tenant=tenant.decode(),
        state=WebhookState(state.decode()),
        received_at=int(fields[b"r"]),
        attempts=int(attempts),
        size=int(size) if size is not None else len(fields[b"b"]),
        acked_at=None if acked is None else int(acked),
        replay_of=None if replay_of is None else replay_of.decode(),
        expired_at=None if expired is None else int(expired),
    )


def _safe_url(url: str) -> str:
    """``url`` without a password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


# -- offline: the operator CLI, beside running relays ---------------------------


def count_unacked(url: str, tenant: str, prefix: str = PREFIX) -> int:
    """Unacked webhooks of ``tenant`` in the Redis at ``url`` (for the operator CLI).

    Raises :class:`StoreError` if Redis cannot be reached.
    """
    return int(_offline_call(url, "XLEN", f"{prefix}q:{tenant}"))


def purge_tenant(url: str, tenant: str, prefix: str = PREFIX) -> int:
    """Delete every webhook of ``tenant`` from the Redis at ``url`` (the operator CLI's
    ``tenant remove --force``); returns how many were unacked. Safe beside running
    relays: one atomic script, as a relay's own purge.

    Raises :class:`StoreError` if Redis cannot be reached or refuses the script.
    """
    reply = _offline_call(url, "EVAL", SCRIPTS["purge"].body, 0, prefix, tenant, -1)
    return int(reply[0])


def _offline_call(url: str, *command: object) -> Any:
    """One command on a short-lived synchronous connection (the CLI has no event loop)."""
    import redis  # noqa: PLC0415 (the synchronous client: only the CLI needs it)

    client = redis.Redis.from_url(
        url, socket_timeout=ANSWER_TIMEOUT, socket_connect_timeout=ANSWER_TIMEOUT
    )
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    except redis.RedisError as exc:
        raise StoreError(f"Redis at {_safe_url(url)}: {exc}") from exc
    finally:
        client.close()
