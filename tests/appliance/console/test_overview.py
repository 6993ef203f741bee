"""What the console reads of the relay (appliance/console/overview.py).

The pure parts with an injected clock; the tenant rows from real parts: a
tenants file, a SQLite store, the hub and the metrics, with one bridge
connection on the hub's own transport seam (no WebSocket needed, as the hub
is built for).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.config import RelayConfig
from appliance.console.overview import (
    RATE_WINDOW,
    SNAPSHOT_SECONDS,
    AckRates,
    Overview,
    TenantView,
    buckets_of,
    glance_of,
    local_bridges,
    tenant_views,
)
from appliance.hub import BridgeConnection, Hub
from appliance.ingress import Relay
from appliance.metrics import Metrics
from appliance.state import StateDir
from appliance.store import SQLiteStore
from appliance.tenants import SQLiteTenantDirectory, TenantRegistry
from tests.support.bodies import webhook_body
from tests.support.waiting import async_wait_for

# -- acks per second ----------------------------------------------------------------


def test_an_ack_rate_needs_two_reads_a_second_apart() -> None:
    rates = AckRates()
    assert rates.rate("a", "conn", 0, 100.0) is None
    assert rates.rate("a", "conn", 5, 100.5) is None
    assert rates.rate("a", "conn", 20, 102.0) == pytest.approx(10.0)


def test_an_ack_rate_follows_the_last_ten_seconds_of_reads() -> None:
    rates = AckRates()
    rates.rate("a", "conn", 0, 0.0)
    acks = 0
    for second in range(1, 31):
        acks += 100 if second <= 15 else 0  # busy, then idle
        rate = rates.rate("a", "conn", acks, float(second))
    assert rate == pytest.approx(0.0, abs=100 / RATE_WINDOW)


def test_a_new_connection_starts_its_rate_afresh() -> None:
    rates = AckRates()
    rates.rate("a", "old", 1000, 0.0)
    assert rates.rate("a", "new", 3, 2.0) is None
    assert rates.rate("a", "new", 13, 4.0) == pytest.approx(5.0)


def test_a_rate_nobody_read_for_long_starts_afresh() -> None:
    rates = AckRates()
    rates.rate("a", "conn", 0, 0.0)
    assert rates.rate("a", "conn", 50_000, 3 * RATE_WINDOW + 1) is None


def test_tenants_no_longer_connected_are_forgotten() -> None:
    rates = AckRates()
    rates.rate("a", "conn", 0, 0.0)
    rates.rate("b", "conn", 0, 0.0)
    rates.keep_only(["b"])
    rates.rate("a", "conn", 10, 2.0)
    assert rates.rate("a", "conn", 20, 3.0) == pytest.approx(10.0)  # since the new start
    assert rates.rate("b", "conn", 20, 2.0) == pytest.approx(10.0)


# -- the budget ----------------------------------------------------------------------


def test_histogram_bars_from_cumulative_buckets() -> None:
    bars = buckets_of([(0.01, 5), (0.5, 7), (1.0, 7), (2.0, 9), (math.inf, 10)], budget=1.0)
    assert [(b.low, b.high, b.count) for b in bars] == [
        (0.0, 0.01, 5),
        (0.01, 0.5, 2),
        (0.5, 1.0, 0),
        (1.0, 2.0, 2),
        (2.0, math.inf, 1),
    ]
    assert [b.over_budget for b in bars] == [False, False, False, True, True]
    assert [b.open_ended for b in bars] == [False, False, False, False, True]


def test_the_glance_reads_the_relays_own_metrics(tmp_path: Path) -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.0015, 0.3, 1.5):
        metrics.ack_seconds.observe(seconds)
    metrics.over_budget.inc()
    metrics.outcome["accepted"].inc(3)
    metrics.outcome["overloaded"].inc()
    relay = Relay(RelayConfig(state_dir=tmp_path), None, None, None, metrics)  # type: ignore[arg-type]
    glance = glance_of(relay)
    assert glance.answers == 4
    assert glance.over_budget == 1
    assert glance.budget_ms == 1000
    assert glance.unavailable == 1
    assert glance.outcomes == (("accepted", 3), ("overloaded", 1))
    assert sum(b.count for b in glance.buckets) == 4
    assert sum(b.count for b in glance.buckets if b.over_budget) == 1
    assert glance.largest == 2


# -- tenants, from real parts ----------------------------------------------------------


class Recorder:
    """The hub's BridgeTransport seam: keeps what the hub sends."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    state = StateDir(tmp_path).create()
    registry = TenantRegistry(state.tenants)
    registry.add("bridged", "secret-one")
    registry.add("waiting", "secret-two")
    registry.close()
    metrics = Metrics()
    store = SQLiteStore(state.store)
    await store.open()
    tenants = SQLiteTenantDirectory(state.tenants)
    hub = Hub(store, metrics, window=4)
    yield Relay(RelayConfig(state_dir=tmp_path), tenants, store, hub, metrics)
    await store.close()
    tenants.close()


async def queue(relay: Relay, tenant: str, *tags: str, received_at: int = 1) -> None:
    for tag in tags:
        assert await relay.store.append(tenant, webhook_body(tag), "sig", received_at) is not None


