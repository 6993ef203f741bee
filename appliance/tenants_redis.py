"""Tenants in Redis (``store = "redis"``): every relay process and node sees the same ones.

The same tenants as ``STATE/tenants.db`` (appliance/tenants.py), kept where
every node can read them, so ``linerelay tenant ... --config FILE`` on any
machine changes what every node serves (PROTOCOL.md §6). What a rotation does
and what is valid when (graces included) is appliance/tenants.py's, shared
with SQLite: this module only stores. Keys, under the store's prefix:

- ``tenants``: hash, tenant id → JSON of the tenant (the channel secret in
  clear, as the relay needs it to check signatures, and in a secret's grace
  the previous one; bridge tokens only as SHA-256 digests, hex);
- ``tokens``: hash, current token digest (hex) → tenant id, which keeps
  tokens unique;
- ``tenants:version``: a counter each change raises, which a relay polls
  (one GET each ``tenant_poll_interval``, and on a lookup that misses, at most
  every :data:`MISS_CHECK_INTERVAL`) to reload only when something changed.

The end of a grace changes nothing in Redis: each relay sees it on its own
clock (appliance/tenants.py), so the nodes' clocks must agree (NTP) to well
under a grace.

Redis holds channel secrets: protect it as the tenants file is protected
(docs/redis.md: bind it to a private network, require a password, TLS).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis

from appliance.errors import TenantError
from appliance.store.redis import PREFIX
from appliance.tenants import (
    Tenant,
    TenantDirectory,
    TenantInfo,
    given_or_new_token,
    grace_ms,
    hash_token,
    new_token,
    now_ms,
    validate_id,
    validate_secret,
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
# ARGV: prefix, tenant. 1, or 0 if no such tenant. (The document is only read
# here: re-encoding it in Lua would round its 63-bit incarnation to a double.)
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
    """A :class:`Tenant` from its JSON document (one written before graces has
    no previous credentials)."""
    old_hash, old_secret = doc.get("previous_token_hash"), doc.get("previous_secret")
    return Tenant(
        tenant_id,
        doc["secret"].encode("utf-8"),
        bytes.fromhex(doc["token_hash"]),
        int(doc["created_at"]),
        int(doc["incarnation"]),
        None if old_hash is None else bytes.fromhex(old_hash),
        int(doc.get("previous_token_until", 0)),
        None if old_secret is None else old_secret.encode("utf-8"),
        int(doc.get("previous_secret_until", 0)),
        int(doc.get("rotated_at", doc["created_at"])),
    )


def _document(tenant: Tenant) -> str:
    """The JSON document a :class:`Tenant` is stored as (secrets are printable
    text, checked by ``validate_secret``)."""
    old_hash, old_secret = tenant.previous_token_hash, tenant.previous_secret
    return json.dumps(
        {
            "secret": tenant.secret.decode("utf-8"),
            "token_hash": tenant.token_hash.hex(),
            "created_at": tenant.created_at,
            "rotated_at": tenant.rotated_at,
            "incarnation": tenant.incarnation,
            "previous_token_hash": None if old_hash is None else old_hash.hex(),
            "previous_token_until": tenant.previous_token_until,
            "previous_secret": None if old_secret is None else old_secret.decode("utf-8"),
            "previous_secret_until": tenant.previous_secret_until,
        }
    )


class RedisTenantRegistry:
    """The tenants in Redis, as the operator CLI changes them (the
    :class:`appliance.tenants.TenantRegistry` of ``store = "redis"``).

    ``clock`` gives the time in Unix milliseconds (tests pass their own).
    """

    def __init__(
        self, url: str, prefix: str = PREFIX, clock: Callable[[], int] | None = None
    ) -> None:
        self._redis = _client(url)
        self._prefix = prefix
        self._clock = clock or now_ms
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
        secret = validate_secret(secret)
        token = given_or_new_token(token)
        now = self._clock()
        added = Tenant(
            tenant,
            secret.encode("utf-8"),
            hash_token(token),
            created_at=now,
            incarnation=secrets.randbits(63),
            rotated_at=now,
        )
        result = self._eval(_ADD, tenant, _document(added), added.token_hash.hex())
        if result == b"id":
            raise TenantError(f"tenant {tenant!r} already exists")
        if result == b"token":
            raise TenantError(f"tenant {tenant!r}: that bridge token is in use")
        return token

    def rotate(self, tenant: str, grace: float = 0) -> tuple[str, int]:
        """Give ``tenant`` a new bridge token on every node; returns it and when the
        old one stops (ms), as :meth:`TenantRegistry.rotate`."""
        validate_id(tenant)
        extra = grace_ms(grace)
        token = new_token()
        now = self._clock()
        changed = self._change(tenant, lambda t: t.with_token(hash_token(token), now, extra))
        return token, changed.previous_token_until

    def rotate_secret(self, tenant: str, secret: str, grace: float = 0) -> int:
        """Make ``secret`` ``tenant``'s channel secret on every node; returns when the
        old one stops (ms), as :meth:`TenantRegistry.rotate_secret`."""
        validate_id(tenant)
        new = validate_secret(secret).encode("utf-8")
        extra = grace_ms(grace)
        now = self._clock()
        changed = self._change(tenant, lambda t: t.with_secret(new, now, extra))
        return changed.previous_secret_until

    def _change(self, tenant: str, change: Callable[[Tenant], Tenant]) -> Tenant:
        """Store ``change`` of ``tenant``; returns the tenant changed.

        Optimistic: the document is read under WATCH and written in MULTI, so a
        change made meanwhile by another CLI makes this one start again from
        what that one wrote (never lost, never half-applied). The change runs
        in Python, not Lua, because Lua would round the incarnation.
        """
        tenants, tokens = self._prefix + "tenants", self._prefix + "tokens"
        try:
            with self._redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(tenants)  # type: ignore[no-untyped-call]
                        raw: Any = pipe.hget(tenants, tenant)
                        if raw is None:
                            raise TenantError(f"no tenant {tenant!r}")
                        old = _tenant(tenant, json.loads(raw))
                        new = change(old)
                        pipe.multi()
                        pipe.hset(tenants, tenant, _document(new))
                        if new.token_hash != old.token_hash:
                            pipe.hdel(tokens, old.token_hash.hex())
                            pipe.hset(tokens, new.token_hash.hex(), tenant)
                        pipe.incr(self._prefix + "tenants:version")
                        pipe.execute()
                        return new
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise TenantError(f"Redis: {exc}") from exc

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
        now = self._clock()
        infos = [_tenant(raw.decode(), json.loads(doc)).info(now) for raw, doc in docs.items()]
        return sorted(infos, key=lambda info: info.id)


class RedisTenantDirectory(TenantDirectory):
    """The relay's tenants from Redis, reloaded when they change.

    Lookups never wait on Redis: they read memory. :meth:`refresh` (the relay's
    poll, the CLI's signal, a lookup that misses) costs one GET of the version
    counter, bounded by :data:`CHECK_TIMEOUT`; while Redis cannot be reached
    the tenants loaded last keep being served. ``miss_check_interval`` is
    :data:`MISS_CHECK_INTERVAL` but in tests.
    """

    def __init__(
        self,
        url: str,
        prefix: str = PREFIX,
        clock: Callable[[], int] | None = None,
        miss_check_interval: float = MISS_CHECK_INTERVAL,
    ) -> None:
        super().__init__(clock)
        self._redis = _client(url, CHECK_TIMEOUT)
        self._prefix = prefix
        self._miss_check_interval = miss_check_interval
        self._version: Any = None
        self._checked = 0.0
        self._unreachable = False
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
        if now - self._checked < self._miss_check_interval:
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
        # The version was read first: a change landing in between is loaded now
        # and again at the next check, never missed.
        docs: Any = self._redis.hgetall(self._prefix + "tenants")
        self._install(
            {raw.decode(): _tenant(raw.decode(), json.loads(doc)) for raw, doc in docs.items()}
        )
        self._version = version
