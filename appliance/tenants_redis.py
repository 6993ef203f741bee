"""Tenants in Redis (``store = "redis"``): every relay process and node sees the same ones.

The same tenants as ``STATE/tenants.db`` (appliance/tenants.py), kept where
every node can read them, so ``linerelay tenant ... --config FILE`` on any
machine changes what every node serves (PROTOCOL.md §6). Keys, under the
store's prefix:

- ``tenants``: hash, tenant id → JSON of the tenant (the channel secret in
  clear, as the relay needs it to check signatures; the bridge token only as
  its SHA-256 digest, hex);
- ``tokens``: hash, token digest (hex) → tenant id, which keeps tokens unique;
- ``tenants:version``: a counter each change raises, which a relay polls
  (one GET each ``tenant_poll_interval``, and on a lookup that misses, at most
  every :data:`MISS_CHECK_INTERVAL`) to reload only when something changed.

Redis holds channel secrets: protect it as the tenants file is protected
(docs/redis.md: bind it to a private network, require a password, TLS).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

import redis

from appliance.errors import TenantError
from appliance.store.redis import PREFIX
from appliance.tenants import (
    MIN_TOKEN_CHARS,
    Tenant,
    TenantDirectory,
    TenantInfo,
    _validate_secret,
    hash_token,
    new_token,
    validate_id,
)

log = logging.getLogger(__name__)

#: Seconds between two version checks triggered by lookups that miss: an
#: unknown tenant id in a flood of requests costs one round trip per interval,
#: not one per request.
MISS_CHECK_INTERVAL = 0.005
#: Socket timeouts (seconds) of the directory's checks, which run on the event loop.
CHECK_TIMEOUT = 0.5

# ARGV: prefix, tenant, JSON, token digest. Adds the tenant unless the id or the
# token is taken: 1, or 'id' / 'token'.
_ADD = """
local p, tenant, doc, digest = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', p .. 'tenants', tenant) == 1 then return 'id' end
if redis.call('HEXISTS', p .. 'tokens', digest) == 1 then return 'token' end
redis.call('HSET', p .. 'tenants', tenant, doc)
redis.call('HSET', p .. 'tokens', digest, tenant)
redis.call('INCR', p .. 'tenants:version')
return 1
"""
# ARGV: prefix, tenant, new token digest, now (ms). 1, or 0 if no such tenant.
_ROTATE = """
local p, tenant, digest, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local doc = redis.call('HGET', p .. 'tenants', tenant)
if not doc then return 0 end
local t = cjson.decode(doc)
redis.call('HDEL', p .. 'tokens', t.token_hash)
t.token_hash = digest
t.rotated_at = now
redis.call('HSET', p .. 'tenants', tenant, cjson.encode(t))
redis.call('HSET', p .. 'tokens', digest, tenant)
redis.call('INCR', p .. 'tenants:version')
return 1
"""
# ARGV: prefix, tenant. 1, or 0 if no such tenant.
_REMOVE = """
local p, tenant = ARGV[1], ARGV[2]
local doc = redis.call('HGET', p .. 'tenants', tenant)
if not doc then return 0 end
redis.call('HDEL', p .. 'tokens', cjson.decode(doc).token_hash)
redis.call('HDEL', p .. 'tenants', tenant)
redis.call('INCR', p .. 'tenants:version')
return 1
"""


def _client(url: str, timeout: float = 10.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _tenant(tenant_id: str, doc: dict[str, Any]) -> Tenant:
    return Tenant(
        tenant_id,
        doc["secret"].encode("utf-8"),
        bytes.fromhex(doc["token_hash"]),
        int(doc["created_at"]),
        int(doc["incarnation"]),
    )


class RedisTenantRegistry:
    """The tenants in Redis, as the operator CLI changes them (the
    :class:`appliance.tenants.TenantRegistry` of ``store = "redis"``)."""

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self._redis = _client(url)
        self._prefix = prefix
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            self._redis.close()
            raise TenantError(f"cannot reach Redis: {exc}") from exc

    def close(self) -> None:
        """Disconnect."""
        self._redis.close()

    def _eval(self, script: str, *args: Any) -> Any:
        try:
            return self._redis.eval(script, 0, self._prefix, *args)
        except redis.RedisError as exc:
            raise TenantError(f"Redis: {exc}") from exc

    def add(self, tenant: str, secret: str, token: str | None = None) -> str:
        """Add ``tenant``; returns its bridge token (see :meth:`TenantRegistry.add`)."""
        validate_id(tenant)
        secret = _validate_secret(secret)
        if token is None:
            token = new_token()
        elif len(token) < MIN_TOKEN_CHARS:
            raise TenantError(f"the bridge token is shorter than {MIN_TOKEN_CHARS} characters")
        now = int(time.time() * 1000)
        digest = hash_token(token).hex()
        doc = {
            "secret": secret,
            "token_hash": digest,
            "created_at": now,
            "rotated_at": now,
            "incarnation": secrets.randbits(63),
        }
        result = self._eval(_ADD, tenant, json.dumps(doc), digest)
        if result == b"id":
            raise TenantError(f"tenant {tenant!r} already exists")
        if result == b"token":
            raise TenantError(f"tenant {tenant!r}: that bridge token is in use")
        return token

    def rotate(self, tenant: str) -> str:
        """Give ``tenant`` a new bridge token; the old one stops working on every node."""
        token = new_token()
        digest = hash_token(token).hex()
        if not self._eval(_ROTATE, validate_id(tenant), digest, int(time.time() * 1000)):
            raise TenantError(f"no tenant {tenant!r}")
        return token

    def remove(self, tenant: str) -> None:
        """Remove ``tenant`` on every node."""
        if not self._eval(_REMOVE, validate_id(tenant)):
            raise TenantError(f"no tenant {tenant!r}")

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` is registered."""
        return bool(self._redis.hexists(self._prefix + "tenants", tenant))

    def list(self) -> list[TenantInfo]:
        """All tenants, by id."""
        docs: Any = self._redis.hgetall(self._prefix + "tenants")
        infos = []
        for raw_id, raw in docs.items():
            doc = json.loads(raw)
            infos.append(TenantInfo(raw_id.decode(), doc["created_at"], doc["rotated_at"]))
        return sorted(infos, key=lambda info: info.id)


