"""Store behaviour, written against :class:`appliance.store.Store`.

The ``store`` fixture is parametrised by implementation: SQLite, and Redis
Streams on a real ``redis-server`` (tests/support/redis.py), pass the same
tests. Tests of what only SQLite has (its file, WAL, migrations, the CLI's
file helpers) say so with ``SQLITE_ONLY`` or build a :class:`SQLiteStore` themselves.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from appliance.errors import QueueFull, StoreError, UnknownWebhook
from appliance.signature import sign
from appliance.state import StateDir
from appliance.store import Delivery, Limits, Store, WebhookState, wait_until
from appliance.store.redis import RedisStore
from appliance.store.sqlite import SQLiteStore, purge_file
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (a fixture)

StoreFactory = Callable[[Limits], Store]
#: For a test of SQLite's own behaviour: the ``store`` fixture on SQLite alone.
SQLITE_ONLY = pytest.mark.parametrize("make_store", ["sqlite"], indirect=True)


class Clock:
    """The store's clock, movable by tests; starts at the real time like received_at."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    clock = Clock()
    request.node.clock = clock
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        # A key prefix of its own: this test sees nothing of the others'.
        prefix = f"test-{uuid.uuid4().hex[:12]}:"

        def make_redis(limits: Limits) -> Store:
            return RedisStore(server.url, limits, clock=clock, prefix=prefix)

        return make_redis

    def make(limits: Limits) -> Store:
        return SQLiteStore(tmp_path / "store.db", limits, clock=clock)

    return make


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store(Limits(queue_cap=5, dedupe_window=300))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def clock(make_store: StoreFactory, request: pytest.FixtureRequest) -> Clock:
    """The ``store``'s clock: what it records as the time of an ack or an expiry."""
    found: Clock = request.node.clock
    return found


async def acked_at(store: Store, clock: Clock, delivery: Delivery | None, ms: int) -> None:
    """Have ``delivery`` acked at ``ms`` by the store's clock, and committed."""
    assert delivery is not None
    clock.now = ms / 1000
    store.ack(delivery.tenant, delivery.seq)
    await store.pending(delivery.tenant, 0, 1)  # a round trip: the ack is committed


async def put(store: Store, tenant: str, body: bytes, sig: str = "sig") -> Delivery | None:
    return await store.append(tenant, body, sig, int(time.time() * 1000))


async def test_append_returns_increasing_delivery_ids(store: Store) -> None:
    first = await put(store, "a", b"1")
    second = await put(store, "a", b"2")
    assert first is not None
    assert second is not None
    assert second.seq > first.seq


async def test_delivery_ids_are_opaque_and_never_repeat(store: Store) -> None:
    stored = [await put(store, "a", bytes([i])) for i in range(3)]
    ids = [d.id for d in stored if d is not None]
    assert len(set(ids)) == 3
    for wire_id in ids:
        # 96 random bits: nothing in it counts the relay's traffic.
        assert re.fullmatch(r"d-[0-9a-f]{24}", wire_id)
    assert [d.id for d in await store.pending("a", 0, 10)] == ids


async def test_a_repeated_ack_lowers_the_depth_once(store: Store) -> None:
    one = await put(store, "a", b"1")
    await put(store, "a", b"2")
    assert one is not None
    store.ack("a", one.seq)
    store.ack("a", one.seq)
    await store.pending("a", 0, 10)  # a round trip: the acks are committed
    store.ack("a", one.seq)
    await store.pending("a", 0, 10)
    assert store.depth("a") == 1


async def test_a_page_ends_with_the_row_that_reaches_its_byte_limit(store: Store) -> None:
    for i in range(4):
        await put(store, "a", bytes([65 + i]) * 100)
    page = await store.pending("a", 0, 10, max_bytes=250)
    assert [len(d.body) for d in page] == [100, 100, 100]
    (big,) = await store.pending("a", 0, 10, max_bytes=10)
    assert big.body == b"A" * 100
    assert len(await store.pending("a", 0, 10, max_bytes=401)) == 4


