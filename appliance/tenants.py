"""Tenants: who may post webhooks and which bridge token serves them.

The registry is a small SQLite file, ``STATE/tenants.db`` (mode 0600: it holds
channel secrets, which the relay needs in clear to check signatures). Bridge
tokens are stored only as SHA-256 digests: a token is 256 random bits, so a
fast hash is enough to make the stored digest useless to a thief.

Rotations may keep the old credential for a grace period, so that the other
side can be updated without a gap: a token rotated with a grace keeps its
digest as the tenant's *previous* token until the grace ends, and a channel
secret rotated with one keeps the old secret as the *previous* secret. One
previous credential of each kind at most: a second rotation ends the first
one's grace. The relay checks the end of a grace on every use, and its
housekeeping closes the bridges still on the old token once it has passed.

:class:`TenantRegistry` is the CLI's view (add, list, remove, rotate).
:class:`TenantDirectory` is the running relay's in-memory view; it notices
the CLI's changes through SQLite's ``data_version`` and reloads.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import signature
from appliance.errors import TenantError
from appliance.state import StateDir, create_private

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
TOKEN_PREFIX = "lrb_"  # noqa: S105 (a public prefix, not a secret)
#: The shortest bridge token :meth:`TenantRegistry.add` takes from a caller.
MIN_TOKEN_CHARS = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER NOT NULL,
    incarnation INTEGER NOT NULL DEFAULT 0,
    previous_token_hash BLOB,
    previous_token_until INTEGER NOT NULL DEFAULT 0,
    previous_secret BLOB,
    previous_secret_until INTEGER NOT NULL DEFAULT 0
)
"""
#: Columns added since the first tenants files, each with the statement that adds it
#: to an older file in place. Their defaults say what an old file meant: incarnation 0,
#: no previous token or secret.
_MIGRATIONS = {
    "incarnation": "ALTER TABLE tenants ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0",
    "previous_token_hash": "ALTER TABLE tenants ADD COLUMN previous_token_hash BLOB",
    "previous_token_until": (
        "ALTER TABLE tenants ADD COLUMN previous_token_until INTEGER NOT NULL DEFAULT 0"
    ),
    "previous_secret": "ALTER TABLE tenants ADD COLUMN previous_secret BLOB",
    "previous_secret_until": (
        "ALTER TABLE tenants ADD COLUMN previous_secret_until INTEGER NOT NULL DEFAULT 0"
    ),
}
#: The longest grace a rotation takes: a week is time enough to update a bridge, and
#: an old credential should not outlive it.
MAX_GRACE_SECONDS = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant as the relay serves it; secrets are kept out of ``repr``."""

    id: str
    secret: bytes = field(repr=False)
    token_hash: bytes = field(repr=False)
    created_at: int = 0  # ms
    #: Random per add: a tenant removed and added again is a new tenant, even
    #: within one millisecond.
    incarnation: int = 0
    #: The token before the last rotation, valid until ``previous_token_until`` (ms).
    previous_token_hash: bytes | None = field(default=None, repr=False)
    previous_token_until: int = 0
    #: The channel secret before the last rotation, valid until ``previous_secret_until``.
    previous_secret: bytes | None = field(default=None, repr=False)
    previous_secret_until: int = 0

    def verifies_with_previous_secret(self, body: bytes, claimed: str | bytes) -> bool:
        """Whether ``claimed`` signs ``body`` under the previous secret, while its grace lasts.

        Called only when the current secret did not verify: a tenant without
        a previous secret costs the hot path nothing.
        """
        return (
            self.previous_secret is not None
            and _now_ms() < self.previous_secret_until
            and signature.verify(self.previous_secret, body, claimed)
        )


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """What ``tenant list`` shows: nothing secret. Times are Unix milliseconds.

    ``token_grace_until`` and ``secret_grace_until`` are when the previous token
    and secret stop working; 0 when there is none (or its grace has ended).
    """

    id: str
    created_at: int
    rotated_at: int
    token_grace_until: int = 0
    secret_grace_until: int = 0


def validate_id(tenant: str) -> str:
    """Return ``tenant`` if it is a valid id (PROTOCOL.md §1), else raise :class:`TenantError`."""
    if not TENANT_ID.fullmatch(tenant):
        raise TenantError(
            f"invalid tenant id {tenant!r}: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return tenant


def hash_token(token: str) -> bytes:
    """The stored form of a bridge token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A fresh bridge token: a recognisable prefix and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def grace_ms(seconds: float) -> int:
    """A grace period given in seconds, as milliseconds; raises :class:`TenantError`
    unless it is a number from 0 to :data:`MAX_GRACE_SECONDS`."""
    if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise TenantError(
            f"the grace must be a number of seconds from 0 to {MAX_GRACE_SECONDS} (a week)"
        )
    return round(seconds * 1000)


