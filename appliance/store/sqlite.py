"""The single-node store: one SQLite file.

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

Rows stay after delivery (``state`` 1, with ``acked_at``) and after expiry
(``state`` 2, with ``expired_at``) until the housekeeping sweep prunes them,
``retain_delivered`` after their ack and ``retain_expired`` after their expiry,
so an operator can read and replay them. A replay is a new row copying the body
and signature, with ``replay_of`` naming the original.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import QueueFull, StoreError, UnknownWebhook
from appliance.state import create_private
from appliance.store import ops
from appliance.store.batched import BatchedStore
from appliance.store.interface import BatchListener
from appliance.store.records import (
    Delivery,
    Expired,
    Limits,
    Record,
    WebhookState,
    new_delivery_id,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Row states.
QUEUED, ACKED, EXPIRED = 0, 1, 2
_STATE_CODES = {
    WebhookState.QUEUED: QUEUED,
    WebhookState.DELIVERED: ACKED,
    WebhookState.EXPIRED: EXPIRED,
}
_STATES = {code: state for state, code in _STATE_CODES.items()}

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
    state INTEGER NOT NULL DEFAULT 0,
    acked_at INTEGER,
    replay_of TEXT,
    expired_at INTEGER
);
CREATE INDEX IF NOT EXISTS webhooks_queued ON webhooks (tenant, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks (received_at);
"""
# Stores from before delivery ids were opaque keep their rows' old ids.
_MIGRATE_IDS = """
ALTER TABLE webhooks ADD COLUMN id TEXT;
UPDATE webhooks SET id = 'd-' || printf('%012d', seq);
"""
# Stores from before retention: their rows get no ack time and are nobody's replay.
# Stores from before expiry times: their expired rows get none (prune counts those
# from receipt, see _PRUNE).
_MIGRATE_COLUMNS = {
    "acked_at": "ALTER TABLE webhooks ADD COLUMN acked_at INTEGER",
    "replay_of": "ALTER TABLE webhooks ADD COLUMN replay_of TEXT",
    "expired_at": "ALTER TABLE webhooks ADD COLUMN expired_at INTEGER",
}
_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS webhooks_id ON webhooks (id)"
# The operator's lists: a tenant's newest rows, and the (few) expired ones, are
# each one index walk however many delivered rows are retained.
_LIST_INDEXES = """
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks (tenant, seq);
CREATE INDEX IF NOT EXISTS webhooks_expired ON webhooks (seq) WHERE state = 2;
"""
# Retention clocks: the prune finds what is due by its ack or expiry time, one
# index search each, reading no row that stays. (Searched by received_at, every
# sweep would read again each row received before the horizon but acked or
# expired since: after an outage, the whole backlog.) An ack adds its entry at
# the index's end, where the batch's other acks add theirs: one page.
_RETENTION_INDEXES = """
CREATE INDEX IF NOT EXISTS webhooks_acked ON webhooks (acked_at) WHERE state = 1;
CREATE INDEX IF NOT EXISTS webhooks_expired_at ON webhooks (expired_at) WHERE state = 2;
"""
# One statement; each term one search of a retention index (the states, ACKED and
# EXPIRED, are constants, not parameters, so the planner may use the partial
# indexes). Rows with no ack or expiry time (from stores from before these were
# recorded: an IS NULL search) go by receipt.
_PRUNE = (
    "DELETE FROM webhooks WHERE (state = 1 AND acked_at < :delivered) "
    "OR (state = 1 AND acked_at IS NULL AND received_at < :delivered) "
    "OR (state = 2 AND expired_at < :expired) "
    "OR (state = 2 AND expired_at IS NULL AND received_at < :expired_received)"
)
_RECORD_COLUMNS = (
    "seq, id, tenant, state, received_at, attempts, length(body), acked_at, replay_of, expired_at"
)
# One search of the webhooks_queued index per tenant named (a JSON array): the
# head of each queue, however long the queues are.
_OLDEST = (
    "SELECT t.value, (SELECT received_at FROM webhooks WHERE tenant = t.value AND state = 0 "
    "ORDER BY seq LIMIT 1) FROM json_each(?) AS t"
)


