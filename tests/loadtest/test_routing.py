"""Tenants, webhooks and bridges spread over several targets, per node or on a shared store."""

from __future__ import annotations

from collections import Counter

import pytest

from loadtest.config import ConfigError, Tenant
from loadtest.routing import Routing, bridge_url, normalise, place, webhook_url

A, B, C = "https://node-a:8443", "https://node-b:8443", "https://node-c:8443"


def tenants(*names: str) -> tuple[Tenant, ...]:
    return tuple(Tenant(name, f"secret-{name}", f"token-{name}") for name in names)


def test_per_node_tenants_take_the_targets_in_turn() -> None:
    placed = place(tenants("t1", "t2", "t3"), (A, B), shared=False)
    assert [t.target for t in placed] == [A, B, A]


def test_a_tenant_named_on_a_node_stays_there_and_the_others_take_turns() -> None:
    given = (Tenant("t1", "s", None, B + "/"), *tenants("t2"))
    assert [t.target for t in place(given, (A, B), shared=False)] == [B, B]


def test_a_tenant_on_a_node_that_is_not_a_target_is_refused() -> None:
    with pytest.raises(ConfigError, match="not one of the --target"):
        place((Tenant("t1", "s", None, C),), (A, B), shared=False)


def test_with_a_shared_store_tenants_belong_to_no_node() -> None:
    assert place(tenants("t1", "t2"), (A, B), shared=True) == tenants("t1", "t2")
    with pytest.raises(ConfigError, match="--shared-store"):
        place((Tenant("t1", "s", None, A),), (A, B), shared=True)


def test_per_node_webhooks_and_bridges_of_a_tenant_go_to_its_node() -> None:
    placed = place(tenants("t1", "t2"), (A, B), shared=False)
    routing = Routing((A, B), (A, B), shared=False)
    assert {routing.webhook_target(placed[1], n) for n in range(10)} == {1}
    assert {routing.bridge_target(1, placed[1], bridge) for bridge in range(5)} == {1}


def test_with_a_shared_store_each_user_sends_to_the_targets_in_turn() -> None:
    routing = Routing((A, B, C), (A, B, C), shared=True)
    sent = Counter(routing.webhook_target(tenants("t1")[0], n) for n in range(30))
    assert sent == {0: 10, 1: 10, 2: 10}


def test_with_a_shared_store_bridges_spread_by_tenant_and_by_bridge() -> None:
    routing = Routing((A,), (B, C), shared=True)
    t1, t2 = tenants("t1", "t2")
    assert routing.bridge_target(0, t1, 0) != routing.bridge_target(1, t2, 0)
    assert routing.bridge_target(0, t1, 0) != routing.bridge_target(0, t1, 1)
    # Webhooks go to the targets, bridges only to the bridge targets.
    assert routing.webhook_target(t1, 1) == 0


def test_urls_keep_a_path_prefix_and_lose_a_trailing_slash() -> None:
    assert normalise("https://h:1/relay/") == "https://h:1/relay"
    assert webhook_url("https://h:1/relay/", "t1") == "https://h:1/relay/webhook/t1"
    assert bridge_url("https://h:1/relay") == "wss://h:1/relay/bridge"
    assert bridge_url("http://h:1") == "ws://h:1/bridge"
