"""What only the Redis store has: waiting for replicas, the periodic walks over the
tenants a slice at a time, and the operator CLI's helpers.

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
from appliance.store import Delivery, Limits, store_limits
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


def count_slices(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The tenants of each HEADS call any store makes from now on, one list a call."""
    slices: list[list[str]] = []
    original = RedisStore._heads_slice

    async def counted(self: RedisStore, cursor: bytes) -> tuple[bytes, list[str]]:
        following, tenants = await original(self, cursor)
        slices.append(tenants)
        return following, tenants

    monkeypatch.setattr(RedisStore, "_heads_slice", counted)
    return slices


async def fill(store: RedisStore, tenants: list[str], each: int) -> dict[str, list[Delivery]]:
    """``each`` webhooks per tenant, received at 1_000 ms and on (distinct per tenant)."""
    stored: dict[str, list[Delivery]] = {}
    for n, tenant in enumerate(tenants):
        for i in range(each):
            delivery = await store.append(tenant, f"{tenant}-{i}".encode(), "s", 1_000 + n)
            assert delivery is not None
            stored.setdefault(tenant, []).append(delivery)
    return stored


async def test_a_refresh_reads_every_stored_tenant_a_slice_at_a_time(
    store: RedisStore,
    redis_server: RedisServer,  # noqa: F811
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More tenants than a small set's compact encoding holds (128 from Redis 7.2):
    # SSCAN's COUNT applies, and one slice cannot hold them all.
    monkeypatch.setattr(redis_store, "HEADS_SLICE", 4)
    tenants = [f"t{n:03d}" for n in range(150)]
    stored = await fill(store, tenants, 1)
    # Received earlier than the head, stored after it: the head is still the first.
    await store.append("t000", b"second", "s", 500)
    store.ack("t001", stored["t001"][0].seq)
    await store.pending("t001", 0, 1)  # a round trip: the ack is committed
    slices = count_slices(monkeypatch)
    # Another process learns every queue from Redis alone, as it opens.
    other = RedisStore(redis_server.url, Limits(), prefix=prefix)
    await other.open()
    try:
        assert len(slices) > 10, slices
        assert all(len(one) < 50 for one in slices)
        assert {t for one in slices for t in one} == set(tenants)
        expected = {t: 1 for t in tenants if t != "t001"} | {"t000": 2}
        assert other.depths() == expected
        assert other.oldest() == {t: 1_000 + n for n, t in enumerate(tenants) if t != "t001"}
    finally:
        await other.close()


async def test_a_tenant_purged_elsewhere_leaves_the_depths_at_the_next_refresh(
    store: RedisStore,
    redis_server: RedisServer,  # noqa: F811
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_store, "HEADS_SLICE", 1)
    await fill(store, ["a", "b", "c"], 2)
    assert purge_tenant(redis_server.url, "a", prefix) == 2  # the CLI, or another node
    assert store.depths() == {"a": 2, "b": 2, "c": 2}  # not known here yet
    await store._refresh()
    assert store.depths() == {"b": 2, "c": 2}
    assert set(store.oldest()) == {"b", "c"}
    # Forgotten, not kept at 0: a relay that saw many tenants come and go keeps none.
    assert "a" not in store._depth
    assert "a" not in store._head


async def test_what_this_process_commits_during_a_refresh_is_not_undone_by_it(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "HEADS_SLICE", 2)
    tenants = [f"t{n:02d}" for n in range(20)]
    stored = await fill(store, tenants, 2)
    original = RedisStore._heads_slice
    done: list[str] = []

    async def meanwhile(self: RedisStore, cursor: bytes) -> tuple[bytes, list[str]]:
        following, tenants = await original(self, cursor)
        if not done and tenants:
            # Between the first slice and the next: a tenant of that slice, read
            # at 2, has one acked here; a new tenant gets its first webhook.
            done.append(tenants[0])
            self.ack(tenants[0], stored[tenants[0]][0].seq)
            assert await self.append("late", b"new", "s", 9_000) is not None
        return following, tenants

    monkeypatch.setattr(RedisStore, "_heads_slice", meanwhile)
    await store._refresh()
    (acked,) = done
    assert store.depth(acked) == 1
    assert store.oldest()[acked] == stored[acked][1].received_at
    assert store.depth("late") == 1
    assert store.oldest()["late"] == 9_000
    expected = {t: 2 for t in tenants} | {acked: 1, "late": 1}
    assert store.depths() == expected
    await store._refresh()  # and Redis agrees
    assert store.depths() == expected


async def test_an_expiry_sweep_goes_a_slice_at_a_time_and_expires_every_old_webhook_once(
    redis_server: RedisServer,  # noqa: F811
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_store, "EXPIRE_SLICE", 4)
    monkeypatch.setattr(redis_store, "EXPIRE_BUDGET", 3)
    batches: list[int] = []
    store = RedisStore(
        redis_server.url, Limits(), prefix=prefix, on_batch=lambda n, _: batches.append(n)
    )
    other = RedisStore(redis_server.url, Limits(), prefix=prefix)
    await store.open()
    await other.open()
    try:
        # (A tenant may be called anything, "heads" too: the reply is not split on it.)
        tenants = [*(f"t{n:03d}" for n in range(149)), "heads"]
        old = await fill(store, tenants, 1)
        old |= await fill(store, ["big"], 10)  # more than a call's budget in one queue
        now = int(time.time() * 1000)
        for tenant in [*tenants, "big"]:
            await store.append(tenant, b"new", "s", now)
        # A tenant another live process owns is that process's to expire.
        theirs = await fill(store, ["theirs"], 1)
        other.claim("theirs")
        await other.pending("theirs", 0, 1)  # a round trip: the lease is taken
        batches.clear()
        expired = await store.expire(older_than=5_000)
        seqs = [e.seq for e in expired]
        assert len(seqs) == len(set(seqs)), "each once"
        assert set(seqs) == {d.seq for ds in old.values() for d in ds}
        assert {e.tenant for e in expired} == {*tenants, "big"}
        # At most 3 a call, each call a batch of its own.
        assert len(batches) >= len(seqs) / 3
        # The heads moved on to the new webhooks.
        assert store.depths() == {t: 1 for t in [*tenants, "big"]} | {"theirs": 1}
        assert store.oldest()["big"] == now
        assert await store.expire(older_than=5_000) == []
        (their_expiry,) = await other.expire(older_than=5_000)
        assert their_expiry.seq == theirs["theirs"][0].seq
    finally:
        await other.close()
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