def _connect(path: Path) -> sqlite3.Connection:
    # Private before any secret is written into it.
    create_private(path)
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    if _MIGRATIONS.keys() - _columns(db):
        # One writer at a time: the CLI and a relay may open an old file together.
        db.execute("BEGIN IMMEDIATE")
        try:
            for column in _MIGRATIONS.keys() - _columns(db):
                db.execute(_MIGRATIONS[column])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return db


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(tenants)")}


class TenantRegistry:
    """The tenants file, as the operator CLI changes it.

    ``clock`` gives the time in Unix milliseconds (tests pass their own).
    """

    def __init__(self, path: Path, clock: Callable[[], int] | None = None) -> None:
        self._db = _connect(path)
        self._clock = clock or _now_ms

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def add(self, tenant: str, secret: str, token: str | None = None) -> str:
        """Add ``tenant``; returns its bridge token, which is not stored and cannot be shown again.

        ``token`` is the bridge token to store (hashed) instead of a new one,
        for tokens made elsewhere (appliance provisioning); at least
        :data:`MIN_TOKEN_CHARS` characters.
        """
        validate_id(tenant)
        secret = _validate_secret(secret)
        if token is None:
            token = new_token()
        elif len(token) < MIN_TOKEN_CHARS:
            raise TenantError(f"the bridge token is shorter than {MIN_TOKEN_CHARS} characters")
        now = self._clock()
        try:
            self._db.execute(
                "INSERT INTO tenants (id, secret, token_hash, created_at, rotated_at, incarnation) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (tenant, secret.encode("utf-8"), hash_token(token), now, now, secrets.randbits(63)),
            )
        except sqlite3.IntegrityError as exc:
            if "token_hash" in str(exc):
                raise TenantError(f"tenant {tenant!r}: that bridge token is in use") from exc
            raise TenantError(f"tenant {tenant!r} already exists") from exc
        return token

    def rotate(self, tenant: str, grace: float = 0) -> tuple[str, int]:
        """Give ``tenant`` a new bridge token; returns it and when the old one stops (ms).

        With ``grace`` seconds the old token keeps working until then; without,
        it stops now (and the time returned is 0). Either way a token older
        than the one replaced stops now.
        """
        validate_id(tenant)
        extra = grace_ms(grace)
        token = new_token()
        now = self._clock()
        until = now + extra if extra else 0
        cursor = self._db.execute(
            "UPDATE tenants SET token_hash = ?, rotated_at = ?, "
            "previous_token_hash = CASE WHEN ? > 0 THEN token_hash END, "
            "previous_token_until = ? WHERE id = ?",
            (hash_token(token), now, until, until, tenant),
        )
        if cursor.rowcount == 0:
            raise TenantError(f"no tenant {tenant!r}")
        return token, until

    def rotate_secret(self, tenant: str, secret: str, grace: float = 0) -> int:
        """Make ``secret`` ``tenant``'s channel secret; returns when the old one stops (ms).

        The new secret verifies at once. With ``grace`` seconds, webhooks signed
        with the old one are still accepted until then (LINE reissues a secret
        at once; webhooks it signed before, retried or in flight, still come);
        without, the old secret stops now (and 0 is returned).
        """
        validate_id(tenant)
        new = _validate_secret(secret).encode("utf-8")
        extra = grace_ms(grace)
        # The check and the change in one transaction: another CLI may rotate meanwhile.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT secret FROM tenants WHERE id = ?", (tenant,)).fetchone()
            if row is None:
                raise TenantError(f"no tenant {tenant!r}")
            if hmac.compare_digest(bytes(row[0]), new):
                raise TenantError(f"tenant {tenant!r}: that channel secret is the one in use")
            until = self._clock() + extra if extra else 0
            self._db.execute(
                "UPDATE tenants SET secret = ?, "
                "previous_secret = CASE WHEN ? > 0 THEN secret END, "
                "previous_secret_until = ? WHERE id = ?",
                (new, until, until, tenant),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return until

    def remove(self, tenant: str) -> None:
        """Remove ``tenant``; its webhooks stop being accepted and its bridges are closed."""
        cursor = self._db.execute("DELETE FROM tenants WHERE id = ?", (validate_id(tenant),))
        if cursor.rowcount == 0:
            raise TenantError(f"no tenant {tenant!r}")

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` is registered."""
        row = self._db.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant,)).fetchone()
        return row is not None

    def list(self) -> list[TenantInfo]:
        """All tenants, by id."""
        now = self._clock()
        rows = self._db.execute(
            "SELECT id, created_at, rotated_at, previous_token_until, previous_secret_until "
            "FROM tenants ORDER BY id"
        )
        return [
            TenantInfo(
                tid, created, rotated, _pending(token_until, now), _pending(secret_until, now)
            )
            for tid, created, rotated, token_until, secret_until in rows
        ]


class TenantDirectory:
    """The relay's in-memory tenants, reloaded when the file changes.

    ``clock`` gives the time in Unix milliseconds (tests pass their own).
    """

    def __init__(self, path: Path, clock: Callable[[], int] | None = None) -> None:
        self._db = _connect(path)
        self._clock = clock or _now_ms
        self._version = -1
        self.by_id: dict[str, Tenant] = {}
        self._by_token: dict[bytes, Tenant] = {}
        self._removed: dict[str, int | None] = {}
        self._rotated: set[str] = set()
        #: Tenants whose previous token is in its grace, and when it ends (ms).
        self._graces: dict[str, int] = {}
        self.refresh()

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def refresh(self) -> bool:
        """Reload if another process changed the file; True if it did.

        One ``PRAGMA`` on an open connection. The relay calls it when the
        tenant CLI signals a change (SIGUSR1), on its poll, and on a lookup
        that misses (a tenant just added is served at once). Not on every
        lookup: any SQLite call releases the GIL, and under load another
        thread then holds the event loop up (measured: 8 % of the relay's
        time). What was removed (or removed and added again) and
        rotated is kept for :meth:`take_changes`.
        """
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return False
        self._version = version
        rows = self._db.execute(
            "SELECT id, secret, token_hash, created_at, incarnation, previous_token_hash, "
            "previous_token_until, previous_secret, previous_secret_until FROM tenants"
        )
        fresh = {row[0]: _tenant(row) for row in rows}
        for tid, old in self.by_id.items():
            new = fresh.get(tid)
            if new is None or (new.created_at, new.incarnation) != (
                old.created_at,
                old.incarnation,
            ):
                # Gone, or a new tenant under an old id: the old one's queue goes.
                self._removed[tid] = None if new is None else new.created_at
            elif (new.token_hash, new.previous_token_hash) != (
                old.token_hash,
                old.previous_token_hash,
            ):
                self._rotated.add(tid)
        self.by_id = fresh
        now = self._clock()
        self._graces = {
            t.id: t.previous_token_until
            for t in fresh.values()
            if t.previous_token_hash is not None and now < t.previous_token_until
        }
        by_token: dict[bytes, Tenant] = {}
        for tid in self._graces:
            previous = fresh[tid].previous_token_hash
            if previous is not None:
                by_token[previous] = fresh[tid]
        # A current token wins over a previous one (tokens are random: a clash is theory).
        by_token.update({t.token_hash: t for t in fresh.values()})
        self._by_token = by_token
        return True

    def take_changes(self) -> tuple[dict[str, int | None], set[str]]:
        """Since the last call: removed tenants, each with the creation time (ms)
        of a tenant that took its id since (None if none did), and tenants whose
        valid tokens changed (rotated, or the old token's grace ended): their
        bridges are to be checked with :meth:`accepts`."""
        now = self._clock()
        for tid, until in list(self._graces.items()):
            if now >= until:
                del self._graces[tid]
                tenant = self.by_id.get(tid)
                if tenant is not None and tenant.previous_token_hash is not None:
                    self._by_token.pop(tenant.previous_token_hash, None)
                self._rotated.add(tid)
        changes = (self._removed, self._rotated)
        self._removed, self._rotated = {}, set()
        return changes

    def get(self, tenant: str) -> Tenant | None:
        """The tenant with this id, if any."""
        found = self.by_id.get(tenant)
        if found is None and self.refresh():
            found = self.by_id.get(tenant)
        return found

    def authenticate(self, token: str | None) -> Tenant | None:
        """The tenant whose bridge token this is, if any: its current token, or
        the previous one while its grace lasts.

        The dictionary lookup is by digest, so its timing says nothing useful
        about the token; the final comparison is constant-time all the same.
        """
        if not token:
            return None
        digest = hash_token(token)
        tenant = self._by_token.get(digest)
        if tenant is None and self.refresh():
            tenant = self._by_token.get(digest)
        if tenant is None or not self._valid(tenant, digest):
            return None
        return tenant

    def accepts(self, tenant: str, token_hash: bytes) -> bool:
        """Whether a bridge of ``tenant`` that logged in with the token of digest
        ``token_hash`` may stay connected: the tenant is there and the token valid."""
        found = self.by_id.get(tenant)
        return found is not None and self._valid(found, token_hash)

    def token_grace_until(self, tenant: str) -> int:
        """When ``tenant``'s previous token stops working (ms); 0 if no grace runs."""
        return self._graces.get(tenant, 0)

    def _valid(self, tenant: Tenant, digest: bytes) -> bool:
        if hmac.compare_digest(tenant.token_hash, digest):
            return True
        previous = tenant.previous_token_hash
        return (
            previous is not None
            and hmac.compare_digest(previous, digest)
            and self._clock() < tenant.previous_token_until
        )


def _tenant(row: Sequence[Any]) -> Tenant:
    """A :class:`Tenant` from a row of :meth:`TenantDirectory.refresh`'s query."""
    tid, secret, token_hash, created_at, incarnation, old_hash, old_until, old_secret, until = row
    return Tenant(
        tid,
        bytes(secret),
        bytes(token_hash),
        created_at,
        incarnation,
        None if old_hash is None else bytes(old_hash),
        old_until,
        None if old_secret is None else bytes(old_secret),
        until,
    )


def notify_relay(state: StateDir) -> bool:
    """Tell a relay serving ``state`` that tenants changed; True if one was told.

    The relay also notices by itself within ``tenant_poll_interval``; the
    signal makes a removal or rotation apply to the very next request.
    """
    try:
        fd = os.open(state.pid_file, os.O_RDONLY)
    except OSError:
        return False  # no relay has run here
    try:
        try:
            # The relay holds an exclusive lock while it runs: if ours is
            # granted, the pid is stale and may be anybody's: do not signal it.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = int(os.read(fd, 32).decode().strip())
            os.kill(pid, signal.SIGUSR1)
            return True
        return False
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)


def hold_pid_file(state: StateDir) -> int:
    """Lock ``state``'s pid file for this process and write its pid; returns the fd to keep.

    Raises :class:`TenantError` if another relay holds it (two relays must not
    share a state dir).
    """
    fd = os.open(state.pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise TenantError(f"another relay is running on {state.path}") from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pending(until: int, now: int) -> int:
    """``until`` if that grace is still running at ``now``, else 0."""
    return until if until > now else 0


def _validate_secret(secret: str) -> str:
    secret = secret.strip()
    if not secret:
        raise TenantError("the channel secret is empty")
    if not secret.isprintable() or any(c.isspace() for c in secret):
        raise TenantError("the channel secret contains spaces or control characters")
    return secret