async def test_signature_spellings_of_one_digest_are_one_retry(store: Store) -> None:
    body = b'{"events":[{"type":"message"}]}'
    signature = sign(b"secret", body)
    # The last character before the padding carries 2 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    base = alphabet.index(signature[-2]) & ~0b11
    spellings = [signature[:-2] + alphabet[base + low] + "=" for low in range(4)]
    assert signature in spellings
    results = [await put(store, "a", body, s) for s in spellings]
    assert sum(r is not None for r in results) == 1


async def test_pending_is_fifo_per_tenant(store: Store) -> None:
    for i in range(4):
        await put(store, "a", f"a{i}".encode())
        await put(store, "b", f"b{i}".encode())
    bodies = [d.body for d in await store.pending("a", 0, 10)]
    assert bodies == [b"a0", b"a1", b"a2", b"a3"]


async def test_pending_pages_after_a_seq(store: Store) -> None:
    seqs = [(await put(store, "a", bytes([65 + i]))).seq for i in range(4)]  # type: ignore[union-attr]
    page = await store.pending("a", seqs[1], 10)
    assert [d.seq for d in page] == seqs[2:]
    assert len(await store.pending("a", 0, 2)) == 2


async def test_acked_webhooks_are_not_pending(store: Store) -> None:
    one = await put(store, "a", b"1")
    await put(store, "a", b"2")
    assert one is not None
    store.ack("a", one.seq)
    assert [d.body for d in await store.pending("a", 0, 10)] == [b"2"]
    assert store.depth("a") == 1


async def test_an_ack_from_another_tenant_changes_nothing(store: Store) -> None:
    one = await put(store, "a", b"1")
    assert one is not None
    store.ack("b", one.seq)
    assert [d.seq for d in await store.pending("a", 0, 10)] == [one.seq]


async def test_mark_sent_counts_attempts(store: Store) -> None:
    one = await put(store, "a", b"1")
    assert one is not None
    store.mark_sent([one.seq])
    store.mark_sent([one.seq])
    (row,) = await store.pending("a", 0, 10)
    assert row.attempts == 2


async def test_a_retry_of_the_same_bytes_and_signature_is_stored_once(store: Store) -> None:
    first = await put(store, "a", b"same", "s1")
    again = await put(store, "a", b"same", "s1")
    assert first is not None
    assert again is None
    assert len(await store.pending("a", 0, 10)) == 1


async def test_concurrent_retries_are_stored_once(store: Store) -> None:
    futures = [store.append("a", b"same", "s1", 1000) for _ in range(5)]
    results = await asyncio.gather(*futures)
    assert sum(r is not None for r in results) == 1
    assert len(await store.pending("a", 0, 10)) == 1


async def test_redeliveries_with_different_bytes_are_stored_again(store: Store) -> None:
    await put(store, "a", b'{"isRedelivery":false}', "s1")
    await put(store, "a", b'{"isRedelivery":true}', "s2")
    assert len(await store.pending("a", 0, 10)) == 2


async def test_same_body_for_another_tenant_is_not_a_retry(store: Store) -> None:
    await put(store, "a", b"x", "s")
    assert await put(store, "b", b"x", "s") is not None


async def test_retry_dedupe_forgets_after_its_window(
    store: Store, request: pytest.FixtureRequest
) -> None:
    await put(store, "a", b"x", "s")
    request.node.clock.now += 301
    assert await put(store, "a", b"x", "s") is not None


async def test_retry_dedupe_survives_a_restart(make_store: StoreFactory) -> None:
    limits = Limits(queue_cap=5)
    first = make_store(limits)
    await first.open()
    await put(first, "a", b"x", "s")
    await first.close()
    second = make_store(limits)
    await second.open()
    try:
        assert await put(second, "a", b"x", "s") is None
    finally:
        await second.close()


async def test_a_full_queue_refuses_at_once_and_keeps_what_it_has(store: Store) -> None:
    for i in range(5):
        await put(store, "a", bytes([i]))
    with pytest.raises(QueueFull):
        store.append("a", b"one too many", "s", 1000)
    assert store.depth("a") == 5
    assert await put(store, "b", b"other tenants unaffected") is not None


