"""The durable per-tenant webhook queue.

:class:`Store` is the interface the relay uses; :class:`SQLiteStore` is the
single-node implementation (a Redis Streams store for several relay nodes can
implement the same interface; tests/appliance/test_store.py is written against
the interface).

SQLite runs in WAL mode on the event loop's thread, and every operation that
arrives while the previous batch is being made durable goes into the next
**one transaction** (group commit): under load, many webhooks share one
fsync, and each is answered only after that fsync. The transaction itself is
quick (well under a millisecond for dozens of rows); only the fsync of the WAL
file runs on a helper thread. That split is measured: a writer thread doing
all the SQLite work kept taking the GIL from the event loop at every SQLite
call, costing the relay a large part of its throughput on one core (README,
"Performance"). Durability is that of ``synchronous=FULL``: SQLite writes the
WAL frames at COMMIT (``synchronous=NORMAL``) and the store fsyncs the WAL
file before any webhook in the batch is answered. Row ids (``seq``) never
repeat (AUTOINCREMENT) and order a tenant's queue; the delivery id a bridge
sees is a separate random token, so it says nothing about other tenants'
traffic (a global sequence would) and names one webhook forever.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import QueueFull, StoreError
from appliance.state import create_private

log = logging.getLogger(__name__)

DELIVERY_PREFIX = "d-"

# Row states.
QUEUED, ACKED, EXPIRED = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT,
    tenant TEXT NOT NULL,
    body BLOB NOT NULL,
    signature TEXT NOT NULL,
    digest BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_queued ON webhooks (tenant, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks (received_at);
"""
# Stores from before delivery ids were opaque keep their rows' old ids.
_MIGRATE_IDS = """
ALTER TABLE webhooks ADD COLUMN id TEXT;
UPDATE webhooks SET id = 'd-' || printf('%012d', seq);
"""
_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS webhooks_id ON webhooks (id)"
# One search of the webhooks_queued index per tenant named (a JSON array): the
# head of each queue, however long the queues are.
_OLDEST = (
    "SELECT t.value, (SELECT received_at FROM webhooks WHERE tenant = t.value AND state = 0 "
    "ORDER BY seq LIMIT 1) FROM json_each(?) AS t"
)


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

    ``attempts`` counts the times it was sent to a bridge.
    """

    seq: int
    id: str
    tenant: str
    body: bytes
    signature: str
    received_at: int
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Expired:
    """A webhook that outlived ``max_unacked_age`` unacked."""

    seq: int
    id: str
    tenant: str
    received_at: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The store's tunables (from the relay config; changeable on reload)."""

    queue_cap: int = 10_000
    dedupe_window: float = 300.0
    max_batch: int = 512


CommitListener = Callable[[Sequence[Delivery]], None]
BatchListener = Callable[[int, float], None]


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
    async def prune(self, older_than: int) -> int:
        """Delete acked and expired rows received before ``older_than`` (ms); returns the count."""

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
        """Call ``on_commit`` on the loop with each batch of newly committed webhooks."""


@dataclass(slots=True)
class _Op:
    kind: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None = None


