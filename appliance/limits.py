"""Rate and count limits against abuse, as plain classes with an injected clock.

Nothing here does I/O or reads the time by itself: callers pass ``now``
(``time.monotonic()``; ``time.time()`` where buckets are shared between processes,
as the console's lockouts in ``console.db`` are), so every limit is tested without
sleeping.

- :class:`TokenBucket`: a burst, then a steady rate.
- :class:`KeyedBuckets`: one bucket per key (a client address, a tenant), the
  number of keys bounded so an attacker cycling addresses cannot grow memory.
- :class:`ConnectionCounter`: open connections, globally and per address.
- :func:`address_key`: the key a client address is limited under; IPv6
  clients are limited per /64, since one host commonly holds a whole /64.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens at first, one more every ``interval`` seconds, never above ``burst``."""

    burst: float
    interval: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, burst: float, interval: float, now: float) -> TokenBucket:
        """A bucket with every token available."""
        return cls(burst, interval, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) / self.interval)
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; True if it was spent."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) * self.interval)

    def is_full(self, now: float) -> bool:
        """Whether the bucket is back to its burst (the key can be forgotten)."""
        self._refill(now)
        return self.tokens >= self.burst

    def full_at(self, now: float) -> float:
        """When the bucket will be back to its burst if nothing is taken (``now`` if it is)."""
        self._refill(now)
        return now + max(0.0, (self.burst - self.tokens) * self.interval)


class KeyedBuckets:
    """A :class:`TokenBucket` per key, at most ``max_keys`` of them.

    Past ``max_keys`` the least recently used key is forgotten, which only
    ever forgives: a forgotten key starts again with a full bucket. Full
    buckets are dropped as they are met, so idle keys cost nothing.
    """

    def __init__(self, burst: float, interval: float, max_keys: int = 100_000) -> None:
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def configure(self, burst: float, interval: float) -> None:
        """New limits for new and existing keys (config reload)."""
        self.burst, self.interval = burst, interval
        for bucket in self._buckets.values():
            bucket.burst, bucket.interval = burst, interval
            bucket.tokens = min(bucket.tokens, burst)

    def take(self, key: str, now: float) -> bool:
        """Spend a token of ``key``; True if it had one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self.burst, self.interval, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds until ``key`` may spend a token again (0: it may now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        if bucket.is_full(now):
            del self._buckets[key]
            return 0.0
        return bucket.wait(now)


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))


class ConnectionCounter:
    """Open connections: at most ``total`` in all and ``per_address`` from one address key."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_key: dict[str, int] = {}

    def admit(self, key: str, per_address: bool = True) -> str | None:
        """Count a new connection from ``key``; returns why not (and counts nothing) if over
        a cap. ``per_address=False`` (a trusted proxy's connection) checks the total only."""
        if self.open >= self.total:
            return "total"
        count = self._by_key.get(key, 0)
        if per_address and count >= self.per_address:
            return "per_address"
        self._by_key[key] = count + 1
        self.open += 1
        return None

    def release(self, key: str) -> None:
        """A connection admitted under ``key`` closed."""
        count = self._by_key.get(key, 0)
        if count <= 1:
            self._by_key.pop(key, None)
        else:
            self._by_key[key] = count - 1
        self.open = max(0, self.open - 1)

    def move(self, old: str, new: str, per_address: bool = True) -> str | None:
        """Count a connection admitted under ``old`` under ``new`` instead (a balancer's
        connection, once its PROXY header names the client); returns why not, and then
        the connection stays counted under ``old``."""
        if old == new:
            return None
        count = self._by_key.get(new, 0)
        if per_address and count >= self.per_address:
            return "per_address"
        self.release(old)
        self._by_key[new] = count + 1
        self.open += 1
        return None

    def from_address(self, key: str) -> int:
        """Open connections under ``key``."""
        return self._by_key.get(key, 0)


def address_key(host: str) -> str:
    """The key a client address is limited under: IPv4 as is, IPv6 by its /64.

    IPv4-mapped IPv6 addresses count as the IPv4 address; anything that is
    not an IP address (a Unix socket peer) is its own key.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host