async def test_an_ack_makes_room_under_the_cap(store: Store) -> None:
    rows = [await put(store, "a", bytes([i])) for i in range(5)]
    assert rows[0] is not None
    store.ack("a", rows[0].seq)
    assert await put(store, "a", b"fits now") is not None


async def test_expire_marks_old_unacked_webhooks_and_reports_them(store: Store) -> None:
    old = await store.append("a", b"old", "s", 1_000)
    new = await store.append("a", b"new", "s", 9_000)
    assert old is not None
    assert new is not None
    expired = await store.expire(older_than=5_000)
    assert [(e.tenant, e.seq) for e in expired] == [("a", old.seq)]
    assert [d.seq for d in await store.pending("a", 0, 10)] == [new.seq]
    assert store.depth("a") == 1


async def test_oldest_is_each_queues_head_and_moves_on_once_it_is_acked(store: Store) -> None:
    head = await store.append("a", b"1", "s", 1_000)
    await store.append("a", b"2", "s", 2_000)
    only = await store.append("b", b"3", "s", 3_000)
    assert head is not None
    assert only is not None
    assert store.oldest() == {"a": 1_000, "b": 3_000}
    store.ack("a", head.seq)
    store.ack("b", only.seq)
    await store.pending("a", 0, 10)  # a round trip: the acks are committed
    assert store.oldest() == {"a": 2_000}


async def test_expired_webhooks_are_not_the_oldest(store: Store) -> None:
    await store.append("a", b"old", "s", 1_000)
    await store.append("a", b"new", "s", 9_000)
    await store.expire(older_than=5_000)
    assert store.oldest() == {"a": 9_000}


async def test_prune_deletes_only_acked_and_expired_rows(store: Store) -> None:
    acked = await store.append("a", b"1", "s", 1_000)
    await store.append("a", b"2", "s", 1_000)
    assert acked is not None
    store.ack("a", acked.seq)
    assert await store.prune(delivered_before=10**15, expired_before=10**15) == 1
    assert len(await store.pending("a", 0, 10)) == 1


async def test_prune_keeps_delivered_and_expired_rows_by_their_own_horizons(
    store: Store, clock: Clock
) -> None:
    delivered_old = await store.append("a", b"d-old", "s", 1_000)
    delivered_new = await store.append("a", b"d-new", "s", 3_000)
    await store.append("a", b"e-old", "s", 1_000)
    await store.append("a", b"e-new", "s", 3_000)
    await acked_at(store, clock, delivered_old, 4_000)
    await acked_at(store, clock, delivered_new, 6_000)
    clock.now = 7.0
    await store.expire(older_than=5_000)  # both expire at 7_000
    # Delivered rows acked before 5_000 go, expired ones are kept back to 0: only d-old.
    assert await store.prune(delivered_before=5_000, expired_before=0) == 1
    left = {(r.state, r.received_at) for r in await store.records(None, None, 10)}
    assert left == {
        (WebhookState.DELIVERED, 3_000),
        (WebhookState.EXPIRED, 1_000),
        (WebhookState.EXPIRED, 3_000),
    }
    assert await store.prune(delivered_before=0, expired_before=7_000) == 0
    assert await store.prune(delivered_before=0, expired_before=7_001) == 2
    assert await store.prune(delivered_before=6_001, expired_before=0) == 1
    assert await store.records(None, None, 10) == []


async def test_a_webhook_acked_late_is_kept_retain_delivered_after_its_ack(
    store: Store, clock: Clock
) -> None:
    # Received at 1 s; the bridge was away, and acked it at 100 s.
    late = await store.append("a", b"late", "s", 1_000)
    prompt = await store.append("a", b"prompt", "s", 1_000)
    await acked_at(store, clock, prompt, 2_000)
    await acked_at(store, clock, late, 100_000)
    assert late is not None
    # A retention of 10 s, at 60 s: by receipt both would go; by ack only the prompt one.
    assert await store.prune(delivered_before=50_000, expired_before=0) == 1
    found = await store.record(late.id)
    assert found is not None
    assert (found[0].state, found[0].acked_at) == (WebhookState.DELIVERED, 100_000)
    # Until 10 s after its ack: then it goes.
    assert await store.prune(delivered_before=100_000, expired_before=0) == 0
    assert await store.prune(delivered_before=100_001, expired_before=0) == 1
    assert await store.record(late.id) is None