async def test_tenant_rows_show_queues_and_the_connected_bridge(relay: Relay) -> None:
    transport = Recorder()
    bridge = BridgeConnection("bridged", transport, "192.0.2.7", protocol=1)
    relay.hub.attach(bridge)
    await queue(relay, "bridged", "a", "b", "c")
    await queue(relay, "waiting", "x", "y")
    await async_wait_for(lambda: _sent(transport, 3), "three webhooks sent to the bridge")
    first = next(f for f in transport.frames if f["type"] == "webhook")
    relay.hub.receive(bridge, json.dumps({"type": "ack", "id": first["id"]}))
    await async_wait_for(lambda: _depth(relay, "bridged", 2), "the ack stored")

    views = {
        v.id: v
        for v in tenant_views(
            relay, local_bridges(relay, "here", 4.0), AckRates(), relay.store.oldest(), 4.0
        )
    }
    assert set(views) == {"bridged", "waiting"}
    waiting = views["waiting"]
    assert (waiting.depth, waiting.bridge, waiting.removed) == (2, None, False)
    assert waiting.oldest_age == pytest.approx(3.999)
    bridged = views["bridged"]
    assert bridged.depth == 2
    assert bridged.bridge is not None
    b = bridged.bridge
    assert (b.protocol, b.peer, b.window, b.in_flight) == (1, "192.0.2.7", 4, 2)
    assert b.served_by == "here"
    assert (b.acks, b.redeliveries, b.standby) == (1, 0, 0)
    assert b.last_ack_age is not None
    assert b.acks_per_second is None  # one read so far


async def test_a_redelivery_after_a_nack_is_counted_on_the_connection(relay: Relay) -> None:
    relay.hub.backoff = 0.01
    transport = Recorder()
    bridge = BridgeConnection("bridged", transport, "192.0.2.7")
    relay.hub.attach(bridge)
    await queue(relay, "bridged", "a")
    await async_wait_for(lambda: _sent(transport, 1), "the webhook sent")
    first = next(f for f in transport.frames if f["type"] == "webhook")
    relay.hub.receive(bridge, json.dumps({"type": "nack", "id": first["id"], "reason": "busy"}))
    await async_wait_for(lambda: _sent(transport, 2), "the webhook sent again")
    views = _views(relay)
    bridged = next(v for v in views if v.id == "bridged")
    assert bridged.bridge is not None
    assert bridged.bridge.redeliveries == 1


async def test_a_second_connection_is_active_and_the_first_stands_by(relay: Relay) -> None:
    old = BridgeConnection("bridged", Recorder(), "192.0.2.1")
    new = BridgeConnection("bridged", Recorder(), "192.0.2.2", protocol=2)
    relay.hub.attach(old)
    relay.hub.attach(new)
    bridged = next(v for v in _views(relay) if v.id == "bridged")
    assert bridged.bridge is not None
    assert (bridged.bridge.peer, bridged.bridge.protocol, bridged.bridge.standby) == (
        "192.0.2.2",
        2,
        1,
    )
    relay.hub.detach(new)
    relay.hub.detach(old)
    bridged = next(v for v in _views(relay) if v.id == "bridged")
    assert bridged.bridge is None


async def test_a_removed_tenant_with_a_queue_is_still_shown(relay: Relay, tmp_path: Path) -> None:
    await queue(relay, "waiting", "x")
    registry = TenantRegistry(StateDir(tmp_path).tenants)
    registry.remove("waiting")
    registry.close()
    relay.tenants.refresh()
    views = {v.id: v for v in _views(relay)}
    assert views["waiting"].removed
    assert views["waiting"].depth == 1
    assert not views["bridged"].removed


async def test_the_snapshot_is_drawn_once_a_second_however_often_it_is_read(
    relay: Relay,
) -> None:
    clock = [100.0]
    overview = Overview(relay, clock=lambda: clock[0])
    first = await overview.snapshot()
    await queue(relay, "waiting", "x")
    clock[0] += SNAPSHOT_SECONDS / 2
    assert await overview.snapshot() is first
    clock[0] += SNAPSHOT_SECONDS / 2
    fresh = await overview.snapshot()
    assert fresh is not first
    assert next(t for t in fresh.tenants if t.id == "waiting").depth == 1


def _views(relay: Relay) -> tuple[TenantView, ...]:
    """The rows with this process's bridges, as the overview draws them."""
    return tenant_views(relay, local_bridges(relay, "here", 0.0), AckRates(), {}, 0.0)


async def _sent(transport: Recorder, count: int) -> bool:
    return sum(1 for f in transport.frames if f["type"] == "webhook") >= count


async def _depth(relay: Relay, tenant: str, depth: int) -> bool:
    return relay.store.depth(tenant) == depth


async def test_a_tenant_added_since_the_snapshot_is_found_at_once(
    relay: Relay, tmp_path: Path
) -> None:
    overview = Overview(relay, clock=lambda: 100.0)  # the clock stands still
    await overview.snapshot()
    registry = TenantRegistry(StateDir(tmp_path).tenants)
    registry.add("newcomer", "secret-three")
    registry.close()
    view = await overview.tenant("newcomer")
    assert view is not None
    assert view.depth == 0
    assert await overview.tenant("nobody") is None


async def test_recent_webhooks_are_read_once_a_second_however_often_asked(relay: Relay) -> None:
    clock = [100.0]
    overview = Overview(relay, clock=lambda: clock[0])
    await queue(relay, "waiting", "a")
    first = await overview.recent("waiting", None, 50)
    assert len(first) == 1
    await queue(relay, "waiting", "b")
    clock[0] += SNAPSHOT_SECONDS / 2
    assert await overview.recent("waiting", None, 50) is first
    clock[0] += SNAPSHOT_SECONDS / 2
    fresh = await overview.recent("waiting", None, 50)
    assert [r.received_at for r in fresh] == [1, 1]
    assert fresh[0].id != first[0].id  # newest first