class SQLiteStore(BatchedStore[ops.Op]):
    """:class:`Store` on one SQLite file: group commit on the loop, fsync on a helper thread."""

    def __init__(
        self,
        path: Path,
        limits: Limits | None = None,
        on_batch: BatchListener | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(limits, on_batch, clock)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._wal_fd = -1
        self._syncer: ThreadPoolExecutor | None = None
        # Checkpoints get their own thread: queued behind one, a batch's fsync
        # would wait for the database file's writes and fsync too.
        self._checkpoints: ThreadPoolExecutor | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._commits = 0
        # Digests of recent appends (retry dedupe), oldest first, with their times.
        self._recent: dict[bytes, float] = {}
        self._recent_order: deque[tuple[float, bytes]] = deque()

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

    async def close(self) -> None:
        """Finish queued work, checkpoint, and close the file."""
        if self._db is None:
            return
        while not self._batcher.idle:
            self._drained.clear()
            self._request_flush()
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

    def _known_retry(self, digest: bytes) -> bool:
        self._forget_old()
        return digest in self._recent

    async def expire(self, older_than: int) -> list[Expired]:
        expired = await super().expire(older_than)
        for row in expired:
            self._depth[row.tenant] = max(0, self._depth[row.tenant] - 1)
        return expired

    async def purge(self, tenant: str, received_before: int | None = None) -> int:
        count = await super().purge(tenant, received_before)
        self._depth[tenant] = max(0, self._depth[tenant] - count)
        return count

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

    # -- group commit --------------------------------------------------------

    def _submit(self, op: ops.Op) -> None:
        if self._batcher.submit(op):
            self._schedule_flush()

    def _request_flush(self) -> None:
        if self._batcher.request_flush():
            self._schedule_flush()

    def _schedule_flush(self, delay: float = 0.0) -> None:
        assert self._loop is not None, "store is not open"
        if delay:
            self._loop.call_later(delay, self._flush)
        else:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the next batch in one transaction, then have the WAL fsynced."""
        batch = self._batcher.take()
        if not batch:
            if self._batcher.idle:
                self._drained.set()
            return
        assert self._db is not None
        assert self._loop is not None
        assert self._syncer is not None
        started = time.perf_counter()
        try:
            results = self._commit(self._db, batch)
        except _Busy:
            # Another process holds the write lock (a CLI purge, a backup):
            # try again shortly; callers meanwhile meet their own deadlines.
            self._batcher.put_back(batch)
            self._schedule_flush(BUSY_RETRY)
            return
        if any(error is not None for _, _, error in results):
            self._finish(results, started)  # rolled back: nothing to make durable
            return
        synced = self._loop.run_in_executor(self._syncer, os.fsync, self._wal_fd)
        synced.add_done_callback(lambda done: self._synced(results, started, done))

    def _synced(self, results: list[_Result], started: float, done: asyncio.Future[None]) -> None:
        error = done.exception()
        if error is not None:
            # Committed but maybe not on disk: nobody is told it is. LINE's
            # retry of such a webhook is then a duplicate and answered 200.
            log.error("store fsync failed", extra={"error": str(error)})
            failure = StoreError(f"fsync failed: {error}")
            results = [
                (op, None, failure if isinstance(op, ops.Append | ops.Replay) else e)
                for op, _, e in results
            ]
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            assert self._checkpoints is not None
            self._checkpoints.submit(self._checkpoint)
        self._finish(results, started)

    def _finish(self, results: list[_Result], started: float) -> None:
        if self._on_batch is not None:
            self._on_batch(len(results), time.perf_counter() - started)
        self._settle(results)
        self._batch_done()

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

    def _settle(self, results: list[_Result]) -> None:
        """Runs on the loop after each batch: resolve futures, then tell listeners."""
        committed: list[Delivery] = []
        for op, result, failure in results:
            error = failure
            if isinstance(op, ops.Append):
                self._writing.pop(op.digest, None)
                if error is None:
                    assert isinstance(result, Delivery)
                    committed.append(result)
                    self._remember(op.digest, self._clock())
                else:
                    self._depth[op.tenant] -= 1
            elif isinstance(op, ops.Ack):
                self._acking.discard((op.tenant, op.seq))
                if not result or error is not None:
                    self._depth[op.tenant] += 1
            elif isinstance(op, ops.Replay) and isinstance(result, Exception):
                error = result  # refused (unknown id, full queue): nothing was written
            elif isinstance(op, ops.Replay) and error is None:
                for copy in result:
                    self._depth[copy.tenant] += 1
                committed.extend(result)
            if isinstance(op, ops.MarkSent | ops.Ack) or op.future.done():
                continue
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)
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
        # Pruned and purged bodies are zeroed in the file, not left in free pages
        # (bodies are personal data; a purge is an erasure request).
        db.execute("PRAGMA secure_delete=ON")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(webhooks)")}
        if "id" not in columns:
            db.executescript(_MIGRATE_IDS)
        for column, statement in _MIGRATE_COLUMNS.items():
            if column not in columns:
                db.execute(statement)
        db.execute(_ID_INDEX)
        db.executescript(_LIST_INDEXES)
        db.executescript(_RETENTION_INDEXES)
        return db

    def _load(self, db: sqlite3.Connection) -> tuple[dict[str, int], list[tuple[bytes, int]]]:
        depths = dict(
            db.execute("SELECT tenant, COUNT(*) FROM webhooks WHERE state = 0 GROUP BY tenant")
        )
        since = int((self._clock() - self.limits.dedupe_window) * 1000)
        recent = db.execute(
            # Replays are nobody's retry: their digests are not retry digests.
            "SELECT digest, received_at FROM webhooks WHERE received_at >= ? "
            "AND replay_of IS NULL ORDER BY received_at",
            (since,),
        ).fetchall()
        return depths, recent

    def _commit(self, db: sqlite3.Connection, batch: list[ops.Op]) -> list[_Result]:
        results: list[_Result] = []
        # Attempt marks and acks are gathered and written as one statement each
        # (most of the writer's time went on them one row at a time), and
        # written before any read in the batch, so reads see them.
        marks = _Marks(int(self._clock() * 1000))
        # Replays of this batch per tenant, not yet in the depths (counted at settle).
        replayed: Counter[str] = Counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                result: Any = None
                if isinstance(op, ops.MarkSent):
                    marks.sent.extend(op.seqs)
                elif isinstance(op, ops.Ack):
                    marks.acks.setdefault(op.tenant, []).append(op.seq)
                elif isinstance(op, ops.Append):
                    result = _insert(db, op)
                elif isinstance(op, ops.Replay):
                    marks.write(db)
                    result = self._replay(db, op, replayed)
                else:
                    marks.write(db)
                    result = _query(db, op, marks.now)
                results.append((op, result, None))
            marks.write(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                raise _Busy from exc
            log.error("store commit failed", extra={"error": str(exc), "batch": len(batch)})
            failure = StoreError(f"commit failed: {exc}")
            return [(op, None, failure) for op in batch]
        # An ack's result: whether it changed its row; of repeated acks, the first did.
        settled: list[_Result] = []
        for op, result, error in results:
            if isinstance(op, ops.Ack):
                key = (op.tenant, op.seq)
                settled.append((op, key in marks.acked, error))
                marks.acked.discard(key)
            else:
                settled.append((op, result, error))
        return settled

    def _replay(
        self, db: sqlite3.Connection, op: ops.Replay, replayed: Counter[str]
    ) -> list[Delivery] | UnknownWebhook | QueueFull:
        """Copy the rows ``op`` names as new queued rows; the refusal, if any, instead."""
        found = _originals(db, op.delivery_ids)
        missing = tuple(i for i in op.delivery_ids if i not in found)
        if missing:
            return UnknownWebhook(missing)
        wanted = Counter(found[i][0] for i in op.delivery_ids)
        for tenant, count in wanted.items():
            queued = self._depth[tenant] + replayed[tenant]
            if queued + count > self.limits.queue_cap:
                return QueueFull(f"tenant {tenant} has {queued} unacked webhooks")
        replayed.update(wanted)
        copies = []
        for original in op.delivery_ids:
            tenant, body, sig = found[original]
            wire_id = new_delivery_id()
            cursor = db.execute(
                "INSERT INTO webhooks (id, tenant, body, signature, digest, received_at, "
                "replay_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
                # Never a retry digest (those are 32 bytes): LINE's retries of the
                # original stay what they were, and the copy is nobody's retry.
                (
                    wire_id,
                    tenant,
                    body,
                    sig,
                    b"replay:" + wire_id.encode(),
                    op.received_at,
                    original,
                ),
            )
            assert cursor.lastrowid is not None
            copies.append(
                Delivery(cursor.lastrowid, wire_id, tenant, body, sig, op.received_at, 0, original)
            )
        return copies


# Each operation with its result (typed by the operation) or its error.
_Result = tuple[ops.Op, Any, BaseException | None]


def _originals(
    db: sqlite3.Connection, delivery_ids: Sequence[str]
) -> dict[str, tuple[str, bytes, str]]:
    """Tenant, body and signature of each stored row of ``delivery_ids``."""
    found: dict[str, tuple[str, bytes, str]] = {}
    unique = list(dict.fromkeys(delivery_ids))
    for chunk in _chunks(unique):
        rows = db.execute(
            f"SELECT id, tenant, body, signature FROM webhooks WHERE id IN ({_marks(chunk)})",  # noqa: S608
            chunk,
        )
        for wire_id, tenant, body, sig in rows:
            found[wire_id] = (tenant, bytes(body), sig)
    return found


def _insert(db: sqlite3.Connection, op: ops.Append) -> Delivery:
    wire_id = new_delivery_id()
    cursor = db.execute(
        "INSERT INTO webhooks (id, tenant, body, signature, digest, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (wire_id, op.tenant, op.body, op.signature, op.digest, op.received_at),
    )
    assert cursor.lastrowid is not None
    return Delivery(cursor.lastrowid, wire_id, op.tenant, op.body, op.signature, op.received_at)


def _query(db: sqlite3.Connection, op: ops.Query, now: int) -> object:
    """Run a read or maintenance operation; ``now`` (ms) is the batch's time."""
    if isinstance(op, ops.ReadPending):
        return _pending(db, op)
    if isinstance(op, ops.Expire):
        rows = db.execute(
            "UPDATE webhooks SET state = ?, expired_at = ? WHERE state = ? AND received_at < ? "
            "RETURNING seq, id, tenant, received_at",
            (EXPIRED, now, QUEUED, op.older_than),
        ).fetchall()
        return [Expired(*row) for row in rows]
    if isinstance(op, ops.Prune):
        cursor = db.execute(
            _PRUNE,
            {
                "delivered": op.delivered_before,
                "expired": op.expired_before,
                "expired_received": op.expired_received_before,
            },
        )
        return cursor.rowcount
    if isinstance(op, ops.ReadRecords):
        return _records(db, op)
    if isinstance(op, ops.ReadRecord):
        return _record(db, op.delivery_id)
    assert isinstance(op, ops.Purge)
    return _purge(db, op.tenant, op.received_before)


def _to_record(row: tuple[Any, ...]) -> Record:
    seq, wire_id, tenant, state, received_at, attempts, size, acked_at, replay_of, expired = row
    return Record(
        seq,
        wire_id,
        tenant,
        _STATES[state],
        received_at,
        attempts,
        size,
        acked_at,
        replay_of,
        expired,
    )


def _records(db: sqlite3.Connection, op: ops.ReadRecords) -> list[Record]:
    where: list[str] = []
    params: list[object] = []
    if op.tenant is not None:
        where.append("tenant = ?")
        params.append(op.tenant)
    if op.state is not None:
        # A constant, not a parameter: the planner picks the partial index for it.
        where.append(f"state = {_STATE_CODES[op.state]}")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = db.execute(
        f"SELECT {_RECORD_COLUMNS} FROM webhooks {clause}ORDER BY seq DESC LIMIT ?",  # noqa: S608
        (*params, op.limit),
    )
    return [_to_record(row) for row in rows]


def _record(db: sqlite3.Connection, delivery_id: str) -> tuple[Record, bytes, str] | None:
    row = db.execute(
        f"SELECT {_RECORD_COLUMNS}, body, signature FROM webhooks WHERE id = ?",  # noqa: S608
        (delivery_id,),
    ).fetchone()
    if row is None:
        return None
    return _to_record(row[:10]), bytes(row[10]), row[11]


def _pending(db: sqlite3.Connection, op: ops.ReadPending) -> list[Delivery]:
    last = None
    if op.max_bytes is not None:
        # Sizes first (length() does not read a blob), then only the bodies that fit.
        sizes = db.execute(
            "SELECT seq, length(body) FROM webhooks "
            "WHERE tenant = ? AND state = 0 AND seq > ? ORDER BY seq LIMIT ?",
            (op.tenant, op.after, op.limit),
        ).fetchall()
        total = 0
        for seq, size in sizes:
            if total >= op.max_bytes:
                break
            total += size
            last = seq
        if last is None:
            return []
    rows = db.execute(
        "SELECT seq, id, tenant, body, signature, received_at, attempts, replay_of FROM webhooks "
        "WHERE tenant = ? AND state = 0 AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        (op.tenant, op.after, last if last is not None else 2**62, op.limit),
    )
    return [Delivery(s, i, t, bytes(b), sig, r, a, p) for s, i, t, b, sig, r, a, p in rows]


@dataclass(slots=True)
class _Marks:
    """Attempt marks and acks of one batch, written as one statement each."""

    #: When (ms) this batch's acks are recorded as made.
    now: int
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
                    f"UPDATE webhooks SET state = {ACKED}, acked_at = ? "  # noqa: S608
                    f"WHERE state = {QUEUED} AND tenant = ? AND seq IN ({_marks(chunk)}) "
                    "RETURNING seq",
                    (self.now, tenant, *chunk),
                )
                self.acked.update((tenant, seq) for (seq,) in changed)
        self.sent.clear()
        self.acks.clear()


def _chunks(values: list[_T], size: int = 500) -> list[list[_T]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _marks(values: Sequence[object]) -> str:
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
        db.execute("PRAGMA secure_delete=ON")
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