async def test_a_webhook_expired_late_is_kept_retain_expired_after_its_expiry(
    store: Store, clock: Clock
) -> None:
    # The relay was stopped from 2 s to 100 s, longer than max_unacked_age and
    # retain_expired together, and expires at its start what it received before.
    late = await store.append("a", b"late", "s", 1_000)
    assert late is not None
    clock.now = 100.0
    (expired,) = await store.expire(older_than=50_000)
    assert expired.id == late.id
    found = await store.record(late.id)
    assert found is not None
    assert (found[0].state, found[0].expired_at, found[0].acked_at) == (
        WebhookState.EXPIRED,
        100_000,
        None,
    )
    # Received long before either horizon, it stays until retain_expired after expiry.
    assert await store.prune(delivered_before=10**15, expired_before=60_000) == 0
    assert await store.prune(delivered_before=10**15, expired_before=100_000) == 0
    assert [r.id for r in await store.records("a", WebhookState.EXPIRED, 10)] == [late.id]
    (copy,) = await store.replay([late.id])  # still replayable meanwhile
    assert copy.replay_of == late.id
    assert await store.prune(delivered_before=0, expired_before=100_001) == 1
    assert await store.record(late.id) is None


async def test_a_purged_tenants_retained_webhooks_leave_nothing_to_prune(
    store: Store, clock: Clock
) -> None:
    await acked_at(store, clock, await store.append("a", b"delivered", "s", 1_000), 2_000)
    await store.append("a", b"expired", "s", 1_000)
    clock.now = 3.0
    await store.expire(older_than=2_000)
    kept = await store.append("b", b"other tenant", "s", 1_000)
    await acked_at(store, clock, kept, 4_000)
    assert await store.purge("a") == 0
    assert await store.prune(delivered_before=10**15, expired_before=10**15) == 1
    assert await store.records(None, None, 10) == []


async def test_queued_rows_are_never_pruned(store: Store) -> None:
    await store.append("a", b"waiting", "s", 1_000)
    assert await store.prune(delivered_before=10**15, expired_before=10**15) == 0
    assert [d.body for d in await store.pending("a", 0, 10)] == [b"waiting"]


async def test_a_delivered_webhook_is_kept_with_its_ack_time(
    store: Store, request: pytest.FixtureRequest
) -> None:
    stored = await put(store, "a", b'{"events":[1]}', "sig-a")
    assert stored is not None
    store.mark_sent([stored.seq])
    store.ack("a", stored.seq)
    await store.pending("a", 0, 10)  # a round trip: the ack is committed
    found = await store.record(stored.id)
    assert found is not None
    record, body, sig = found
    assert (record.id, record.tenant, record.state) == (stored.id, "a", WebhookState.DELIVERED)
    assert (record.attempts, record.size, record.replay_of) == (1, 14, None)
    assert record.received_at == stored.received_at
    assert record.acked_at is not None
    assert abs(record.acked_at - request.node.clock.now * 1000) < 1_000
    assert (body, sig) == (b'{"events":[1]}', "sig-a")


async def test_an_unknown_delivery_id_has_no_record(store: Store) -> None:
    await put(store, "a", b"1")
    assert await store.record("d-000000000000000000000000") is None


