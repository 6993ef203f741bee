"""What only the Redis store has: waiting for replicas, and the operator CLI's helpers.

The behaviour both stores share is in tests/appliance/test_store.py. These run
on a real ``redis-server`` (tests/support/redis.py) with no replica, so a
``WAIT`` for one always falls short; tests/integration/test_redis_replicas.py
has a real replica.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.config import RelayConfig
from appliance.errors import StoreError, TenantError
from appliance.state import StateDir
from appliance.store import Limits, store_limits
from appliance.store import redis as redis_store
from appliance.store.redis import RedisStore, count_unacked, purge_tenant
from appliance.tenant_backend import count_unacked as cli_count_unacked
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (a fixture)
from tests.support.relay import free_port

NO_REPLICA_WAIT = Limits(min_replicas=1, replica_wait_ms=50)


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own: it sees nothing of the others'."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:  # noqa: F811
    s = RedisStore(redis_server.url, Limits(), prefix=prefix)
    await s.open()
    yield s
    await s.close()


async def put(store: RedisStore, body: bytes, tenant: str = "a") -> float:
    """Append ``body`` and wait for the answer; returns the seconds it took."""
    started = time.perf_counter()
    await store.append(tenant, body, "sig", int(time.time() * 1000))
    return time.perf_counter() - started


def test_the_store_limits_carry_min_replicas_and_the_ack_deadline_as_the_replica_wait() -> None:
    # store_limits is what a reload hands Store.configure: both apply on reload.
    config = RelayConfig().replace(redis_min_replicas=2, ack_deadline_ms=500)
    limits = store_limits(config)
    assert (limits.min_replicas, limits.replica_wait_ms) == (2, 500)


async def test_a_webhook_too_few_replicas_confirmed_fails_yet_stays_queued_on_the_primary(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.configure(NO_REPLICA_WAIT)
    with caplog.at_level(logging.INFO, logger="appliance.store.redis"):
        with pytest.raises(StoreError, match="WAIT 1: 0 replicas"):
            await put(store, b"unconfirmed")
        # At least once: the primary has it, so a bridge gets it...
        assert [d.body for d in await store.pending("a", 0, 10)] == [b"unconfirmed"]
        # ...and LINE's retry is a known retry, still not confirmed while the
        # replicas are behind: it is not queued again.
        with pytest.raises(StoreError, match="WAIT 1"):
            await put(store, b"unconfirmed")
        assert len(await store.pending("a", 0, 10)) == 1
        store.configure(Limits())
        await put(store, b"unconfirmed")  # the retry, once the replicas need not confirm
        assert len(await store.pending("a", 0, 10)) == 1
    behind = [
        r for r in caplog.records if r.getMessage().startswith("store: Redis replicas behind")
    ]
    assert [r.levelname for r in behind] == ["WARNING"], "one warning a shortage"


async def test_min_replicas_and_the_replica_wait_change_on_configure(store: RedisStore) -> None:
    await put(store, b"before")
    store.configure(Limits(min_replicas=1, replica_wait_ms=600))
    started = time.perf_counter()
    with pytest.raises(StoreError):
        await put(store, b"waits-long")
    long = time.perf_counter() - started
    store.configure(Limits(min_replicas=1, replica_wait_ms=50))
    started = time.perf_counter()
    with pytest.raises(StoreError):
        await put(store, b"waits-short")
    short = time.perf_counter() - started
    store.configure(Limits())
    await put(store, b"after")
    # WAIT blocks for its whole timeout when no replica answers: each wait counts.
    assert long >= 0.6, long
    assert short < 0.5, short


async def test_the_replica_wait_is_capped_below_the_answer_timeout(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ack deadline longer than the socket's answer timeout must not make a
    # WAIT read as Redis being gone: the wait is capped (made short here).
    assert redis_store.MAX_REPLICA_WAIT_MS < redis_store.ANSWER_TIMEOUT * 1000
    monkeypatch.setattr(redis_store, "MAX_REPLICA_WAIT_MS", 100)
    store.configure(Limits(min_replicas=1, replica_wait_ms=3_600_000))
    started = time.perf_counter()
    with pytest.raises(StoreError, match="WAIT 1"):
        await put(store, b"bounded")
    assert time.perf_counter() - started < 2
    assert store.health() is None


async def test_records_from_before_the_retention_index_are_indexed_a_step_at_a_time_and_pruned(
    redis_server: RedisServer,  # noqa: F811
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Steps of two, through several received_at and five records of one millisecond.
    monkeypatch.setattr(redis_store, "PRUNE_STEP", 2)
    now = [10.0]
    store = RedisStore(redis_server.url, Limits(), prefix=prefix, clock=lambda: now[0])
    await store.open()
    try:
        delivered = [
            await store.append("a", bytes([i]), "s", at)
            for i, at in enumerate([1_000, 1_000, 1_000, 1_000, 1_000, 1_500, 1_500])
        ]
        now[0] = 20.0
        for d in delivered:
            assert d is not None
            store.ack("a", d.seq)
        await store.pending("a", 0, 1)  # a round trip: the acks are committed
        await store.append("b", b"x", "s", 1_000)
        await store.append("b", b"y", "s", 2_000)
        now[0] = 30.0
        expired = await store.expire(older_than=5_000)
        assert len(expired) == 2
        # As stores wrote them before the index: in their lists alone, the expired
        # with no expiry time.
        client = redis_server.client()
        for e in expired:
            client.hdel(f"{prefix}r:{e.seq}", "xt")
        client.delete(f"{prefix}retain:delivered", f"{prefix}retain:expired")
        client.delete(f"{prefix}retain:indexed")

        async def prune(delivered_before: int, expired_before: int) -> int:
            # As the relay calls it, with a max_unacked_age of 10 s.
            return await store.prune(delivered_before, expired_before, expired_before - 10_000)

        # Delivered ones by their ack time (they all have it), as any other.
        assert await prune(20_000, 0) == 0
        assert client.exists(f"{prefix}retain:indexed")
        assert not client.exists(f"{prefix}retain:cursors")
        assert await prune(20_001, 0) == 7
        # Expired ones by receipt plus max_unacked_age: at 11 s and 12 s.
        assert await prune(0, 11_000) == 0
        assert await prune(0, 11_001) == 1
        assert await prune(0, 12_001) == 1
        assert await store.records(None, None, 10) == []
    finally:
        await store.close()


async def test_the_cli_counts_and_purges_a_tenants_queue_beside_a_running_store(
    store: RedisStore,
    redis_server: RedisServer,  # noqa: F811
    prefix: str,
) -> None:
    for i in range(3):
        await put(store, bytes([65 + i]))
    await put(store, b"other", tenant="b")
    first, *_ = await store.pending("a", 0, 10)
    store.ack("a", first.seq)
    await store.pending("a", 0, 10)  # a round trip: the ack is committed
    assert count_unacked(redis_server.url, "a", prefix) == 2
    assert purge_tenant(redis_server.url, "a", prefix) == 2
    assert count_unacked(redis_server.url, "a", prefix) == 0
    assert await store.pending("a", 0, 10) == []
    assert count_unacked(redis_server.url, "b", prefix) == 1


def test_the_cli_helpers_name_an_unreachable_redis_as_a_store_error(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreError, match=r"127\.0\.0\.1") as raised:
        count_unacked(url, "a")
    assert "hunter2" not in str(raised.value)
    config = RelayConfig().replace(store="redis", redis_url=url)
    with pytest.raises(TenantError):
        cli_count_unacked(config, StateDir(tmp_path), "a")
