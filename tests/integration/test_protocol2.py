"""Protocol 2 of the bridge connection (PROTOCOL.md §2) against a real relay.

Bridges here are python-websockets clients offering the ``linerelay.v2``
subprotocol (tests/integration/helpers.py ``Bridge.open(..., protocol=2)``);
one test puts a protocol 1 bridge of another tenant beside them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.protocol import SUBPROTOCOL_V2
from tests.integration.helpers import (
    Bridge,
    Harness,
    post_tags,
    running_relay,
    tag_of,
)

pytestmark = pytest.mark.integration

WINDOW = 4
WINDOW_V2 = 6
CONFIG = f"""
bridge_window = {WINDOW}
bridge_window_v2 = {WINDOW_V2}
ping_interval = 1.0
bridge_idle_timeout = 3.0
"""
#: The fields of a protocol 1 ``webhook`` frame, without ``type``.
ITEM_FIELDS = {"id", "tenant", "body", "signature", "received_at", "attempt"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with running_relay(tmp_path_factory, "protocol2", config=CONFIG) as h:
        yield h


def flat(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [item for batch in batches for item in batch]


async def test_offering_linerelay_v2_selects_it_and_the_hello_gives_the_v2_window(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        assert bridge.ws.subprotocol == SUBPROTOCOL_V2
        assert bridge.hello == {
            "type": "hello",
            "protocol": 2,
            "tenant": tenant.id,
            "window": WINDOW_V2,
        }
    async with await Bridge.open(harness, tenant.token) as bridge:
        assert bridge.ws.subprotocol is None
        assert (bridge.hello["protocol"], bridge.hello["window"]) == (1, WINDOW)


async def test_webhooks_queued_while_offline_arrive_batched_in_order_of_receipt(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    tags = [f"offline-{i}" for i in range(5)]
    bodies = await post_tags(harness, tenant, *tags)
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        batches = await bridge.items(len(tags))
        items = flat(batches)
        assert len(batches) < len(items), f"not batched: {[len(b) for b in batches]}"
        assert [tag_of(item) for item in items] == tags
        assert [item["body"].encode() for item in items] == bodies
        assert all(set(item) == ITEM_FIELDS for item in items)
        assert {(item["tenant"], item["attempt"]) for item in items} == {(tenant.id, 1)}
        stamps = [item["received_at"] for item in items]
        assert stamps == sorted(stamps)
        await bridge.ack_ids(*(item["id"] for item in items))
        # Live traffic on the same connection: batches again, in order.
        await post_tags(harness, tenant, "live-1", "live-2")
        live = flat(await bridge.items(2))
        assert [tag_of(item) for item in live] == ["live-1", "live-2"]
        await bridge.ack_ids(*(item["id"] for item in live))
    # One ack frame per batch counted for every id in it: nothing comes back.
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        assert await bridge.silent_for(1.0)


async def test_the_window_counts_webhooks_not_frames(harness: Harness) -> None:
    tenant = harness.tenant()
    tags = [f"w-{i}" for i in range(WINDOW_V2 + 3)]
    await post_tags(harness, tenant, *tags)
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        # However few frames carried them, no more than the window of webhooks.
        first = flat(await bridge.items(WINDOW_V2))
        assert [tag_of(item) for item in first] == tags[:WINDOW_V2]
        assert await bridge.silent_for(1.5)
        await bridge.ack_ids(first[0]["id"], first[1]["id"])
        second = flat(await bridge.items(2))
        assert [tag_of(item) for item in second] == tags[WINDOW_V2 : WINDOW_V2 + 2]
        assert await bridge.silent_for(1.0)
        await bridge.ack_ids(*(item["id"] for item in first[2:] + second))
        last = flat(await bridge.items(1))
        assert [tag_of(item) for item in last] == tags[-1:]
        await bridge.ack_ids(last[0]["id"])


async def test_a_partial_ack_leaves_the_rest_to_be_redelivered_after_reconnect(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    tags = [f"partial-{i}" for i in range(5)]
    await post_tags(harness, tenant, *tags)
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        items = flat(await bridge.items(len(tags)))
        await bridge.ack_ids(items[0]["id"], items[2]["id"], items[4]["id"])
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        again = flat(await bridge.items(2))
        assert [item["id"] for item in again] == [items[1]["id"], items[3]["id"]]
        assert [tag_of(item) for item in again] == [tags[1], tags[3]]
        assert [item["attempt"] for item in again] == [2, 2]
        await bridge.ack_ids(*(item["id"] for item in again))
        assert await bridge.silent_for(1.0)


async def test_a_nacked_webhook_of_a_batch_is_redelivered_after_a_backoff_with_attempt_raised(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    await post_tags(harness, tenant, "n-0", "n-1", "n-2")
    async with await Bridge.open(harness, tenant.token, protocol=2) as bridge:
        items = flat(await bridge.items(3))
        await bridge.ack_ids(items[0]["id"], items[2]["id"])
        await bridge.nack(items[1], "queue unavailable")
        nacked_at = time.monotonic()
        (again,) = flat(await bridge.items(1))
        waited = time.monotonic() - nacked_at
        assert (again["id"], again["body"], again["attempt"]) == (
            items[1]["id"],
            items[1]["body"],
            2,
        )
        # nack_backoff is 1 s by default: the redelivery is not immediate.
        assert waited >= 0.5, f"redelivered {waited:.3f}s after the nack"
        await bridge.ack_ids(again["id"])
        await post_tags(harness, tenant, "after")
        (after,) = flat(await bridge.items(1))
        assert (tag_of(after), after["attempt"]) == ("after", 1)
        await bridge.ack_ids(after["id"])


async def test_protocol_1_and_protocol_2_bridges_of_two_tenants_are_served_side_by_side(
    harness: Harness,
) -> None:
    old, new = harness.tenant("p1"), harness.tenant("p2")
    acks_before = harness.metric("linerelay_acks_total")
    async with (
        await Bridge.open(harness, old.token) as old_bridge,
        await Bridge.open(harness, new.token, protocol=2) as new_bridge,
    ):
        assert (old_bridge.hello["protocol"], old_bridge.hello["window"]) == (1, WINDOW)
        assert (new_bridge.hello["protocol"], new_bridge.hello["window"]) == (2, WINDOW_V2)
        await post_tags(harness, new, "new-1")
        await post_tags(harness, old, "old-1")
        await post_tags(harness, new, "new-2", "new-3")
        await post_tags(harness, old, "old-2")
        olds = await old_bridge.webhooks(2)  # protocol 1 frames: one "webhook" each
        for frame in olds:
            await old_bridge.ack(frame)
        news = flat(await new_bridge.items(3))
        await new_bridge.ack_ids(*(item["id"] for item in news))
        assert [tag_of(f) for f in olds] == ["old-1", "old-2"]
        assert {f["tenant"] for f in olds} == {old.id}
        assert [tag_of(item) for item in news] == ["new-1", "new-2", "new-3"]
        assert {item["tenant"] for item in news} == {new.id}
        await post_tags(harness, old, "old-3")
        await post_tags(harness, new, "new-4")
        await old_bridge.ack(await old_bridge.webhook())
        (last,) = flat(await new_bridge.items(1))
        await new_bridge.ack_ids(last["id"])
    assert harness.metric("linerelay_acks_total") - acks_before == 7
    connected = [
        r for r in harness.log_events("bridge connected") if r["tenant"] in (old.id, new.id)
    ]
    assert {(r["tenant"], r["protocol"]) for r in connected} == {(old.id, 1), (new.id, 2)}


async def test_acks_for_ids_not_sent_on_that_connection_are_ignored(harness: Harness) -> None:
    alice, bob = harness.tenant(), harness.tenant()
    await post_tags(harness, bob, "bobs")
    async with await Bridge.open(harness, bob.token, protocol=2) as bob_bridge:
        (bobs,) = flat(await bob_bridge.items(1))
    unknown_before = harness.metric("linerelay_bridge_frames_rejected_total", reason="unknown_id")
    foreign = [bobs["id"], "d-999999999999", "", "nope", "d-" + "9" * 30]
    async with await Bridge.open(harness, alice.token, protocol=2) as bridge:
        await bridge.ack_ids(*foreign)
        await post_tags(harness, alice, "alices")
        (mine,) = flat(await bridge.items(1))
        assert tag_of(mine) == "alices"
        # Ids that were not sent here beside one that was: only that one counts.
        await bridge.ack_ids("d-999999999999", mine["id"], bobs["id"])
    unknown = harness.metric("linerelay_bridge_frames_rejected_total", reason="unknown_id")
    assert unknown - unknown_before >= len(foreign) + 2
    async with await Bridge.open(harness, alice.token, protocol=2) as bridge:
        assert await bridge.silent_for(1.0)
    # Alice's acks of Bob's id did not ack Bob's webhook.
    async with await Bridge.open(harness, bob.token, protocol=2) as bob_bridge:
        (again,) = flat(await bob_bridge.items(1))
        assert (again["id"], again["attempt"]) == (bobs["id"], 2)
        await bob_bridge.ack_ids(again["id"])


async def test_a_standby_bridge_cannot_ack_what_was_sent_to_the_active_one(
    harness: Harness,
) -> None:
    tenant = harness.tenant()
    async with await Bridge.open(harness, tenant.token, protocol=2) as standby:
        active = await Bridge.open(harness, tenant.token, protocol=2)
        await post_tags(harness, tenant, "to-the-active")
        (sent,) = flat(await active.items(1))
        await standby.ack_ids(sent["id"])
        await active.close()
        # The standby takes over and gets it again: its ack above did not count.
        (taken_over,) = flat(await standby.items(1))
        assert (taken_over["id"], taken_over["attempt"]) == (sent["id"], 2)
        await standby.ack_ids(taken_over["id"])
        assert await standby.silent_for(1.0)