async def test_records_are_newest_first_and_filtered_by_tenant_and_state(store: Store) -> None:
    a1 = await put(store, "a", b"a1")
    b1 = await put(store, "b", b"b1")
    a2 = await put(store, "a", b"a2")
    a3 = await store.append("a", b"a3", "s", 1_000)  # old: expires below
    assert a1 is not None
    assert b1 is not None
    assert a2 is not None
    assert a3 is not None
    store.ack("a", a1.seq)
    await store.expire(older_than=2_000)
    everything = await store.records(None, None, 10)
    assert [r.id for r in everything] == [a3.id, a2.id, b1.id, a1.id]
    assert [r.id for r in await store.records("a", None, 10)] == [a3.id, a2.id, a1.id]
    assert [r.id for r in await store.records(None, WebhookState.QUEUED, 10)] == [a2.id, b1.id]
    assert [r.id for r in await store.records("a", WebhookState.QUEUED, 10)] == [a2.id]
    assert [r.id for r in await store.records(None, WebhookState.DELIVERED, 10)] == [a1.id]
    assert [r.id for r in await store.records(None, WebhookState.EXPIRED, 10)] == [a3.id]
    assert [r.id for r in await store.records("b", WebhookState.EXPIRED, 10)] == []
    assert [r.id for r in await store.records(None, None, 2)] == [a3.id, a2.id]
    assert [r.size for r in everything] == [2, 2, 2, 2]


async def test_a_replay_is_queued_like_a_new_webhook(store: Store) -> None:
    seen: list[Delivery] = []
    store.subscribe(seen.extend)
    original = await put(store, "a", b"body-1", "sig-1")
    assert original is not None
    store.ack("a", original.seq)
    (copy,) = await store.replay([original.id])
    assert copy.id != original.id
    assert copy.seq > original.seq
    assert (copy.tenant, copy.body, copy.signature) == ("a", b"body-1", "sig-1")
    assert (copy.replay_of, copy.attempts) == (original.id, 0)
    assert [d.id for d in seen] == [original.id, copy.id]
    assert seen[1].replay_of == original.id
    (pending,) = await store.pending("a", 0, 10)
    assert (pending.id, pending.replay_of, pending.body) == (copy.id, original.id, b"body-1")
    assert store.depth("a") == 1
    found = await store.record(copy.id)
    assert found is not None
    assert (found[0].state, found[0].replay_of) == (WebhookState.QUEUED, original.id)
    assert found[1:] == (b"body-1", "sig-1")


async def test_a_replay_is_never_a_retry_and_leaves_retry_dedupe_alone(store: Store) -> None:
    original = await put(store, "a", b"x", "s")
    assert original is not None
    first, second = await store.replay([original.id, original.id])
    (third,) = await store.replay([original.id])
    assert len({first.id, second.id, third.id}) == 3
    assert store.depth("a") == 4
    # LINE's own retry of the original is still a known duplicate.
    assert await put(store, "a", b"x", "s") is None


async def test_an_expired_webhook_can_be_replayed(store: Store) -> None:
    old = await store.append("a", b"late", "s", 1_000)
    assert old is not None
    await store.expire(older_than=2_000)
    assert await store.pending("a", 0, 10) == []
    (copy,) = await store.replay([old.id])
    assert [d.id for d in await store.pending("a", 0, 10)] == [copy.id]
    assert copy.received_at > old.received_at  # so the copy is not expired at once


async def test_a_replay_naming_an_unknown_id_queues_nothing(store: Store) -> None:
    known = await put(store, "a", b"1")
    assert known is not None
    store.ack("a", known.seq)
    with pytest.raises(UnknownWebhook) as refused:
        await store.replay([known.id, "d-nope"])
    assert refused.value.delivery_id == "d-nope"
    assert await store.pending("a", 0, 10) == []
    assert store.depth("a") == 0
    assert len(await store.records(None, None, 10)) == 1


async def test_a_pruned_webhook_cannot_be_replayed(store: Store, clock: Clock) -> None:
    gone = await store.append("a", b"1", "s", 1_000)
    assert gone is not None
    await acked_at(store, clock, gone, 1_500)
    assert await store.prune(delivered_before=2_000, expired_before=2_000) == 1
    assert await store.record(gone.id) is None
    with pytest.raises(UnknownWebhook):
        await store.replay([gone.id])