class SQLiteStore(Store):
    """:class:`Store` on one SQLite file: group commit on the loop, fsync on a helper thread."""

    def __init__(
        self,
        path: Path,
        limits: Limits | None = None,
        on_batch: BatchListener | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits or Limits()
        self._on_batch = on_batch
        self._clock = clock
        self._pending: list[_Op] = []
        self._flush_scheduled = False
        self._syncing = False
        self._drained = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._wal_fd = -1
        self._syncer: ThreadPoolExecutor | None = None
        # Checkpoints get their own thread: queued behind one, a batch's fsync
        # would wait for the database file's writes and fsync too.
        self._checkpoints: ThreadPoolExecutor | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._commits = 0
        self._listeners: list[CommitListener] = []
        self._depth: defaultdict[str, int] = defaultdict(int)
        # Acks submitted and not yet committed: their rows are already out of the depth.
        self._acking: set[tuple[str, int]] = set()
        # Digests of recent appends (retry dedupe), oldest first, with their times.
        self._recent: dict[bytes, float] = {}
        self._recent_order: deque[tuple[float, bytes]] = deque()
        # Appends submitted but not yet committed, by digest: a concurrent
        # retry waits for the first copy instead of writing a second.
        self._writing: dict[bytes, asyncio.Future[Delivery | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file, load depths and recent digests."""
        self._loop = asyncio.get_running_loop()
        try:
            self._db = self._connect()
            depths, recent = self._load(self._db)
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            _fsync_directory(self.path.parent)  # the WAL file's name is durable too
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-fsync")
        self._checkpoints = ThreadPoolExecutor(1, thread_name_prefix="store-checkpoint")
        self._depth.update(depths)
        for digest, received_at in recent:
            self._remember(digest, received_at / 1000)

    def configure(self, limits: Limits) -> None:
        self.limits = limits

    async def close(self) -> None:
        """Finish queued work, checkpoint, and close the file."""
        if self._db is None:
            return
        while self._pending or self._syncing:
            self._drained.clear()
            self._schedule_flush()
            await self._drained.wait()
        assert self._syncer is not None
        assert self._checkpoints is not None
        self._syncer.shutdown(wait=True)
        self._checkpoints.submit(self._close_checkpointer).result()
        self._checkpoints.shutdown(wait=True)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            # A full disk, typically. Nothing is lost: the committed WAL is
            # replayed when the store opens again.
            log.warning("store: final checkpoint skipped", extra={"error": str(exc)})
        os.close(self._wal_fd)
        self._db.close()
        self._db = None

    # -- the interface -----------------------------------------------------

    def append(
        self, tenant: str, body: bytes, signature: str, received_at: int
    ) -> asyncio.Future[Delivery | None]:
        assert self._loop is not None, "store is not open"
        digest = retry_digest(tenant, body, signature)
        self._forget_old()
        if digest in self._recent:
            return _done(self._loop, None)
        first = self._writing.get(digest)
        if first is not None:
            return _follow(self._loop, first)
        if self._depth[tenant] >= self.limits.queue_cap:
            raise QueueFull(f"tenant {tenant} has {self._depth[tenant]} unacked webhooks")
        future: asyncio.Future[Delivery | None] = self._loop.create_future()
        self._depth[tenant] += 1
        self._writing[digest] = future
        self._submit(_Op("append", (tenant, body, signature, digest, received_at), future))
        return future

    async def pending(
        self, tenant: str, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Delivery]:
        result: list[Delivery] = await self._call("pending", tenant, after, limit, max_bytes)
        return result

    def mark_sent(self, seqs: Sequence[int]) -> None:
        if seqs:
            self._submit(_Op("sent", (tuple(seqs),)))

    def ack(self, tenant: str, seq: int) -> None:
        # The depth drops now, so an ack makes room under the cap at once; an
        # ack that turns out to change nothing (a repeat) gives it back.
        if (tenant, seq) in self._acking:
            return
        self._acking.add((tenant, seq))
        self._depth[tenant] -= 1
        self._submit(_Op("ack", (tenant, seq)))

    async def expire(self, older_than: int) -> list[Expired]:
        expired: list[Expired] = await self._call("expire", older_than)
        for row in expired:
            self._depth[row.tenant] = max(0, self._depth[row.tenant] - 1)
        return expired

    async def prune(self, older_than: int) -> int:
        count: int = await self._call("prune", older_than)
        return count

    async def purge(self, tenant: str, received_before: int | None = None) -> int:
        count: int = await self._call("purge", tenant, received_before)
        self._depth[tenant] = max(0, self._depth[tenant] - count)
        return count

    def depth(self, tenant: str) -> int:
        return self._depth.get(tenant, 0)

    def depths(self) -> dict[str, int]:
        return {tenant: n for tenant, n in self._depth.items() if n > 0}

    def oldest(self) -> dict[str, int]:
        assert self._db is not None, "store is not open"
        # Tenants whose depth is 0 have nothing to find: no search for them.
        queued = [tenant for tenant, n in self._depth.items() if n > 0]
        if not queued:
            return {}
        try:
            rows = self._db.execute(_OLDEST, (json.dumps(queued),)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the queues' oldest webhooks: {exc}") from exc
        return {tenant: received_at for tenant, received_at in rows if received_at is not None}

    def subscribe(self, on_commit: CommitListener) -> None:
        self._listeners.append(on_commit)

    # -- loop side -----------------------------------------------------------

    def _call(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        assert self._loop is not None, "store is not open"
        future: asyncio.Future[Any] = self._loop.create_future()
        self._submit(_Op(kind, args, future))
        return future

    # -- group commit --------------------------------------------------------

    def _submit(self, op: _Op) -> None:
        self._pending.append(op)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._syncing:
            assert self._loop is not None, "store is not open"
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is pending in one transaction, then have the WAL fsynced."""
        self._flush_scheduled = False
        if self._syncing:
            return
        if not self._pending:
            self._drained.set()
            return
        assert self._db is not None
        assert self._loop is not None
        assert self._syncer is not None
        size = self.limits.max_batch
        batch, self._pending = self._pending[:size], self._pending[size:]
        started = time.perf_counter()
        try:
            results = self._commit(self._db, batch)
        except _Busy:
            # Another process holds the write lock (a CLI purge, a backup):
            # try again shortly; callers meanwhile meet their own deadlines.
            self._pending[:0] = batch
            self._flush_scheduled = True
            self._loop.call_later(BUSY_RETRY, self._flush)
            return
        if any(error is not None for _, _, error in results):
            self._finish(results, started)  # rolled back: nothing to make durable
            return
        self._syncing = True
        synced = self._loop.run_in_executor(self._syncer, os.fsync, self._wal_fd)
        synced.add_done_callback(lambda done: self._synced(results, started, done))

    def _synced(
        self,
        results: list[tuple[_Op, Any, BaseException | None]],
        started: float,
        done: asyncio.Future[None],
    ) -> None:
        self._syncing = False
        error = done.exception()
        if error is not None:
            # Committed but maybe not on disk: nobody is told it is. LINE's
            # retry of such a webhook is then a duplicate and answered 200.
            log.error("store fsync failed", extra={"error": str(error)})
            failure = StoreError(f"fsync failed: {error}")
            results = [(op, None, failure if op.kind == "append" else e) for op, _, e in results]
        self._finish(results, started)
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            assert self._checkpoints is not None
            self._checkpoints.submit(self._checkpoint)
        if self._pending:
            self._schedule_flush()
        else:
            self._drained.set()

    def _finish(self, results: list[tuple[_Op, Any, BaseException | None]], started: float) -> None:
        if self._on_batch is not None:
            self._on_batch(len(results), time.perf_counter() - started)
        self._settle(results)

    def _checkpoint(self) -> None:
        """Move WAL pages into the database file, on the checkpoint thread (own connection)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("store checkpoint failed", extra={"error": str(exc)})

    def _close_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def _remember(self, digest: bytes, when: float) -> None:
        self._recent[digest] = when
        self._recent_order.append((when, digest))

    def _forget_old(self) -> None:
        horizon = self._clock() - self.limits.dedupe_window
        order = self._recent_order
        while order and order[0][0] < horizon:
            _, digest = order.popleft()
            if self._recent.get(digest, horizon) < horizon:
                del self._recent[digest]

    def _settle(self, results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        """Runs on the loop after each batch: resolve futures, then tell listeners."""
        committed: list[Delivery] = []
        for op, result, error in results:
            if op.kind == "append":
                tenant, _, _, digest, _ = op.args
                self._writing.pop(digest, None)
                if error is None:
                    committed.append(result)
                    self._remember(digest, self._clock())
                else:
                    self._depth[tenant] -= 1
            elif op.kind == "ack":
                self._acking.discard(op.args)
                if not result or error is not None:
                    self._depth[op.args[0]] += 1
            future = op.future
            if future is not None and not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
        if committed:
            for listener in self._listeners:
                listener(committed)

    # -- SQLite ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Bodies are personal data: the file is created private whatever the
        # umask, and SQLite gives its -wal and -shm files the same mode.
        create_private(self.path)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # The store fsyncs the WAL itself after each batch (see the module doc).
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run on the helper thread, not in a COMMIT on the loop.
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Never wait on the loop for another process's lock: fail the batch
        # (503) rather than stall every connection.
        db.execute("PRAGMA busy_timeout=0")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(webhooks)")}
        if "id" not in columns:
            db.executescript(_MIGRATE_IDS)
        db.execute(_ID_INDEX)
        return db

    def _load(self, db: sqlite3.Connection) -> tuple[dict[str, int], list[tuple[bytes, int]]]:
        depths = dict(
            db.execute("SELECT tenant, COUNT(*) FROM webhooks WHERE state = 0 GROUP BY tenant")
        )
        since = int((self._clock() - self.limits.dedupe_window) * 1000)
        recent = db.execute(
            "SELECT digest, received_at FROM webhooks WHERE received_at >= ? ORDER BY received_at",
            (since,),
        ).fetchall()
        return depths, recent

    def _commit(
        self, db: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        results: list[tuple[_Op, Any, BaseException | None]] = []
        # Attempt marks and acks are gathered and written as one statement each
        # (most of the writer's time went on them one row at a time), and
        # written before any read in the batch, so reads see them.
        marks = _Marks()
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                if op.kind == "sent":
                    marks.sent.extend(op.args[0])
                    result = None
                elif op.kind == "ack":
                    marks.acks.setdefault(op.args[0], []).append(op.args[1])
                    result = None
                else:
                    if op.kind != "append":
                        marks.write(db)
                    result = getattr(self, "_do_" + op.kind)(db, *op.args)
                results.append((op, result, None))
            marks.write(db)
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise _Busy from exc
            log.error("store commit failed", extra={"error": str(exc), "batch": len(batch)})
            failure = StoreError(f"commit failed: {exc}")
            return [(op, None, failure) for op in batch]
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("store commit failed", extra={"error": str(exc), "batch": len(batch)})
            failure = StoreError(f"commit failed: {exc}")
            return [(op, None, failure) for op in batch]
        # An ack's result: whether it changed its row; of repeated acks, the first did.
        settled: list[tuple[_Op, Any, BaseException | None]] = []
        for op, result, error in results:
            changed = result
            if op.kind == "ack":
                changed = op.args in marks.acked
                marks.acked.discard(op.args)
            settled.append((op, changed, error))
        return settled

    @staticmethod
    def _do_append(
        db: sqlite3.Connection,
        tenant: str,
        body: bytes,
        signature: str,
        digest: bytes,
        received_at: int,
    ) -> Delivery:
        wire_id = new_delivery_id()
        cursor = db.execute(
            "INSERT INTO webhooks (id, tenant, body, signature, digest, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (wire_id, tenant, body, signature, digest, received_at),
        )
        assert cursor.lastrowid is not None
        return Delivery(cursor.lastrowid, wire_id, tenant, body, signature, received_at)

    @staticmethod
    def _do_pending(
        db: sqlite3.Connection, tenant: str, after: int, limit: int, max_bytes: int | None
    ) -> list[Delivery]:
        last = None
        if max_bytes is not None:
            # Sizes first (length() does not read a blob), then only the bodies that fit.
            sizes = db.execute(
                "SELECT seq, length(body) FROM webhooks "
                "WHERE tenant = ? AND state = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (tenant, after, limit),
            ).fetchall()
            total = 0
            for seq, size in sizes:
                if total >= max_bytes:
                    break
                total += size
                last = seq
            if last is None:
                return []
        rows = db.execute(
            "SELECT seq, id, tenant, body, signature, received_at, attempts FROM webhooks "
            "WHERE tenant = ? AND state = 0 AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (tenant, after, last if last is not None else 2**62, limit),
        )
        return [Delivery(s, i, t, bytes(b), sig, r, a) for s, i, t, b, sig, r, a in rows]

    @staticmethod
    def _do_expire(db: sqlite3.Connection, older_than: int) -> list[Expired]:
        rows = db.execute(
            "UPDATE webhooks SET state = ? WHERE state = ? AND received_at < ? "
            "RETURNING seq, id, tenant, received_at",
            (EXPIRED, QUEUED, older_than),
        ).fetchall()
        return [Expired(*row) for row in rows]

    @staticmethod
    def _do_prune(db: sqlite3.Connection, older_than: int) -> int:
        cursor = db.execute(
            "DELETE FROM webhooks WHERE state != ? AND received_at < ?", (QUEUED, older_than)
        )
        return cursor.rowcount

    @staticmethod
    def _do_purge(db: sqlite3.Connection, tenant: str, received_before: int | None) -> int:
        return _purge(db, tenant, received_before)


@dataclass(slots=True)
class _Marks:
    """Attempt marks and acks of one batch, written as one statement each."""

    sent: list[int] = field(default_factory=list)
    acks: dict[str, list[int]] = field(default_factory=dict)
    #: (tenant, seq) of the rows the acks changed, over every write of the batch.
    acked: set[tuple[str, int]] = field(default_factory=set)

    def write(self, db: sqlite3.Connection) -> None:
        by_times: dict[int, list[int]] = {}
        for seq, times in Counter(self.sent).items():  # a row sent twice in one batch
            by_times.setdefault(times, []).append(seq)
        for times, seqs in by_times.items():
            for chunk in _chunks(seqs):
                db.execute(
                    f"UPDATE webhooks SET attempts = attempts + {times} "  # noqa: S608
                    f"WHERE seq IN ({_marks(chunk)})",
                    chunk,
                )
        for tenant, seqs in self.acks.items():
            for chunk in _chunks(seqs):
                changed = db.execute(
                    f"UPDATE webhooks SET state = {ACKED} "  # noqa: S608
                    f"WHERE state = {QUEUED} AND tenant = ? AND seq IN ({_marks(chunk)}) "
                    "RETURNING seq",
                    (tenant, *chunk),
                )
                self.acked.update((tenant, seq) for (seq,) in changed)
        self.sent.clear()
        self.acks.clear()


def _chunks(seqs: list[int], size: int = 500) -> list[list[int]]:
    return [seqs[i : i + size] for i in range(0, len(seqs), size)]


def _marks(values: list[int]) -> str:
    """``?, ?, ?``: placeholders only; the values go in as parameters."""
    return ", ".join("?" * len(values))


#: Commits between two checkpoints of the WAL into the database file.
CHECKPOINT_EVERY = 200
#: Seconds before a batch that found the database locked is tried again.
BUSY_RETRY = 0.005


class _Busy(Exception):
    """The write lock is held by another connection; the batch was rolled back."""


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _purge(db: sqlite3.Connection, tenant: str, received_before: int | None) -> int:
    before = received_before if received_before is not None else 2**62
    (unacked,) = db.execute(
        "SELECT COUNT(*) FROM webhooks WHERE tenant = ? AND state = ? AND received_at < ?",
        (tenant, QUEUED, before),
    ).fetchone()
    db.execute("DELETE FROM webhooks WHERE tenant = ? AND received_at < ?", (tenant, before))
    return int(unacked)


def purge_file(path: Path, tenant: str) -> int:
    """Delete every row of ``tenant`` from the store file at ``path`` (the operator CLI's
    ``tenant remove --force``); returns how many were unacked. Safe beside a running relay."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        count = _purge(db, tenant, None)
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        db.close()
    return count


def count_unacked(path: Path, tenant: str) -> int:
    """Unacked rows of ``tenant`` in the store file at ``path`` (for the operator CLI)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10)
    try:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM webhooks WHERE tenant = ? AND state = ?", (tenant, QUEUED)
        ).fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()
    return int(count)


async def wait_until(future: asyncio.Future[Any], timeout: float) -> bool:  # noqa: ASYNC109
    """Wait for ``future`` at most ``timeout`` seconds without cancelling it; True if done.

    Cheaper than ``wait_for(shield(...))`` on the hot path: no task is created.
    """
    if future.done():
        return True
    if timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
    return future.done()


def _done(loop: asyncio.AbstractEventLoop, value: Any) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_result(value)
    return future


def _follow(
    loop: asyncio.AbstractEventLoop, first: asyncio.Future[Delivery | None]
) -> asyncio.Future[Delivery | None]:
    """A future that settles when ``first`` does: None (a duplicate) or its error."""
    follower: asyncio.Future[Delivery | None] = loop.create_future()

    def copy(done: asyncio.Future[Delivery | None]) -> None:
        if follower.done():
            return
        if done.cancelled() or done.exception() is None:
            follower.set_result(None)
        else:
            follower.set_exception(done.exception())  # type: ignore[arg-type]

    first.add_done_callback(copy)
    return follower