class RedisTenantDirectory(TenantDirectory):
    """The relay's in-memory tenants, loaded from Redis and reloaded when they change.

    Lookups never wait on Redis: they read memory. :meth:`refresh` (the relay's
    poll, the CLI's signal, a lookup that misses) costs one GET of the version
    counter, bounded by :data:`CHECK_TIMEOUT`; while Redis cannot be reached
    the tenants loaded last keep being served.
    """

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self._redis = _client(url, CHECK_TIMEOUT)
        self._prefix = prefix
        self._version: Any = None
        self._checked = 0.0
        self._unreachable = False
        self.by_id: dict[str, Tenant] = {}
        self._by_token: dict[bytes, Tenant] = {}
        self._removed: dict[str, int | None] = {}
        self._rotated: set[str] = set()
        try:
            self._load(self._redis.get(prefix + "tenants:version"))
        except redis.RedisError as exc:
            self._redis.close()
            raise TenantError(f"cannot read tenants from Redis: {exc}") from exc

    def close(self) -> None:
        """Disconnect."""
        self._redis.close()

    def refresh(self) -> bool:
        """Reload if the tenants changed in Redis; True if they did."""
        now = time.monotonic()
        if now - self._checked < MISS_CHECK_INTERVAL:
            return False
        self._checked = now
        try:
            version: Any = self._redis.get(self._prefix + "tenants:version")
            if version == self._version:
                return False
            self._load(version)
        except redis.RedisError as exc:
            if not self._unreachable:
                self._unreachable = True
                log.warning(
                    "tenants: Redis unreachable; serving those loaded", extra={"why": str(exc)}
                )
            return False
        if self._unreachable:
            self._unreachable = False
            log.info("tenants: Redis reachable again")
        return True

    def _load(self, version: Any) -> None:
        docs: Any = self._redis.hgetall(self._prefix + "tenants")
        fresh = {raw.decode(): _tenant(raw.decode(), json.loads(doc)) for raw, doc in docs.items()}
        for tid, old in self.by_id.items():
            new = fresh.get(tid)
            if new is None or (new.created_at, new.incarnation) != (
                old.created_at,
                old.incarnation,
            ):
                self._removed[tid] = None if new is None else new.created_at
            elif new.token_hash != old.token_hash:
                self._rotated.add(tid)
        self.by_id = fresh
        self._by_token = {t.token_hash: t for t in fresh.values()}
        self._version = version