async def test_a_replay_past_the_queue_cap_is_refused_whole(store: Store) -> None:
    rows = [await put(store, "a", bytes([i])) for i in range(4)]
    assert rows[0] is not None
    with pytest.raises(QueueFull):
        await store.replay([rows[0].id, rows[0].id])
    assert store.depth("a") == 4
    (copy,) = await store.replay([rows[0].id])
    assert store.depth("a") == 5
    assert copy.replay_of == rows[0].id


async def test_a_replay_survives_a_restart_as_a_replay(make_store: StoreFactory) -> None:
    first = make_store(Limits())
    await first.open()
    original = await put(first, "a", b"1")
    assert original is not None
    first.ack("a", original.seq)
    (copy,) = await first.replay([original.id])
    await first.close()
    second = make_store(Limits())
    await second.open()
    try:
        (pending,) = await second.pending("a", 0, 10)
        assert (pending.id, pending.replay_of) == (copy.id, original.id)
        assert second.depths() == {"a": 1}
    finally:
        await second.close()


async def test_purge_drops_a_tenant_and_counts_its_unacked(store: Store) -> None:
    await put(store, "a", b"1")
    await put(store, "a", b"2")
    await put(store, "b", b"3")
    assert await store.purge("a") == 2
    assert await store.pending("a", 0, 10) == []
    assert store.depth("a") == 0
    assert len(await store.pending("b", 0, 10)) == 1


async def test_purge_before_a_time_keeps_newer_rows(store: Store) -> None:
    await store.append("a", b"old", "s", 1_000)
    await store.append("a", b"new", "s", 9_000)
    assert await store.purge("a", received_before=5_000) == 1
    assert [d.body for d in await store.pending("a", 0, 10)] == [b"new"]
    assert store.depth("a") == 1


@SQLITE_ONLY
async def test_purge_file_works_beside_an_open_store(store: Store, tmp_path: Path) -> None:
    await put(store, "a", b"1")
    await put(store, "b", b"2")
    assert purge_file(tmp_path / "store.db", "a") == 1
    assert await store.pending("a", 0, 10) == []
    assert len(await store.pending("b", 0, 10)) == 1


async def test_commit_listeners_get_each_new_webhook_once(store: Store) -> None:
    seen: list[bytes] = []
    store.subscribe(lambda batch: seen.extend(d.body for d in batch))
    await put(store, "a", b"1")
    await put(store, "a", b"1")  # a retry: not new
    await put(store, "a", b"2")
    assert seen == [b"1", b"2"]


async def test_depths_survive_a_restart(make_store: StoreFactory) -> None:
    first = make_store(Limits())
    await first.open()
    for i in range(3):
        await put(first, "a", bytes([i]))
    await first.close()
    second = make_store(Limits())
    await second.open()
    try:
        assert second.depths() == {"a": 3}
    finally:
        await second.close()


async def test_delivery_ids_are_never_reused_after_pruning(make_store: StoreFactory) -> None:
    store = make_store(Limits())
    await store.open()
    first = await store.append("a", b"1", "s", 1)
    assert first is not None
    store.ack("a", first.seq)
    await store.pending("a", 0, 1)  # a round trip: the ack is committed
    assert await store.prune(delivered_before=10**15, expired_before=10**15) == 1
    second = await store.append("a", b"2", "s", 20)
    await store.close()
    assert second is not None
    assert second.seq > first.seq


