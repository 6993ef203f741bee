"""The bridge's durable queue: SQLite in the state dir, with event deduplication.

A webhook is acknowledged to the relay only after :meth:`Inbox.take` has
committed it here, so a bridge killed after its ack still answers after a
restart. ``take`` queues the bodies of a whole frame (a protocol 2 batch) in
one transaction, so one fsync covers them all and one ack can name them all;
it makes the dedupe decisions inside that transaction, body by body in order
(a body repeated later in the same batch is already known):

- a body already taken (same bytes, however the relay numbered it) adds nothing;
- an event whose key (``webhookEventId``, see :func:`bridge.events.dedupe_key`)
  was taken from a *different* body within the time-to-live is a duplicate
  and adds nothing; events sharing a key inside one body are all kept
  (LINE's SDK fixtures do that, and they are distinct events);
- every other event becomes one job.

A body an operator replayed (``"replay": true``, PROTOCOL.md §7) is processed
even where its events were seen: that is what a replay is for. Its identity is
its delivery id (the caller gives it a digest of its own), so the same replay
delivered twice, after a lost ack, adds nothing the second time.

Jobs are claimed one chat at a time, oldest first, so a chat's events are
answered in order while different chats run concurrently. A job that was
running when the process died is pending again at the next start; one that
was started :data:`MAX_STARTS` times is given up (it keeps killing the
process). The class is synchronous; the service runs it on one thread.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Starts after which a job that never finished is given up.
MAX_STARTS = 3

#: Pending jobs looked at per claim; enough to find a free chat behind busy ones.
CLAIM_SCAN = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bodies (
    digest TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL,
    idx INTEGER NOT NULL,
    event TEXT NOT NULL,
    chat TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    starts INTEGER NOT NULL DEFAULT 0,
    answer TEXT,
    reply_attempted INTEGER NOT NULL DEFAULT 0,
    retry_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (digest, idx)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
"""


class InboxError(Exception):
    """The queue could not be opened or written (disk full, I/O error, locked)."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One event of a webhook, ready to be queued."""

    index: int
    key: str
    chat: str
    event: str


