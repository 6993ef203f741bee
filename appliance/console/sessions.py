"""The admin token and the console's login sessions, in ``STATE/console.db``.

The admin token is stored only as its SHA-256 digest (:func:`appliance.tenants.hash_token`,
as bridge tokens are): 256 random bits need no slow hash. ``linerelay admin-token``
writes it; a running relay reads it through SQLite's ``data_version``, so a new token
applies to the very next request, without a restart or a signal.

A session is a random cookie value mapped to a row here, stored as its digest too. The
file, not the process's memory, holds them, so every relay process serving the state
dir (``serve --workers``) knows a login, a logout ends it everywhere, and a restart
logs nobody out. A session remembers the digest of the admin token it logged in with:
setting a new token ends every session at once. Sessions also carry the CSRF token
that every console form posts back.

Wrong admin tokens are counted here too, per client address (a
:class:`appliance.limits.TokenBucket` per row), so the lockout holds for every
process of ``serve --workers`` together and across a restart. The rows keep wall-clock
seconds: processes share no monotonic clock.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.limits import TokenBucket
from appliance.state import create_private
from appliance.tenants import hash_token

#: A login lasts this long (then the operator logs in again).
SESSION_SECONDS = 12 * 3600
#: Sessions kept at most; the oldest go first. Anonymous sessions (loopback, for CSRF
#: only) are made per browser, not per request, so this is plenty.
MAX_SESSIONS = 1000
#: Client addresses with wrong-token counts kept at most; past it the ones nearest to
#: being forgiven go first. Rows go once their bucket is full again (a minute after a
#: lockout), so only an attacker cycling addresses ever comes near this.
MAX_FAILURE_ROWS = 10_000
#: The admin token's recognisable prefix.
ADMIN_TOKEN_PREFIX = "lra_"  # noqa: S105 (a public prefix, not a secret)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS admin_token (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        digest BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        digest BLOB PRIMARY KEY,
        csrf TEXT NOT NULL,
        token_digest BLOB,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    )""",
    # One token bucket per client address (appliance.limits.address_key); times are
    # Unix seconds. full_at (when the bucket is full again) finds the rows to forget.
    """CREATE TABLE IF NOT EXISTS admin_failures (
        client TEXT PRIMARY KEY,
        tokens REAL NOT NULL,
        updated REAL NOT NULL,
        full_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS admin_failures_full_at ON admin_failures (full_at)",
)


@dataclass(frozen=True, slots=True)
class Session:
    """One console session; its cookie value is never kept, only its digest."""

    digest: bytes = field(repr=False)
    csrf: str = field(repr=False)
    #: The admin token's digest it logged in with; None: anonymous (loopback, CSRF only).
    token_digest: bytes | None = field(repr=False)
    expires_at: int  # Unix ms

    def logged_in_with(self, admin_digest: bytes | None) -> bool:
        """Whether this session logged in with the admin token whose digest is ``admin_digest``."""
        return (
            admin_digest is not None
            and self.token_digest is not None
            and secrets.compare_digest(self.token_digest, admin_digest)
        )


def new_admin_token() -> str:
    """A fresh admin token: a recognisable prefix and 256 random bits."""
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def now_ms() -> int:
    """The wall clock in Unix milliseconds."""
    return int(time.time() * 1000)


class ConsoleDB:
    """``STATE/console.db``: the admin token's digest, the console's sessions, and the
    wrong admin tokens counted per client address.

    Used on the relay's event loop: every call is one indexed statement on a
    small file (the admin listener's requests only, never a webhook's).
    ``fsync=False`` (the relay's) commits without waiting for the disk: an fsync
    on the event loop stalls every webhook behind it while the store keeps the
    disk busy, and a login lost to a power cut is only a login again. The CLI
    keeps ``fsync=True``, so a new admin token is on disk when it is printed.
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        # Private before a digest is written into it.
        create_private(path)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._version = -1
        self._admin: bytes | None = None

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    # -- the admin token ----------------------------------------------------

    def set_admin_token(self, token: str, now: int) -> None:
        """Store ``token``'s digest as the admin token, replacing any; ends every session."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO admin_token (id, digest, created_at) VALUES (1, ?, ?)",
                (hash_token(token), now),
            )
            self._db.execute("DELETE FROM sessions")
        self._version = -1

    def clear_admin_token(self) -> bool:
        """Remove the admin token (and every session); True if there was one."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            removed = self._db.execute("DELETE FROM admin_token").rowcount > 0
            self._db.execute("DELETE FROM sessions")
        self._version = -1
        return removed

    def admin_digest(self) -> bytes | None:
        """The admin token's digest, None if none is set; re-read only when the file changed."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            row = self._db.execute("SELECT digest FROM admin_token WHERE id = 1").fetchone()
            self._admin = None if row is None else bytes(row[0])
            self._version = version
        return self._admin

    # -- sessions -----------------------------------------------------------

    def open_session(self, token_digest: bytes | None, now: int) -> tuple[str, Session]:
        """A new session (logged in with ``token_digest``, or anonymous); returns its
        cookie value, which is not stored, and the session."""
        value = secrets.token_urlsafe(32)
        session = Session(
            _digest(value), secrets.token_urlsafe(32), token_digest, now + SESSION_SECONDS * 1000
        )
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            self._db.execute(
                "INSERT INTO sessions (digest, csrf, token_digest, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (session.digest, session.csrf, token_digest, now, session.expires_at),
            )
            self._db.execute(
                "DELETE FROM sessions WHERE digest NOT IN "
                "(SELECT digest FROM sessions ORDER BY created_at DESC LIMIT ?)",
                (MAX_SESSIONS,),
            )
        return value, session

    def session(self, value: str, now: int) -> Session | None:
        """The live session whose cookie value is ``value``, if any."""
        row = self._db.execute(
            "SELECT digest, csrf, token_digest, expires_at FROM sessions WHERE digest = ?",
            (_digest(value),),
        ).fetchone()
        if row is None or row[3] <= now:
            return None
        token_digest = None if row[2] is None else bytes(row[2])
        return Session(bytes(row[0]), row[1], token_digest, row[3])

    def close_session(self, session: Session) -> None:
        """End ``session`` (logout)."""
        self._db.execute("DELETE FROM sessions WHERE digest = ?", (session.digest,))

    # -- wrong admin tokens ---------------------------------------------------

    def failure_wait(self, client: str, now: float, burst: float, interval: float) -> float:
        """Seconds until ``client`` (an address key) may send an admin token again, 0 if
        it may now; ``now`` is wall-clock seconds, ``burst`` and ``interval`` its bucket's.

        One read by primary key: this runs for every request carrying a token.
        """
        row = self._db.execute(
            "SELECT tokens, updated FROM admin_failures WHERE client = ?", (client,)
        ).fetchone()
        if row is None:
            return 0.0
        return TokenBucket(burst, interval, row[0], row[1]).wait(now)

    def count_failure(self, client: str, now: float, burst: float, interval: float) -> None:
        """Spend a token of ``client``'s bucket for one wrong admin token (wall-clock ``now``).

        One IMMEDIATE transaction, so failures from several processes at once all count.
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            # Full buckets are forgotten as they are met: a row only ever says "wait".
            self._db.execute("DELETE FROM admin_failures WHERE full_at <= ?", (now,))
            row = self._db.execute(
                "SELECT tokens, updated FROM admin_failures WHERE client = ?", (client,)
            ).fetchone()
            if row is None:
                bucket = TokenBucket.full(burst, interval, now)
            else:
                bucket = TokenBucket(burst, interval, row[0], row[1])
            bucket.take(now)
            self._db.execute(
                "INSERT OR REPLACE INTO admin_failures (client, tokens, updated, full_at) "
                "VALUES (?, ?, ?, ?)",
                (client, bucket.tokens, bucket.updated, bucket.full_at(now)),
            )
            if row is None:
                self._bound_failures()

    def _bound_failures(self) -> None:
        """Keep at most :data:`MAX_FAILURE_ROWS` rows: an attacker cycling addresses must
        not grow the file. Dropping a row only forgives; the ones nearest to full go first."""
        (count,) = self._db.execute("SELECT count(*) FROM admin_failures").fetchone()
        if count > MAX_FAILURE_ROWS:
            self._db.execute(
                "DELETE FROM admin_failures WHERE client IN "
                "(SELECT client FROM admin_failures ORDER BY full_at LIMIT ?)",
                (count - MAX_FAILURE_ROWS,),
            )