async def test_a_store_from_before_opaque_ids_keeps_its_rows_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE webhooks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, body BLOB NOT NULL,
            signature TEXT NOT NULL, digest BLOB NOT NULL, received_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0);
        INSERT INTO webhooks (tenant, body, signature, digest, received_at)
            VALUES ('a', x'31', 's', x'00', 1);
        """
    )
    old.commit()
    old.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        (row,) = await store.pending("a", 0, 10)
        new = await store.append("a", b"2", "s", 2)
    finally:
        await store.close()
    assert (row.id, row.body) == ("d-000000000001", b"1")
    assert new is not None
    assert new.id != row.id


async def test_a_store_from_before_retention_keeps_its_rows_and_gains_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE webhooks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, tenant TEXT NOT NULL,
            body BLOB NOT NULL, signature TEXT NOT NULL, digest BLOB NOT NULL,
            received_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            state INTEGER NOT NULL DEFAULT 0);
        INSERT INTO webhooks (id, tenant, body, signature, digest, received_at, state)
            VALUES ('d-queued', 'a', x'31', 's', x'00', 1, 0),
                   ('d-acked', 'a', x'3232', 's', x'01', 2, 1);
        """
    )
    old.commit()
    old.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        (queued,) = await store.pending("a", 0, 10)
        records = await store.records("a", None, 10)
        (copy,) = await store.replay(["d-acked"])
    finally:
        await store.close()
    assert (queued.id, queued.replay_of) == ("d-queued", None)
    assert [(r.id, r.state, r.size, r.acked_at) for r in records] == [
        ("d-acked", WebhookState.DELIVERED, 2, None),
        ("d-queued", WebhookState.QUEUED, 1, None),
    ]
    assert (copy.body, copy.replay_of) == (b"22", "d-acked")