@dataclass(frozen=True, slots=True)
class Body:
    """One webhook body to queue: its digest (its bytes' identity; a replay's names its
    delivery) and its events; ``replay`` skips the event dedupe."""

    digest: str
    events: Sequence[Incoming]
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`Inbox.take` did with a webhook body; ``seen`` counts the events of a
    replay that were seen before (queued all the same)."""

    queued: int
    duplicates: int
    known_body: bool
    seen: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    """A queued event being worked on."""

    id: int
    index: int
    event: str
    chat: str
    answer: str | None
    reply_attempted: bool
    retry_key: str
    starts: int


class Inbox:
    """The queue file ``STATE/inbox.sqlite3``."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the queue at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the relay hears the ack, even across power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise InboxError(f"cannot open the queue {path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def recover(self) -> int:
        """Make jobs left running by a dead process pending again; returns how many."""
        with self._tx():
            cur = self._db.execute("UPDATE jobs SET state='pending' WHERE state='running'")
        return cur.rowcount

    def take(self, bodies: Sequence[Body], ttl: float, now: float | None = None) -> list[Taken]:
        """Queue the events of ``bodies`` unless already seen, in one transaction that
        commits before returning; one :class:`Taken` per body, in order.

        Raises :class:`InboxError` when the transaction fails: then none of them is queued.
        """
        now = time.time() if now is None else now
        with self._tx():
            return [self._take(body, ttl, now) for body in bodies]

    def _take(self, body: Body, ttl: float, now: float) -> Taken:
        queued = duplicates = seen = 0
        row = self._db.execute(
            "SELECT 1 FROM bodies WHERE digest=? AND expires_at>?", (body.digest, now)
        ).fetchone()
        if row is not None:
            return Taken(0, 0, known_body=True)
        self._db.execute(
            "INSERT OR REPLACE INTO bodies (digest, expires_at) VALUES (?, ?)",
            (body.digest, now + ttl),
        )
        for item in body.events:
            owner = self._db.execute(
                "SELECT digest FROM seen WHERE key=? AND expires_at>?", (item.key, now)
            ).fetchone()
            if body.replay and owner is not None:
                # Processed again; the event stays its first body's, so LINE's own
                # redelivery of it is still a duplicate.
                seen += 1
            elif owner is not None and owner[0] != body.digest:
                duplicates += 1
                continue
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO seen (key, digest, expires_at) VALUES (?, ?, ?)",
                    (item.key, body.digest, now + ttl),
                )
            self._db.execute(
                "INSERT INTO jobs (digest, idx, event, chat, retry_key, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (body.digest, item.index, item.event, item.chat, str(uuid.uuid4()), now),
            )
            queued += 1
        return Taken(queued, duplicates, known_body=False, seen=seen)

    def claim(self, busy_chats: Collection[str]) -> Job | None:
        """The oldest pending job whose chat is not busy, now marked running; or ``None``.

        Jobs already started :data:`MAX_STARTS` times are marked failed and passed over.
        """
        with self._tx():
            rows = self._db.execute(
                "SELECT id, idx, event, chat, answer, reply_attempted, retry_key, starts"
                " FROM jobs WHERE state='pending' ORDER BY id LIMIT ?",
                (CLAIM_SCAN,),
            ).fetchall()
            blocked = set(busy_chats)
            for row in rows:
                job = Job(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])
                if job.chat and job.chat in blocked:
                    continue
                if job.starts >= MAX_STARTS:
                    self._db.execute("UPDATE jobs SET state='failed' WHERE id=?", (job.id,))
                    continue
                self._db.execute(
                    "UPDATE jobs SET state='running', starts=starts+1 WHERE id=?", (job.id,)
                )
                return Job(
                    job.id,
                    job.index,
                    job.event,
                    job.chat,
                    job.answer,
                    job.reply_attempted,
                    job.retry_key,
                    job.starts + 1,
                )
            return None

    def save_answer(self, job_id: int, answer: str) -> None:
        """Keep the model's answer, so a restart does not ask the model again."""
        with self._tx():
            self._db.execute("UPDATE jobs SET answer=? WHERE id=?", (answer, job_id))

    def mark_reply_attempted(self, job_id: int) -> None:
        """Record, before sending, that a reply may reach LINE (its reply token is single-use)."""
        with self._tx():
            self._db.execute("UPDATE jobs SET reply_attempted=1 WHERE id=?", (job_id,))

    def finish(self, job_id: int) -> None:
        """The job is done (answered, skipped or given up): drop it."""
        with self._tx():
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def release(self, job_id: int) -> None:
        """Put a running job back to pending (shutdown cut it short)."""
        with self._tx():
            self._db.execute(
                "UPDATE jobs SET state='pending' WHERE id=? AND state='running'", (job_id,)
            )

    def depth(self) -> int:
        """Jobs waiting or running."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')"
        ).fetchone()
        return int(row[0])

    def failed(self) -> int:
        """Jobs given up after :data:`MAX_STARTS` starts."""
        return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='failed'").fetchone()[0])

    def prune(self, now: float | None = None) -> int:
        """Forget dedupe entries past their time-to-live; returns how many rows went."""
        now = time.time() if now is None else now
        with self._tx():
            gone = self._db.execute("DELETE FROM seen WHERE expires_at<=?", (now,)).rowcount
            gone += self._db.execute("DELETE FROM bodies WHERE expires_at<=?", (now,)).rowcount
        return gone

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error; errors become :class:`InboxError`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise InboxError(f"queue unavailable: {exc}") from exc

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._db.execute("ROLLBACK")
                raise InboxError(f"queue commit failed: {error}") from error
            return
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise InboxError(f"queue write failed: {exc}") from exc
