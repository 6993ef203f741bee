"""Redis killed and restarted under traffic: a 200 is never lost, the rest are 503
(PROTOCOL.md §6, issue 10 item 7).

A real ``redis-server`` with AOF and ``appendfsync always`` is killed with
SIGKILL while clients post to one relay node and a bridge on another acks;
it is started again on the same directory and port. Every webhook answered
200 must reach the bridge; every other answer must be a 503; no relay
process exits; the bridge's connection is kept through the outage;
``/readyz`` and ``linerelay_store_up`` say the store is gone while it is,
and the relay logs one warning for the outage, not one per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    Bridge,
    Harness,
    Tenant,
    async_client,
    async_wait_for,
    post,
    relay_nodes,
    tag_of,
    wait_for,
    webhook_body,
)
from tests.support.redis import RedisServer, add_redis_tenant, running_redis

pytestmark = pytest.mark.integration

CLIENTS = 4


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def nodes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, Harness]]:
    with relay_nodes(redis_server, tmp_path_factory, redis_lease_ttl=3) as pair:
        yield pair


def readyz(harness: Harness) -> httpx.Response:
    return httpx.get(f"{harness.relay.admin_url}/readyz", timeout=10)


def warnings(harness: Harness, event: str) -> list[dict[str, Any]]:
    return [r for r in harness.log_events(event) if r.get("level") == "warning"]


async def test_redis_killed_and_restarted_under_traffic_loses_no_200_and_answers_the_rest_503(
    nodes: tuple[Harness, Harness], redis_server: RedisServer
) -> None:
    a, b = nodes
    added = add_redis_tenant(redis_server.url)
    a.sensitive.update((added.secret, added.token))
    b.sensitive.update((added.secret, added.token))
    tenant = Tenant(added.id, added.secret, added.token, a.relay.webhook_url(added.id))
    accepted: dict[str, bytes] = {}
    statuses: dict[int, int] = {}
    stop = asyncio.Event()
    counter = iter(range(1_000_000))

    async def client_task() -> None:
        async with async_client(a) as client:
            while not stop.is_set():
                tag = f"w-{next(counter):06d}"
                body = webhook_body(tag)
                try:
                    response = await post(client, a, tenant, body)
                except httpx.TransportError:
                    statuses[-1] = statuses.get(-1, 0) + 1
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    accepted[tag] = body
                else:
                    assert response.headers.get("retry-after"), response.headers
                    await asyncio.sleep(0.02)

    received: dict[str, bytes] = {}
    bridge = await Bridge.open(b, tenant.token, protocol=2)

    async def bridge_task() -> None:
        while True:
            items = await bridge.batch(timeout=60)
            for item in items:
                received.setdefault(tag_of(item), item["body"].encode())
            await bridge.ack_ids(*(item["id"] for item in items))

    reading = asyncio.create_task(bridge_task())
    clients = [asyncio.create_task(client_task()) for _ in range(CLIENTS)]
    try:
        await async_wait_for(lambda: _true(len(accepted) >= 50), "traffic before the kill")
        redis_server.kill()
        await async_wait_for(lambda: _true(statuses.get(503, 0) >= 20), "503s while Redis is down")
        assert readyz(a).status_code == 503
        assert "store" in readyz(b).json()
        assert a.metric("linerelay_store_up") == 0
        before_restart = len(accepted)
        redis_server.restart()
        await async_wait_for(
            lambda: _true(len(accepted) >= before_restart + 50), "200s again after the restart"
        )
        stop.set()
        await asyncio.gather(*clients)
        await async_wait_for(
            lambda: _true(accepted.keys() <= received.keys()),
            lambda: f"{len(accepted.keys() - received.keys())} accepted webhooks to arrive",
        )
        # The bridge stayed connected through the outage: the one connection got them all.
        assert not reading.done()
        connected = [
            line for line in b.log_events("bridge connected") if line.get("tenant") == tenant.id
        ]
        assert len(connected) == 1, connected
    finally:
        stop.set()
        reading.cancel()
        await asyncio.gather(reading, *clients, return_exceptions=True)
        await bridge.close()
    assert set(statuses) <= {200, 503}, statuses
    assert all(received[tag] == body for tag, body in accepted.items())
    # Both nodes ready again, and each said once that Redis was gone, and why.
    wait_for(lambda: readyz(a).status_code == 200 and readyz(b).status_code == 200, "readyz")
    assert a.metric("linerelay_store_up") == 1
    for harness in (a, b):
        assert len(warnings(harness, "store: Redis unreachable")) == 1
        assert harness.log_events("store: Redis reachable again")
        assert harness.relay.proc is not None
        assert harness.relay.proc.poll() is None
    assert json.dumps(statuses)  # for the report when a check above fails


async def _true(value: bool) -> bool:
    return value
