"""Tenants: who may post webhooks and which bridge token serves them.

The registry is a small SQLite file, ``STATE/tenants.db`` (mode 0600: it holds
channel secrets, which the relay needs in clear to check signatures). Bridge
tokens are stored only as SHA-256 digests: a token is 256 random bits, so a
fast hash is enough to make the stored digest useless to a thief.

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
from dataclasses import dataclass, field
from pathlib import Path

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
    incarnation INTEGER NOT NULL DEFAULT 0
)
"""
# Tenants files from before incarnations: their tenants count as incarnation 0.
_MIGRATE = "ALTER TABLE tenants ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0"


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


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """What ``tenant list`` shows: nothing secret. Times are Unix milliseconds."""

    id: str
    created_at: int
    rotated_at: int


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


def _connect(path: Path) -> sqlite3.Connection:
    # Private before any secret is written into it.
    create_private(path)
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    if "incarnation" not in {row[1] for row in db.execute("PRAGMA table_info(tenants)")}:
        db.execute(_MIGRATE)
    return db


class TenantRegistry:
    """The tenants file, as the operator CLI changes it."""

    def __init__(self, path: Path) -> None:
        self._db = _connect(path)

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
        now = _now_ms()
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

    def rotate(self, tenant: str) -> str:
        """Give ``tenant`` a new bridge token; the old one stops working."""
        token = new_token()
        cursor = self._db.execute(
            "UPDATE tenants SET token_hash = ?, rotated_at = ? WHERE id = ?",
            (hash_token(token), _now_ms(), validate_id(tenant)),
        )
        if cursor.rowcount == 0:
            raise TenantError(f"no tenant {tenant!r}")
        return token

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
        rows = self._db.execute("SELECT id, created_at, rotated_at FROM tenants ORDER BY id")
        return [TenantInfo(*row) for row in rows]


class TenantDirectory:
    """The relay's in-memory tenants, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._db = _connect(path)
        self._version = -1
        self.by_id: dict[str, Tenant] = {}
        self._by_token: dict[bytes, Tenant] = {}
        self._removed: dict[str, int | None] = {}
        self._rotated: set[str] = set()
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
            "SELECT id, secret, token_hash, created_at, incarnation FROM tenants"
        )
        fresh = {
            row[0]: Tenant(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4]) for row in rows
        }
        for tid, old in self.by_id.items():
            new = fresh.get(tid)
            if new is None or (new.created_at, new.incarnation) != (
                old.created_at,
                old.incarnation,
            ):
                # Gone, or a new tenant under an old id: the old one's queue goes.
                self._removed[tid] = None if new is None else new.created_at
            elif new.token_hash != old.token_hash:
                self._rotated.add(tid)
        self.by_id = fresh
        self._by_token = {t.token_hash: t for t in fresh.values()}
        return True

    def take_changes(self) -> tuple[dict[str, int | None], set[str]]:
        """Since the last call: removed tenants, each with the creation time (ms)
        of a tenant that took its id since (None if none did), and rotated ones."""
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
        """The tenant whose bridge token this is, if any.

        The dictionary lookup is by digest, so its timing says nothing useful
        about the token; the final comparison is constant-time all the same.
        """
        if not token:
            return None
        digest = hash_token(token)
        tenant = self._by_token.get(digest)
        if tenant is None and self.refresh():
            tenant = self._by_token.get(digest)
        if tenant is None or not hmac.compare_digest(tenant.token_hash, digest):
            return None
        return tenant


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


def _validate_secret(secret: str) -> str:
    secret = secret.strip()
    if not secret:
        raise TenantError("the channel secret is empty")
    if not secret.isprintable() or any(c.isspace() for c in secret):
        raise TenantError("the channel secret contains spaces or control characters")
    return secret