async def test_a_store_from_before_expiry_times_prunes_its_old_rows_by_receipt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE webhooks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, tenant TEXT NOT NULL,
            body BLOB NOT NULL, signature TEXT NOT NULL, digest BLOB NOT NULL,
            received_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            state INTEGER NOT NULL DEFAULT 0, acked_at INTEGER, replay_of TEXT);
        INSERT INTO webhooks (id, tenant, body, signature, digest, received_at, state, acked_at)
            VALUES ('d-expired', 'a', x'31', 's', x'00', 1000, 2, NULL),
                   ('d-acked', 'a', x'32', 's', x'01', 1000, 1, 50000),
                   ('d-acked-unstamped', 'a', x'33', 's', x'02', 1000, 1, NULL);
        """
    )
    old.commit()
    old.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        found = await store.record("d-expired")
        assert found is not None
        assert found[0].expired_at is None  # not known: never made up
        # Expired before expiry times were kept: by receipt, before expired_received_before
        # (the relay: max_unacked_age before expired_before), whatever expired_before says.
        # Delivered with no ack time (before acks were kept): by receipt.
        pruned = await store.prune(2_000, expired_before=10**15, expired_received_before=1_000)
        assert pruned == 1
        assert await store.record("d-acked-unstamped") is None
        assert await store.prune(2_000, expired_before=10**15, expired_received_before=1_001) == 1
        assert await store.record("d-expired") is None
        # One acked at 50 s is kept by its ack time, as any other.
        assert await store.prune(50_000, expired_before=0) == 0
        assert await store.prune(50_001, expired_before=0) == 1
    finally:
        await store.close()


@SQLITE_ONLY
async def test_the_prune_is_one_statement_of_index_searches(store: Store, clock: Clock) -> None:
    # However many rows are kept or queued, the prune reads only what it deletes
    # (and its IS NULL search, empty once a store's rows are all stamped).
    await acked_at(store, clock, await store.append("a", b"1", "s", 1_000), 2_000)
    assert isinstance(store, SQLiteStore)
    assert store._db is not None
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        assert await store.prune(delivered_before=10**15, expired_before=10**15) == 1
    finally:
        store._db.set_trace_callback(None)
    (delete,) = [s for s in statements if s.startswith("DELETE")]
    plan = [row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + delete)]
    assert not [step for step in plan if step.startswith("SCAN")], plan
    searches = [step for step in plan if step.startswith("SEARCH")]
    assert len(searches) == 4, plan
    assert all("webhooks_acked" in step for step in searches[:2]), plan
    assert all("webhooks_expired_at" in step for step in searches[2:]), plan


async def test_pruned_and_purged_bodies_are_not_left_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    await store.open()
    pruned = await store.append("a", b"PRUNED-BODY-" * 50, "s", 1_000)
    await store.append("b", b"PURGED-BODY-" * 50, "s", 1_000)
    await store.append("c", b"KEPT-BODY-" * 50, "s", 1_000)
    assert pruned is not None
    store.ack("a", pruned.seq)
    assert await store.prune(delivered_before=10**15, expired_before=10**15) == 1
    await store.purge("b")
    await store.close()  # checkpoints the WAL into the file
    data = path.read_bytes()
    assert b"KEPT-BODY-" in data
    assert b"PRUNED-BODY-" not in data
    assert b"PURGED-BODY-" not in data


async def test_the_store_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    previous = os.umask(0o022)
    try:
        store = SQLiteStore(state.store)
        await store.open()
        await store.append("a", b"1", "s", 1)
        await store.close()
    finally:
        os.umask(previous)
    assert state.path.stat().st_mode & 0o777 == 0o700
    for path in (state.store, state.store.with_name(state.store.name + "-wal")):
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600, path.name


async def test_wait_until_does_not_cancel_a_slow_future() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert not await wait_until(future, 0.01)
    assert not future.cancelled()
    future.set_result(1)
    assert await wait_until(future, 0.01)


async def test_a_failure_after_the_deadline_is_not_logged_as_never_retrieved() -> None:
    # The caller answered 503 at the deadline; the store's later StoreError for
    # that webhook (Redis replicas behind, say) is nobody's to report.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        for timeout in (0.01, 0.0):
            future: asyncio.Future[int] = loop.create_future()
            assert not await wait_until(future, timeout)
            future.set_exception(StoreError("too late"))
            await asyncio.sleep(0)  # its done callbacks run
            del future
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


# -- SQLite specifics --------------------------------------------------------


async def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_concurrent_appends_share_one_transaction(tmp_path: Path) -> None:
    batches: list[int] = []
    store = SQLiteStore(tmp_path / "s.db", on_batch=lambda n, _: batches.append(n))
    await store.open()
    await asyncio.gather(*(store.append("a", bytes([i]), "s", 1) for i in range(50)))
    await store.close()
    assert sum(batches) == 50
    assert len(batches) < 50  # grouped: fewer commits (fsyncs) than webhooks


async def test_a_failed_commit_fails_every_append_of_its_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    # Another connection holds the write lock past busy_timeout? Too slow; make the
    # table unwritable instead, as a full disk or a broken file would.
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    blocker.execute(
        "CREATE TRIGGER no_insert BEFORE INSERT ON webhooks BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    futures = [store.append("a", bytes([i]), "s", 1) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert store.depth("a") == 0  # nothing counted that was not kept
    blocker.execute("DROP TRIGGER no_insert")
    assert await store.append("a", b"later", "s", 1) is not None
    await store.close()


CRASH_MID_BATCH = textwrap.dedent(
    """
    import os, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")
    for i in range(100):
        db.execute(
            "INSERT INTO webhooks (tenant, body, signature, digest, received_at) "
            "VALUES ('a', ?, 's', randomblob(32), 1)", (b"uncommitted",))
    os._exit(9)  # dies with the transaction open, as kill -9 would
    """
)


async def test_a_crash_mid_batch_keeps_every_committed_webhook_and_none_of_the_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    committed = [await store.append("a", bytes([i]), "s", 1) for i in range(10)]
    await store.close()
    crash = subprocess.run([sys.executable, "-c", CRASH_MID_BATCH, str(path)], check=False)
    assert crash.returncode == 9
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        pending = await reopened.pending("a", 0, 1000)
        assert [d.seq for d in pending] == [d.seq for d in committed if d]
        assert reopened.depth("a") == 10
    finally:
        await reopened.close()
    assert os.path.exists(path)


async def test_a_locked_database_delays_the_batch_and_loses_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a backup or a CLI purge holds the write lock
    future = store.append("a", b"waits", "s", 1)
    await asyncio.sleep(0.05)
    assert not future.done()
    other.execute("ROLLBACK")
    other.close()
    delivery = await asyncio.wait_for(future, 5)
    assert delivery is not None
    assert [d.body for d in await store.pending("a", 0, 10)] == [b"waits"]
    await store.close()


async def test_what_was_answered_is_in_the_file_after_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await asyncio.gather(*(store.append("a", bytes([i]), "s", 1) for i in range(20)))
    await store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0] == 20
